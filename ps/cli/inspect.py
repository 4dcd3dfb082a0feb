"""Commands that read a run or a model: staleness, report, top, plan, eval. None of them trains."""

import sys
from pathlib import Path

from ps.cli.common import use_token_auth
from ps.common.errors import UserError


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
                   help="also draw the histograms and tau over time as a heat map per shard or replica")
    p.set_defaults(handler=handle_staleness)


def handle_staleness(args) -> int:
    from ps.obs import staleness

    percentiles = staleness.parse_percentiles(args.percentiles)
    window = staleness.parse_window(args.window) if args.window else None
    path, records = _read_run(args.run_dir)
    shown, span = records, ""
    if window:
        shown = staleness.in_window(records, records[0]["t"], *window)
        span = f", between {_seconds(window[0], 0)} and {_seconds(window[1], 'the end')}"
    groups = staleness.taus_by(shown, args.by)
    if window and not groups:
        raise UserError(f"--window {args.window}: no accepted pushes in that span; "
                        "`downpour staleness RUN_DIR` shows the whole run")
    print(f"staleness (tau = shard version at apply - version fetched) in {path}{span}\n")
    print(staleness.format_report(groups, args.by, percentiles))
    if args.png:
        from ps.obs import plots

        print(f"\nwrote {plots.staleness_png(records, args.by, args.png, window=window)}")
    return 0


def _seconds(value, default) -> str:
    return default if value is None else f"{value:g} s"


def _read_run(run_dir: str) -> tuple:
    """(path, every record) of a run directory; a missing or foreign log is a user error."""
    from ps.common import rundir, schema
    from ps.obs import events

    path = rundir.require_run(run_dir)
    try:
        return path, list(events.read_events(path / schema.LOG_NAME, on_damage=lambda d: warn(str(d))))
    except events.LogError as exc:
        raise UserError(str(exc)) from None


def warn(line: str) -> None:
    """A note about damaged input the command still worked around: one line on stderr, exit 0."""
    print(f"downpour: warning: {line}", file=sys.stderr)


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write plots and a markdown summary of a run", allow_abbrev=False)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/report)")
    p.set_defaults(handler=handle_report)


def handle_report(args) -> int:
    from ps.common import rundir
    from ps.obs import report

    path = rundir.require_run(args.run_dir)
    print(f"wrote {report.write_report(path, Path(args.out) if args.out else None, warn=warn)}")
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
        from ps.cli import cluster_watch

        return cluster_watch.main(args.address, args.run, args.interval, args.frames)
    from ps.obs import top

    return top.main(args.run_dir, args.interval, args.frames, warn=warn)


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


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a run's model.pt on the test set, without Ray",
                       allow_abbrev=False,
                       description="Rebuilds the model from RUN_DIR/model.json, loads model.pt and "
                                   "scores it as the run's final evaluation did (the same test "
                                   "samples, the same function): it prints summary.json's "
                                   "test_accuracy and test_loss.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir", metavar="DIR",
                   help="Fashion-MNIST folder (default: the run's data_dir, then DOWNPOUR_DATA, ...)")
    p.set_defaults(handler=handle_eval)


def handle_eval(args) -> int:
    from ps.cli import evaluate

    path = Path(args.run_dir)
    accuracy, loss, n, data = evaluate.score_run(path, args.data_dir)
    print(f"test_accuracy {accuracy!r}\ntest_loss {loss!r}\n"
          f"on {n} test samples of {data}, model {path / 'model.pt'}")
    return 0
