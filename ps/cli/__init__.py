"""The `downpour` command: train, submit, status, logs, stop, staleness, report, top, plan. User errors print one line and exit with status 2."""

import argparse
import os
import sys
import typing
import warnings

from ps.common import config as cfg
from ps.common.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


def use_token_auth() -> None:
    """Clusters started by `ray start` (Ray 2.60) want token auth; Ray reads this when imported."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="run asynchronous Downpour SGD", allow_abbrev=False,
                       description="Train with N replicas and M parameter-server shards. Flags "
                                   "override the keys of --config FILE.yaml (same names).")
    add_config_flags(p)
    p.set_defaults(handler=handle_train)


def add_config_flags(p, skip: tuple = ()) -> None:
    """One flag per TrainConfig field (`--config FILE.yaml` too): shared by train and submit."""
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys mirror these flags")
    hints = typing.get_type_hints(cfg.TrainConfig)
    for name, f in cfg.FIELDS.items():
        if name in skip:
            continue
        flag, kind = "--" + name.replace("_", "-"), cfg.base_type(hints[name])
        help_ = f.metadata.get("help", "") + ("" if f.default is None else f" (default: {f.default})")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_,
                           metavar=name.upper())


def config_values(args) -> tuple[dict, str]:
    """The keys of --config FILE then the flags given (later wins), and where they came from."""
    values = cfg.load_yaml(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "flags"
    flags = {k: v for k, v in vars(args).items() if k in cfg.FIELDS}
    return {**{str(k).replace("-", "_"): v for k, v in values.items()}, **flags}, source


def handle_train(args) -> int:
    values, source = config_values(args)
    config = cfg.from_mapping(values, source)
    if config.address:
        use_token_auth()
    from ps.driver.train import (
        train,  # imports torch and ray: after the checks, and keeps --help fast
    )

    _, summary = train(config)
    return {"completed": 0, "stopped": 0, "interrupted": EXIT_INTERRUPTED}.get(summary["status"],
                                                                              EXIT_RUN_FAILED)


def add_submit_parser(sub) -> None:
    p = sub.add_parser("submit", help="submit a training job to a Ray cluster (Job Submission API)",
                       allow_abbrev=False,
                       description="Takes every `downpour train` flag; the job runs `downpour train "
                                   "--address auto` on the cluster's head node.")
    p.add_argument("--address", required=True, metavar="http://HEAD:8265",
                   help="the head node's dashboard address")
    p.add_argument("--working-dir", metavar="DIR",
                   help="a folder of your own plug-ins (models, rules) to ship with the job")
    add_config_flags(p, skip=("address",))
    p.set_defaults(handler=handle_submit)


def handle_submit(args) -> int:
    values, source = config_values(args)
    values.pop("address", None)  # the job joins the cluster it runs in
    config = cfg.from_mapping(values, source)  # every check runs here, before anything is sent
    use_token_auth()
    from ps.cli import submission as jobs

    train_flags = {k: v for k, v in values.items() if k != "run_dir"}
    jobs.submit(args.address, train_flags, config, args.working_dir, sys.stdout)
    return 0


def add_job_parsers(sub) -> None:
    for name, help_ in (("status", "state of a submitted job"), ("logs", "output of a submitted job"),
                        ("stop", "stop a running job: it evaluates, saves and ends `stopped`")):
        p = sub.add_parser(name, help=help_, allow_abbrev=False)
        p.add_argument("job_id", metavar="JOB_ID", help="as `downpour submit` printed it" + (
            "; or, with a Ray address, a run directory or run name" if name == "stop" else ""))
        p.add_argument("--address", required=True, metavar="http://HEAD:8265",
                       help="the head node's dashboard address" + (
                           " (or a Ray address: auto | HOST:PORT | ray://...)" if name == "stop" else ""))
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        p.set_defaults(handler=handle_job_command, command=name)


def add_scale_parser(sub) -> None:
    p = sub.add_parser("scale", help="change the number of replicas of a running job",
                       allow_abbrev=False)
    p.add_argument("target", metavar="JOB_OR_RUN",
                   help="a job id from `downpour submit`, a run directory or a run's name")
    p.add_argument("--replicas", type=int, required=True, help="the new number of replicas (1 or more)")
    p.add_argument("--address", required=True, metavar="ADDRESS",
                   help="http://HEAD:8265 (the dashboard), or a Ray address: auto | HOST:PORT | ray://...")
    p.set_defaults(handler=handle_scale)


def handle_scale(args) -> int:
    use_token_auth()
    from ps.cli import submission as jobs

    jobs.scale(args.address, args.target, args.replicas, sys.stdout)
    return 0


def handle_job_command(args) -> int:
    use_token_auth()
    from ps.cli import submission as jobs

    if args.command == "status":
        jobs.status(args.address, args.job_id, sys.stdout)
    elif args.command == "logs":
        jobs.logs(args.address, args.job_id, args.follow, sys.stdout)
    else:
        jobs.stop(args.address, args.job_id, sys.stdout)
    return 0


def add_staleness_parser(sub) -> None:
    p = sub.add_parser("staleness", help="histograms of gradient staleness from a run directory",
                       allow_abbrev=False)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--by", choices=("shard", "replica"), default="shard",
                   help="group pushes by shard or by replica (default: shard)")
    p.add_argument("--window", metavar="START:END",
                   help="only pushes in this span, seconds since the run started (e.g. 60:120, 60:)")
    p.add_argument("--percentiles", default="50,90,99", metavar="P,P,...",
                   help="nearest-rank percentiles to print (default: 50,90,99)")
    p.add_argument("--png", metavar="FILE.png",
                   help="also draw the histograms and tau over time as a heat map (needs matplotlib)")
    p.set_defaults(handler=handle_staleness)


def handle_staleness(args) -> int:
    from ps.obs import staleness

    percentiles = staleness.parse_percentiles(args.percentiles)
    window = staleness.parse_window(args.window) if args.window else None
    path, records = _read_run(args.run_dir)
    span = ""
    if window:
        records = staleness.in_window(records, records[0]["t"], *window)
        span = f", between {_seconds(window[0], 0)} and {_seconds(window[1], 'the end')}"
    groups = staleness.taus_by(records, args.by)
    if window and not groups:
        raise UserError(f"--window {args.window}: no accepted pushes in that span; "
                        "`downpour staleness RUN_DIR` shows the whole run")
    print(f"staleness (tau = shard version at apply - version fetched) in {path}{span}\n")
    print(staleness.format_report(groups, args.by, percentiles))
    if args.png:
        from ps.obs import plots

        print(f"\nwrote {plots.staleness_png(records, args.by, args.png)}")
    return 0


def _seconds(value, default) -> str:
    return default if value is None else f"{value:g} s"


def _read_run(run_dir: str) -> tuple:
    """(path, every record) of a run directory; a missing or foreign log is a user error."""
    from ps.common import rundir, schema
    from ps.obs import events

    path = rundir.require_run(run_dir)
    try:
        return path, list(events.read_events(path / schema.LOG_NAME))
    except events.LogError as exc:
        raise UserError(str(exc)) from None


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write plots and a markdown summary of a run", allow_abbrev=False)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/report)")
    p.set_defaults(handler=handle_report)


def handle_report(args) -> int:
    from pathlib import Path

    from ps.common import rundir
    from ps.obs import report

    path = rundir.require_run(args.run_dir)
    print(f"wrote {report.write_report(path, Path(args.out) if args.out else None)}")
    return 0


def add_top_parser(sub) -> None:
    p = sub.add_parser("top", help="live view of a running job (Ctrl-C quits)", allow_abbrev=False,
                       description="Without arguments: the newest run under runs/. With RUN_DIR: "
                                   "that run, from its event log. With --address: a job on that "
                                   "cluster, through its named controller.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    p.add_argument("--address", help="Ray cluster of the job (auto | HOST:PORT | ray://HOST:PORT)")
    p.add_argument("--run", help="which job, when several run on the cluster (its run directory's name)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default: 1)")
    p.add_argument("--frames", type=int, help="stop after this many frames (default: until the run ends)")
    p.set_defaults(handler=handle_top)


def handle_top(args) -> int:
    if args.run_dir and args.address:
        raise UserError("give RUN_DIR or --address, not both")
    if args.run and not args.address:
        raise UserError("--run picks a job on a cluster: give --address too")
    if not args.interval > 0:
        raise UserError(f"--interval {args.interval}: give a number of seconds above 0")
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: give 1 or more")
    if args.address:
        use_token_auth()
    from ps.obs import top

    return top.main(args.run_dir, args.address, args.run, args.interval, args.frames)


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="show how a model's parameters are split over shards",
                       allow_abbrev=False)
    p.add_argument("--model", default="cnn", help="mlp | cnn | package.module:factory (default: cnn)")
    p.add_argument("--shards", type=int, default=2, help="number of shards (default: 2)")
    p.add_argument("--sharding", default="balanced", help="balanced | range (default: balanced)")
    p.set_defaults(handler=handle_plan)


def handle_plan(args) -> int:
    from replicas.models import build_model, named_shapes
    from sharding import format_plan, make_plan

    plan = make_plan(named_shapes(build_model(args.model, seed=0)), args.shards, args.sharding)
    print(format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downpour", description="Asynchronous Downpour SGD on Ray.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train_parser, add_submit_parser, add_job_parsers, add_scale_parser, add_staleness_parser,
                add_report_parser, add_top_parser, add_plan_parser):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # plug-ins in the current directory, as `python -m` finds them
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("downpour: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"downpour: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(exc: Exception) -> bool:
    """UserError and the typed input errors of the data and sharding layers (no Ray/torch import)."""
    from replicas.data import DataError
    from sharding import PlanError

    return isinstance(exc, (UserError, DataError, PlanError))


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
