"""Per-role Ray resources (`--replica-resources CPU=1,GPU=1,replica=1`) and whether a cluster's
nodes can hold them: pure functions, so a request no node can meet fails before any actor starts.
"""

import math
import re

from ps.common.errors import UserError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")


def parse_resources(text: str, field: str) -> dict[str, float]:
    """'CPU=1,GPU=0.5,ps=1' -> {'CPU': 1.0, 'GPU': 0.5, 'ps': 1.0}."""
    flag = "--" + field.replace("_", "-")
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            amount = float(value) if sep else math.nan
        except ValueError:
            amount = math.nan
        if not _NAME.match(name.strip()) or not (math.isfinite(amount) and amount >= 0):
            raise UserError(f"{field} {text!r}: give {flag} as NAME=AMOUNT pairs separated by commas, "
                            "amounts 0 or more, e.g. CPU=1,GPU=1,replica=1")
        out[name.strip()] = amount
    if not out:
        raise UserError(f"{field} is empty: give {flag} as NAME=AMOUNT pairs, e.g. CPU=1,ps=1")
    return out


def per_node_capacity(request: dict[str, float], node: dict[str, float]) -> int:
    """How many actors asking for `request` one node with `node` resources can hold."""
    asked = {k: v for k, v in request.items() if v > 0}
    if not asked:
        return 10**9  # asks for nothing: any node holds any number
    return min(int(node.get(k, 0.0) / v + 1e-9) for k, v in asked.items())


def check_fits(role: str, count: int, request: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Raises a UserError saying what was asked and what the nodes have when `count` actors of this
    role cannot all be placed (each role checked on its own: a first, fast check; Ray's scheduler
    and the start-up timeout catch what two roles competing for one node cannot get)."""
    room = sum(per_node_capacity(request, node) for node in nodes)
    if room >= count:
        return
    have = "; ".join(_describe(node) for node in nodes) or "no live nodes"
    raise UserError(f"{count} {role}s each asking for {_describe(request)} do not fit: the cluster's "
                    f"nodes have room for {room} ({have}); ask for less per {role}, use fewer "
                    f"{role}s, or add nodes with those resources")


def _describe(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())
             if v and not k.startswith("node:") and k not in ("memory", "object_store_memory")}
    return "{" + ", ".join(f"{k}={v:g}" for k, v in shown.items()) + "}"
