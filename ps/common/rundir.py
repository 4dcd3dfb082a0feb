"""The run directory: one folder per run holding config.yaml, summary.json, the event log and model.pt."""

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

from ps.common.errors import UserError
from ps.common.schema import LOG_NAME

CONFIG_NAME, SUMMARY_NAME, MODEL_NAME = "config.yaml", "summary.json", "model.pt"
LOCK_NAME = ".driver.lock"  # the pid of the driver writing the folder, while it runs
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # a colon breaks scp and PATH-like lists; a slash nests


def safe_label(label: str) -> str:
    """A run folder's label with every run of characters outside [A-Za-z0-9._+-] turned into one "_":
    `--model my_models.nets:wide` names runs `...-my_models.nets_wide-r4s2`."""
    return _UNSAFE.sub("_", label).strip("_.") or "run"


def create(run_dir: Optional[str], label: str, root: str = "runs") -> Path:
    """Makes the folder; refuses one that already holds a run, so no result is ever overwritten."""
    if run_dir is None:
        base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_label(label)}"
        path, n = base, 1
        while path.exists():
            path, n = Path(f"{base}-{n}"), n + 1
    else:
        path = Path(run_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise UserError(f"run_dir {path} is a file: give --run-dir a folder path")
        if any((path / name).exists() for name in (SUMMARY_NAME, LOG_NAME, MODEL_NAME)):
            raise UserError(f"run_dir {path} already holds a run: choose another --run-dir or remove it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"run_dir {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"run_dir {path} is not writable: choose another --run-dir")
    return path


def remove_if_empty(path: Path) -> None:
    """Undoes `create` when the job stops before writing anything (but its lock)."""
    if path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir()):
        (path / LOCK_NAME).unlink(missing_ok=True)
        path.rmdir()


@contextmanager
def driver_lock(path: Path):
    """Held while a driver writes the run directory: a second driver (a `--resume` of a run that
    is still going) is refused instead of interleaving its log and checkpoints with the first's.
    A lock left by a driver that died (its pid is gone) is taken over."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = _pid_in(lock)
        if pid is not None and pid_alive(pid):
            raise UserError(f"run_dir {path} is being written by a running downpour (pid {pid}): "
                            "wait for it to end, or stop it with `downpour stop`") from None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_in(lock: Path) -> Optional[int]:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_config(path: Path, config: dict) -> None:
    (path / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))


def write_summary(path: Path, summary: dict) -> None:
    """Written to a temporary name and renamed, so a reader never sees half a summary."""
    tmp = path / (SUMMARY_NAME + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path / SUMMARY_NAME)


def read_summary(path: Path, hint: str = "its event log still works with `downpour report`") -> dict:
    """RUN/summary.json; a damaged or unreadable one is a UserError naming the file, then `hint`."""
    file = Path(path) / SUMMARY_NAME
    damaged = f"the run's summary is damaged; {hint}"
    try:
        summary = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON (line {exc.lineno}): {damaged}") from None
    except UnicodeDecodeError:
        raise UserError(f"{file} is not valid JSON (not UTF-8 text): {damaged}") from None
    except OSError as exc:
        raise UserError(f"cannot read {file} ({exc.strerror}): check that it is a readable file") from None
    if not isinstance(summary, dict):
        raise UserError(f"{file} is not a JSON object: {damaged}")
    return summary


def require_run(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p} is a file, not a run directory: give the folder `downpour train` printed")
    if not p.is_dir():
        raise UserError(f"run directory {p} does not exist: give the folder `downpour train` printed")
    if (p / LOG_NAME).exists() and not (p / LOG_NAME).is_file():
        raise UserError(f"{p / LOG_NAME} is not a file: the event log is damaged or was replaced")
    if not (p / LOG_NAME).is_file():
        raise UserError(f"{p} holds no event log ({LOG_NAME}): is it a downpour run directory?")
    return p
