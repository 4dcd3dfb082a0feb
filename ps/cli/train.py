"""`downpour train` and `downpour submit`: one flag per TrainConfig field, checked before Ray starts."""

import argparse
import sys
import typing

from ps.cli.common import EXIT_INTERRUPTED, EXIT_RUN_FAILED, use_token_auth
from ps.common import config as cfg


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="run asynchronous Downpour SGD", allow_abbrev=False,
                       description="Train with N replicas and M parameter-server shards. Flags "
                                   "override the keys of --config FILE.yaml (same names).")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue this stopped, interrupted or failed run from its newest good "
                        "checkpoint; flags given change what may change (replicas, shards, epochs, "
                        "resources...)")
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
        help_ = help_.replace("%", "%%")  # argparse formats help with %: a literal one must be doubled
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
    # each key checked as written (a did-you-mean names it so), then merged under its field's name
    return {**{cfg.check_key(k, source): v for k, v in values.items()}, **flags}, source


def handle_train(args) -> int:
    values, source = config_values(args)
    if args.resume:
        return _handle_resume(args.resume, values, source)
    config = cfg.from_mapping(values, source)
    if config.address:
        use_token_auth()
    # imports torch and ray: after the checks, and keeps --help fast
    from ps.driver.train import train

    _, summary = train(config)
    return exit_status(summary)


def _handle_resume(run_dir: str, values: dict, source: str) -> int:
    """Only the flags given override the run's saved configuration; they are checked there."""
    if values.get("address"):
        use_token_auth()
    from ps.driver.train import resume

    _, summary = resume(run_dir, {k.replace("-", "_"): v for k, v in values.items()}, source)
    return exit_status(summary)


def exit_status(summary: dict) -> int:
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
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue this run (a folder on the head node, as submit printed it) "
                        "from its newest good checkpoint; flags given change what may change")
    add_config_flags(p, skip=("address",))
    p.set_defaults(handler=handle_submit)


def handle_submit(args) -> int:
    values, source = config_values(args)
    values.pop("address", None)  # the job joins the cluster it runs in
    # every check runs here, before anything is sent; a resume's flags are checked on the head
    # node against the run's own configuration (here each is only parsed)
    config = cfg.from_mapping({} if args.resume else values, source)
    if args.resume:
        cfg.parse_values(values, source)
    use_token_auth()
    from ps.cli import submission

    train_flags = {k: v for k, v in values.items() if k != "run_dir"}
    submission.submit(args.address, train_flags, config, args.working_dir, sys.stdout, args.resume)
    return 0
