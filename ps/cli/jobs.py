"""`downpour status`, `logs`, `scale` and `stop`: commands on a submitted or running job (ps.cli.submission)."""

import sys

from ps.cli.common import use_token_auth


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
    from ps.cli import submission

    submission.scale(args.address, args.target, args.replicas, sys.stdout)
    return 0


def handle_job_command(args) -> int:
    use_token_auth()
    from ps.cli import submission

    if args.command == "status":
        submission.status(args.address, args.job_id, sys.stdout)
    elif args.command == "logs":
        submission.logs(args.address, args.job_id, args.follow, sys.stdout)
    else:
        submission.stop(args.address, args.job_id, sys.stdout)
    return 0
