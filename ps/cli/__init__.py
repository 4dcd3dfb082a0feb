"""The `downpour` command: `main`, the parser and how errors end a command.

One module per command family: train.py (train, submit), jobs.py (status, logs, scale, stop),
inspect.py (staleness, report, top, plan, eval), simulate.py (simulate). User errors print one line and exit with status 2.
"""

import argparse
import difflib
import os
import re
import sys
import warnings

from ps.cli import inspect, jobs, simulate, train
from ps.cli.common import EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_USER_ERROR  # noqa: F401 (public)

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cmd | head` gets from a C tool when head leaves early

PARSERS = (train.add_train_parser, train.add_submit_parser, jobs.add_job_parsers, jobs.add_scale_parser,
           inspect.add_staleness_parser, inspect.add_report_parser, inspect.add_top_parser,
           inspect.add_plan_parser, inspect.add_eval_parser, simulate.add_simulate_parser)


class OneLineParser(argparse.ArgumentParser):
    """argparse with our way of failing: one line, a did-you-mean for a mistyped flag or command,
    exit 2 (instead of the whole usage text)."""

    def parse_args(self, args=None, namespace=None):
        self.argv = sys.argv[1:] if args is None else list(args)
        return super().parse_args(args, namespace)

    def error(self, message: str):
        command = self._command()
        where = command or self
        hint = _did_you_mean(message, _flags(where), list(self._commands()))
        name = f"{self.prog} {command.prog.split()[-1]}" if command else self.prog
        message = " ".join(message.split())  # one line, whatever the arguments held
        print(f"downpour: error: {message}{hint}; see `{name} --help`", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)

    def _commands(self) -> dict:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    def _command(self) -> "argparse.ArgumentParser | None":
        """The subcommand's parser, when the top-level parser reports what it left unparsed."""
        words = [w for w in getattr(self, "argv", []) if not w.startswith("-")]
        return self._commands().get(words[0]) if words else None


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def _did_you_mean(message: str, flags: list[str], commands: list[str]) -> str:
    choice = re.search(r"invalid choice: '([^']*)'", message)
    if choice:
        close = difflib.get_close_matches(choice.group(1), commands, n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""
    for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", message.partition(":")[2]):
        close = difflib.get_close_matches(flag.partition("=")[0], flags, n=1, cutoff=0.6)
        if close and close[0] != flag:
            return f" (did you mean {close[0]}?)"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="downpour", description="Asynchronous Downpour SGD on Ray.",
                           allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=OneLineParser)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # plug-ins in the current directory, as `python -m` finds them
    try:
        status = args.handler(args)
        sys.stdout.flush()  # here, so a reader that left (`| head`) is met below, not at exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("downpour: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"downpour: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's last flush of what is left cannot fail too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a file descriptor (a test)
        pass


def _is_user_error(exc: Exception) -> bool:
    """UserError and the typed input errors of the data and sharding layers (no Ray/torch import)."""
    from ps.common.errors import UserError
    from replicas.data import DataError
    from sharding import PlanError

    return isinstance(exc, (UserError, DataError, PlanError))


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
