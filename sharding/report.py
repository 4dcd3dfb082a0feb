"""Render a ShardPlan as the text table printed by `downpour plan`."""

from sharding.plan import ShardPlan, TensorSpec

_WIDTH = 100  # wrap the tensor list so a model with many tensors stays readable in a terminal


def format_plan(plan: ShardPlan, itemsize: int = 4) -> str:
    """One row per shard (index, elements, bytes, tensors held) and a closing imbalance line."""
    sizes = [plan.shard_numel(i) * itemsize for i in range(plan.num_shards)]
    noun = "shard" if plan.num_shards == 1 else "shards"
    lines = [f"sharding {plan.strategy}: {plan.num_shards} {noun}, {plan.total:,} elements, "
             f"{human_bytes(plan.total * itemsize)} ({itemsize} bytes each)",
             f"{'shard':>5}  {'elements':>12}  {'bytes':>10}  tensors"]
    indent = " " * (5 + 2 + 12 + 2 + 10 + 2)
    by_name = {t.name: t for t in plan.tensors}
    for i, size in enumerate(sizes):
        held = [_describe(by_name[name], lo, hi) for name, lo, hi in plan.shard_tensors(i)]
        rows = _wrap(held, _WIDTH - len(indent))
        lines.append(f"{i:>5}  {plan.shard_numel(i):>12,}  {human_bytes(size):>10}  {rows[0]}")
        lines.extend(indent + r for r in rows[1:])
    lines.append(f"imbalance max/mean {imbalance(sizes):.3f}")
    return "\n".join(lines)


def imbalance(sizes: list[int]) -> float:
    """max/mean of the shard sizes: 1.0 is perfect, 2.0 means the busiest shard does twice its share."""
    mean = sum(sizes) / len(sizes)
    return max(sizes) / mean


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; binary units because parameter buffers are allocated in those."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _describe(t: TensorSpec, lo: int, hi: int) -> str:
    """The tensor's name, plus the rows (or elements) held when the shard has only part of it."""
    if lo == 0 and hi == t.numel:
        return t.name
    row = t.numel // t.shape[0] if t.shape and t.shape[0] else 1
    if len(t.shape) >= 2 and lo % row == 0 and hi % row == 0:
        return f"{t.name}[rows {lo // row}:{hi // row} of {t.shape[0]}]"
    return f"{t.name}[elements {lo}:{hi} of {t.numel}]"


def _wrap(items: list[str], width: int) -> list[str]:
    """Join items with ', ' into lines no wider than width (an over-long single item gets its own line)."""
    lines = [""]
    for item in items:
        sep = ", " if lines[-1] else ""
        if lines[-1] and len(lines[-1]) + len(sep) + len(item) > width:
            lines[-1] += ","
            lines.append(item)
        else:
            lines[-1] += sep + item
    return lines
