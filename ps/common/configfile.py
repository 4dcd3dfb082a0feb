"""Reading a YAML config file safely: a regular file of bounded size, UTF-8, one mapping, no
construct that takes the reader down (deep nesting, values YAML cannot build)."""

import os
import stat
from typing import Any

import yaml

from ps.common.errors import UserError

MAX_CONFIG_BYTES = 1 << 20   # a config file is a few hundred bytes


def load_yaml(path: str) -> dict:
    """The mapping in a YAML file of at most MAX_CONFIG_BYTES; anything else is a UserError."""
    text = _read_config(path)
    nested = UserError(f"config file {path} is nested too deeply to read: a config is one mapping "
                       "of keys to plain values")
    try:  # libyaml's loader when there is one: fast, and it stops at 1000 levels of nesting
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse it"
        if "nesting depth" in problem:
            raise nested from None
        raise UserError(f"config file {path}{where} is not valid YAML: {one_line(problem)}") from None
    except RecursionError:  # the pure-Python loader, or a constructor deep in its own stack
        raise nested from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2024-13-45, an int too long
        raise UserError(f"config file {path} has a value YAML cannot build: {one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _read_config(path: str) -> str:
    """The file's text: a regular file (not /dev/zero, a pipe or a folder), bounded, UTF-8."""
    try:  # O_NONBLOCK: opening a named pipe must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UserError(f"config file {path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"config file {path} is not a regular file: give --config a YAML file")
    with os.fdopen(fd, "rb") as fh:
        try:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise UserError(f"config file {path}: cannot read it ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is larger than 1 MB: is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"config file {path} is not UTF-8 text (line {line}, byte {exc.start}): "
                        "save it as UTF-8") from None


def one_line(message: Any) -> str:
    return " ".join(str(message).split())
