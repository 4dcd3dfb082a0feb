"""Faults and what followed them in an event log (docs/event-log.md, "Faults and checkpoints"):
a running tally for the live view, and each fault paired with its restart or restore for the report.
"""

from typing import Iterable, Optional

FENCED = "fenced"  # a shard's reason for a push computed on an older incarnation of it (tau -1)
KINDS = ("fault", "restart", "restore", "checkpoint", "resume")
DETAIL_CHARS = 100  # Ray's error line, shortened for a table cell


def is_fenced(record: dict) -> bool:
    return (record.get("kind") == "push" and not record.get("accepted")
            and str(record.get("reason") or "").startswith(FENCED))


class FaultTally:
    """Counts fault-tolerance records as they come; `snapshot()` is the live view's "faults" key."""

    def __init__(self):
        self.counts = dict.fromkeys(("count", "restarts", "restores", "lost_updates", "fenced",
                                     "checkpoints", "resumes"), 0)
        self.last_checkpoint: Optional[dict] = None

    def ingest(self, r: dict) -> None:
        kind = r.get("kind")
        if kind == "push":
            self.counts["fenced"] += is_fenced(r)
        elif kind == "fault":
            self.counts["count"] += 1
        elif kind in ("restart", "restore", "resume", "checkpoint"):
            self.counts[kind + "s"] += 1
        if kind == "restore":
            self.counts["lost_updates"] += r.get("lost_updates") or 0
        elif kind == "checkpoint":
            self.last_checkpoint = {"seq": r["seq"], "versions": list(r["versions"])}

    def snapshot(self) -> Optional[dict]:
        """None while nothing happened, so a run without faults publishes what it always did."""
        if not any(self.counts.values()):
            return None
        return {**self.counts, "last_checkpoint": self.last_checkpoint}


def format_line(faults: Optional[dict]) -> Optional[str]:
    """'faults: 2 replica restarts, 1 shard restore (37 updates lost), 5 fenced pushes ·
    checkpoints: 4 (last #3 at v[120, 118])'; None when there is nothing to say."""
    if not faults:
        return None
    pending = faults["count"] - faults["restarts"] - faults["restores"]
    lost = f" ({faults['lost_updates']} updates lost)" if faults["restores"] else ""
    said = [plural(faults["restarts"], "replica restart"),
            plural(faults["restores"], "shard restore") + lost,
            plural(pending, "fault") + " not recovered" if pending > 0 else "",
            plural(faults["fenced"], "fenced push", "fenced pushes")]
    parts = ["faults: " + ", ".join(s for s in said if s)] if any(said) else []
    last = faults.get("last_checkpoint")
    if faults["checkpoints"]:
        at = f" (last #{last['seq']} at {versions_text(last['versions'])})" if last else ""
        parts.append(f"checkpoints: {faults['checkpoints']}{at}")
    if faults["resumes"]:
        parts.append(f"resumed: {faults['resumes']}x")
    return " · ".join(parts) or None


def plural(n: int, one: str, many: Optional[str] = None) -> str:
    """'' for zero: the line names only what happened."""
    return "" if not n else f"{n} {one if n == 1 else many or one + 's'}"


def versions_text(versions: list[int], shown: int = 4) -> str:
    """'v[120, 118]'; a long vector keeps its first entries and says how many shards there are."""
    if len(versions) <= shown:
        return f"v{list(versions)}"
    return f"v[{', '.join(map(str, versions[:shown]))}, … {len(versions)} shards]"


# --- the report's table -------------------------------------------------------------------------

def paired(records: Iterable[dict]) -> list[tuple[Optional[dict], Optional[dict]]]:
    """(fault, what followed) in log order: a replica's fault is answered by the first later restart
    of that replica, a shard's by the first later restore of that shard. A restart or restore no
    fault record announced still gets a pair (None, it); a fault nothing answered, (fault, None)."""
    pairs: list[list] = []
    for r in records:
        kind = r.get("kind")
        if kind == "fault":
            pairs.append([r, None])
        elif kind in ("restart", "restore"):
            open_fault = next((p for p in pairs if p[1] is None and p[0] is not None
                               and (p[0]["role"], p[0]["id"]) == answered(r)), None)
            if open_fault:
                open_fault[1] = r
            else:
                pairs.append([None, r])
    return [(fault, after) for fault, after in pairs]


def answered(after: dict) -> tuple[str, int]:
    """The (role, id) a restart or restore answers."""
    return ("replica", after["replica"]) if after["kind"] == "restart" else ("shard", after["shard"])


def followed_text(after: Optional[dict]) -> str:
    if after is None:
        return "no restart or restore recorded"
    if after["kind"] == "restart":
        return (f"restarted as replica {after['new']}: {after['steps_done']} steps done, "
                f"{after['steps_owed']} owed")
    source = "the initial parameters" if after["seq"] is None else f"checkpoint #{after['seq']}"
    return (f"restored as incarnation {after['incarnation']} from {source} at version "
            f"{after['version']}: {after['lost_updates']} updates lost")


def fault_rows(records: list[dict], start: float) -> list[list]:
    """Report rows: time since start, actor, cause, Ray's error line, what followed."""
    rows = []
    for fault, after in paired(records):
        if fault is None:
            rows.append([f"{after['t'] - start:.1f}", "{} {}".format(*answered(after)), "no fault record", "",
                         followed_text(after)])
            continue
        detail = str(fault.get("detail") or "")
        detail = detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS - 1] + "…"
        rows.append([f"{fault['t'] - start:.1f}", f"{fault['role']} {fault['id']}", fault["cause"],
                     detail, followed_text(after)])
    return rows
