"""The `downpour` command: train, staleness, plan. User errors print one line and exit with status 2."""

import argparse
import os
import sys
import typing
import warnings

from ps import config as cfg
from ps.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="run asynchronous Downpour SGD", allow_abbrev=False,
                       description="Train with N replicas and M parameter-server shards. Flags "
                                   "override the keys of --config FILE.yaml (same names).")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys mirror these flags")
    hints = typing.get_type_hints(cfg.TrainConfig)
    for name, f in cfg.FIELDS.items():
        flag, kind = "--" + name.replace("_", "-"), cfg._base_type(hints[name])
        help_ = f.metadata.get("help", "") + ("" if f.default is None else f" (default: {f.default})")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_,
                           metavar=name.upper())
    p.set_defaults(handler=handle_train)


def handle_train(args) -> int:
    values = cfg.load_yaml(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "flags"
    flags = {k: v for k, v in vars(args).items() if k in cfg.FIELDS}
    config = cfg.from_mapping({**values, **flags}, source)  # later keys win: flags over the file
    if config.address:
        # Clusters started by `ray start` (Ray 2.60) want token auth; Ray reads this on import.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ps.job import train  # imports torch and ray: after the checks, and keeps --help fast

    _, summary = train(config)
    return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(summary["status"], EXIT_RUN_FAILED)


def add_staleness_parser(sub) -> None:
    p = sub.add_parser("staleness", help="histograms of gradient staleness from a run directory",
                       allow_abbrev=False)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--by", choices=("shard", "replica"), default="shard",
                   help="group pushes by shard or by replica (default: shard)")
    p.set_defaults(handler=handle_staleness)


def handle_staleness(args) -> int:
    from ps import events, rundir, staleness

    path = rundir.require_run(args.run_dir)
    try:
        records = list(events.read_events(path / events.LOG_NAME))
    except events.LogError as exc:
        raise UserError(str(exc)) from None
    groups = staleness.taus_by(records, args.by)
    print(f"staleness (tau = shard version at apply - version fetched) in {path}\n")
    print(staleness.format_report(groups, args.by))
    return 0


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
    for add in (add_train_parser, add_staleness_parser, add_plan_parser):
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
