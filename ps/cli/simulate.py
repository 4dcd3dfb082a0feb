"""`downpour simulate`: a training job's learners on simulated time, in one process (no Ray)."""

from ps.cli.train import add_config_flags, config_values, exit_status
from ps.common import config as cfg

ORDER_HELP = ("how pushes that fall at the same simulated time are ordered: delay (by learner id) "
              "or shuffled (seeded random; with a constant delay every round of N pushes is a "
              "fresh permutation)")
DELAY_HELP = ("learners' step times in simulated seconds: constant[:mean=S], uniform:mean=S,jitter=J, "
              "exp:mean=S, lognormal:mean=S,sigma=G, straggler:mean=S,p=P,factor=F, or "
              "replay:RUN_DIR (each replica's step times in that run's event log)")


def add_simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="run a job's learners deterministically on simulated time",
                       allow_abbrev=False,
                       description="N logical learners in one process against real parameter "
                                   "shards, with a seeded push order or delay distribution; "
                                   "writes a run directory that `downpour staleness` and "
                                   "`report` read. Takes every `downpour train` flag that "
                                   "applies (--replicas is the number of learners).")
    p.add_argument("--delay", default="constant", help=DELAY_HELP + " (default: constant)")
    p.add_argument("--order", default="delay", choices=("delay", "shuffled"), help=ORDER_HELP)
    p.add_argument("--warmstart", type=float, default=0.0, metavar="EPOCHS",
                   help="learner 0 trains alone for this many epochs before the others start "
                        "(Dean et al.'s warmstart, on top of its steps; default 0)")
    add_config_flags(p, skip=("address", "transport", "pipeline", "max_inflight", "prefetch",
                              "metrics", "metrics_port", "device", "inject_faults", "inject_delay",
                              "tensorboard"))
    p.set_defaults(handler=handle_simulate)


def handle_simulate(args) -> int:
    values, source = config_values(args)
    config = cfg.from_mapping(values, source)
    # imports torch: after the flag checks
    from ps.sim.run import SimSettings, check_settings, simulate

    settings = SimSettings(delay=args.delay, order=args.order, threads=config.threads or 1,
                           warmstart=args.warmstart)
    check_settings(settings)
    _, summary = simulate(config, settings)
    return exit_status(summary)
