"""PNG figures from a run's event log: staleness, evaluations, fetch spread, throughput, shards.

Every function takes the log's records (as `ps.obs.events.read_events` yields them), writes one PNG
of FIGSIZE at DPI and returns its path. matplotlib is imported only when a figure is drawn, so
`import ps.obs.plots` works without it; `require_matplotlib` turns its absence into a UserError.
A panel without data shows a sentence saying so, never an empty frame.
"""

from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ps.common.errors import UserError

FIGSIZE = (12, 4.5)  # inches; at DPI this is 1200x450 px
DPI = 100
TIME_BINS = 60
GROUPINGS = ("shard", "replica")
UPDATES_LABEL = "updates (sum of shard versions)"


def require_matplotlib():
    """pyplot on the Agg backend (files only, no display needed), or a UserError naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'downpour[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- records and time ---------------------------------------------------------------------------

def of_kind(records: Iterable[dict], kind: str) -> list[dict]:
    """Records of one kind; kinds this module does not know are ignored everywhere."""
    return [r for r in records if r.get("kind") == kind]


def header_of(records: list[dict]) -> dict:
    headers = of_kind(records, "header")
    return headers[0] if headers else {}


def run_clock(records: list[dict]) -> tuple[float, float]:
    """(start, span): the header's time, and seconds from it to the last record of any kind."""
    times = [r["t"] for r in records if isinstance(r.get("t"), (int, float))]
    start = header_of(records).get("t", min(times, default=0.0))
    span = max(times, default=start) - start
    return start, max(span, 1e-3)  # a run whose records share one time still gets a drawable axis


def time_edges(span: float, bins: int = TIME_BINS) -> np.ndarray:
    return np.linspace(0.0, span, bins + 1)


def rate_per_bin(times, edges: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Events (times `weight`) per second in each time bin."""
    counts, _ = np.histogram(np.asarray(times, dtype=float), bins=edges)
    return counts * weight / np.diff(edges)


def stat_per_bin(times, values, edges: np.ndarray,
                 stat: Callable[[np.ndarray], float]) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, stat of the values in each bin) for the bins holding any value."""
    times, values = np.asarray(times, dtype=float), np.asarray(values)
    index = np.clip(np.digitize(times, edges) - 1, 0, len(edges) - 2)
    centres, stats = [], []
    for b in np.unique(index):
        centres.append((edges[b] + edges[b + 1]) / 2)
        stats.append(stat(values[index == b]))
    return np.asarray(centres), np.asarray(stats)


def nearest_rank(p: float) -> Callable[[np.ndarray], float]:
    """The same percentile as ps.staleness (an observed value, not an interpolation)."""
    return lambda values: float(np.percentile(values, p, method="inverted_cdf"))


# --- figure plumbing ----------------------------------------------------------------------------

def new_figure(title: Optional[str]):
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI, layout="constrained")
    if title:
        fig.suptitle(title)
    return fig, axes


def save(fig, path) -> Path:
    """Writes and always closes the figure, so a failed write leaks nothing either."""
    import matplotlib.pyplot as plt
    path = Path(path)
    try:
        fig.savefig(path, dpi=DPI, format="png")  # a given format keeps matplotlib from adding ".png"
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): create its folder or "
                        f"choose a writable one") from None
    finally:
        plt.close(fig)
    return path


def save_empty(fig, axes, text: str, path) -> Path:
    """A figure whose panels all say there is nothing to draw, instead of empty frames."""
    for ax in axes:
        say_no_data(ax, text)
    return save(fig, path)


def say_no_data(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, transform=ax.transAxes)


def integer_ticks(axis) -> None:
    """Versions and tau are whole numbers: no tick at 0.5."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def seconds_axis(ax, span: float) -> None:
    ax.set_xlim(0, span)
    ax.set_xlabel("time since start (s)")


# --- staleness ----------------------------------------------------------------------------------

def staleness_png(records: Iterable[dict], by: str, path, title: Optional[str] = None) -> Path:
    """Left: tau histogram of accepted pushes per shard or replica; right: tau over time."""
    if by not in GROUPINGS:
        raise UserError(f"staleness plots group by {' or '.join(GROUPINGS)}, not {by!r}")
    records = list(records)
    pushes = [r for r in of_kind(records, "push") if r.get("accepted")]
    if not pushes:
        raise UserError(f"no accepted pushes to plot in {path}: the log holds no applied update")
    start, span = run_clock(records)
    fig, (left, right) = new_figure(title or f"staleness by {by}")
    tau_histogram(left, pushes, by)
    tau_heat_map(fig, right, pushes, start, span)
    return save(fig, path)


def tau_histogram(ax, pushes: list[dict], by: str) -> None:
    """Grouped integer bars: each group gets a slice of the unit width around every tau."""
    groups: dict[int, list[int]] = {}
    for r in pushes:
        groups.setdefault(r[by], []).append(r["tau"])
    top = max(r["tau"] for r in pushes)
    width = 0.8 / len(groups)
    for i, key in enumerate(sorted(groups)):
        counts = np.bincount(groups[key], minlength=top + 1)
        offset = (i - (len(groups) - 1) / 2) * width
        ax.bar(np.arange(top + 1) + offset, counts, width=width,
               label=f"{by} {key} ({len(groups[key])})")
    ax.set_xlabel("tau (updates)")
    ax.set_ylabel("pushes")
    integer_ticks(ax.xaxis)
    integer_ticks(ax.yaxis)
    ax.set_title("accepted pushes by staleness")
    ax.legend(fontsize="small", ncol=max(1, len(groups) // 8))


def tau_heat_map(fig, ax, pushes: list[dict], start: float, span: float) -> None:
    """Pushes per (time bin, tau) on a log colour scale, so a rare large tau stays visible."""
    from matplotlib.colors import LogNorm
    times = np.array([r["t"] - start for r in pushes])
    taus = np.array([r["tau"] for r in pushes])
    edges = time_edges(span)
    tau_edges = np.arange(taus.max() + 2) - 0.5
    counts, _, _ = np.histogram2d(times, taus, bins=(edges, tau_edges))
    masked = np.ma.masked_equal(counts.T, 0)  # empty cells stay background, not the lowest colour
    mesh = ax.pcolormesh(edges, tau_edges, masked, norm=LogNorm(vmin=1, vmax=max(counts.max(), 2)),
                         cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="pushes")
    for p, style in ((50, "-"), (99, "--")):
        centres, values = stat_per_bin(times, taus, edges, nearest_rank(p))
        ax.plot(centres, values, style, color="tab:red", label=f"p{p}")
    seconds_axis(ax, span)
    ax.set_ylabel("tau (updates)")
    integer_ticks(ax.yaxis)
    ax.set_title("staleness over time")
    ax.legend(fontsize="small", loc="upper left")


# --- evaluations --------------------------------------------------------------------------------

def evaluations_png(records: Iterable[dict], path) -> Path:
    """Accuracy (left axis) and loss (right axis) against time and against shard updates."""
    records = list(records)
    evals = of_kind(records, "eval")
    start, span = run_clock(records)
    fig, (by_time, by_updates) = new_figure("test accuracy and loss")
    if not evals:
        return save_empty(fig, (by_time, by_updates), "no evaluations in this run", path)
    times = [e["t"] - start for e in evals]
    updates = [sum(e["versions"]) for e in evals]
    accuracy_and_loss(by_time, times, evals)
    by_time.set_xlim(left=0)
    by_time.set_xlabel("time since start (s)")
    accuracy_and_loss(by_updates, updates, evals)
    by_updates.set_xlabel(UPDATES_LABEL)
    return save(fig, path)


def accuracy_and_loss(ax, xs: list[float], evals: list[dict]) -> None:
    """The final evaluation (samples == -1) gets a star, so it is told apart from the periodic ones."""
    ax.plot(xs, [e["accuracy"] for e in evals], "o-", color="tab:blue", label="accuracy")
    finals = [(x, e["accuracy"]) for x, e in zip(xs, evals) if e.get("samples") == -1]
    if finals:
        ax.plot(*zip(*finals), "*", color="tab:blue", markersize=14, label="final")
    ax.set_ylabel("accuracy", color="tab:blue")
    ax.margins(x=0.05)  # the final evaluation sits at the end of the run: keep its marker whole
    handles = ax.get_legend_handles_labels()[0]
    with_loss = [(x, e["loss"]) for x, e in zip(xs, evals) if e.get("loss") is not None]
    if with_loss:
        twin = ax.twinx()
        handles += twin.plot(*zip(*with_loss), "s--", color="tab:orange", label="loss")
        twin.set_ylabel("loss", color="tab:orange")
    ax.legend(handles=handles, fontsize="small", loc="center right")


# --- fetch spread -------------------------------------------------------------------------------

def spread_png(records: Iterable[dict], path) -> Path:
    """How many shard versions apart one fetch's replies were: histogram, and over time."""
    records = list(records)
    fetches = of_kind(records, "fetch")
    start, span = run_clock(records)
    fig, (hist, over_time) = new_figure("fetch version spread (max - min shard version in one fetch)")
    if not fetches:
        return save_empty(fig, (hist, over_time), "no fetches in this run", path)
    spreads = np.array([f["spread"] for f in fetches])
    hist.bar(np.arange(spreads.max() + 1), np.bincount(spreads), width=0.8, color="tab:purple")
    hist.set_xlabel("spread (versions)")
    hist.set_ylabel("fetches")
    hist.set_yscale("log")  # mixed fetches are usually rare next to consistent ones
    integer_ticks(hist.xaxis)
    times, edges = np.array([f["t"] - start for f in fetches]), time_edges(span)
    for stat, name in ((np.mean, "mean"), (np.max, "max")):
        centres, values = stat_per_bin(times, spreads, edges, stat)
        over_time.plot(centres, values, "o-" if name == "max" else "-", markersize=3, label=name)
    seconds_axis(over_time, span)
    over_time.set_ylabel("spread (versions)")
    integer_ticks(over_time.yaxis)
    over_time.legend(fontsize="small")
    return save(fig, path)


# --- throughput ---------------------------------------------------------------------------------

def samples_per_push(header: dict) -> Optional[int]:
    """n_push x batch_size when the header says both; older logs do not."""
    batch, n_push = header.get("batch_size"), header.get("n_push")
    return batch * n_push if batch and n_push else None


def throughput_png(records: Iterable[dict], path, per_push: Optional[int] = None) -> Path:
    """Per-replica samples/s from the pushes each replica sent to shard 0 (one per n_push steps).

    per_push overrides the header's n_push x batch_size; without either the figure shows pushes/s.
    """
    records = list(records)
    per_push = per_push or samples_per_push(header_of(records))
    unit = "samples/s" if per_push else "pushes/s"
    unit_label = unit if per_push else "pushes/s (batch size unknown)"
    start, span = run_clock(records)
    fig, (over_time, overall) = new_figure("replica throughput")
    by_replica = push_times(records, "replica", shard=0)
    if not by_replica:
        return save_empty(fig, (over_time, overall), "no pushes to shard 0 in this run", path)
    edges = time_edges(span)
    for replica, times in by_replica.items():
        over_time.stairs(rate_per_bin(np.asarray(times) - start, edges, per_push or 1), edges,
                         label=f"replica {replica}")
    seconds_axis(over_time, span)
    over_time.set_ylabel(unit_label)
    over_time.legend(fontsize="small", ncol=max(1, len(by_replica) // 8))
    rate_bars(overall, {r: active_rate(times, per_push or 1) for r, times in by_replica.items()})
    overall.set_ylabel(f"{unit}, first to last push")
    return save(fig, path)


def rate_bars(ax, rates: dict[int, Optional[float]]) -> None:
    """One bar per replica; a replica with a single push has no rate yet, and the bar says so."""
    labels = [str(r) for r in rates]
    ax.bar(labels, [rate or 0.0 for rate in rates.values()], color="tab:green")
    for label, rate in zip(labels, rates.values()):
        if rate is None:
            ax.text(label, 0, "one push:\nno rate", ha="center", va="bottom", fontsize="small")
    ax.set_xlabel("replica")
    ax.set_ylim(bottom=0)


def push_times(records: list[dict], key: str, shard: Optional[int] = None) -> dict[int, list[float]]:
    """Times of pushes grouped by record[key] (keys sorted), optionally only those to one shard."""
    groups: dict[int, list[float]] = {}
    for r in of_kind(records, "push"):
        if shard is None or r["shard"] == shard:
            groups.setdefault(r[key], []).append(r["t"])
    return {k: groups[k] for k in sorted(groups)}


def active_rate(times: list[float], per_event: float = 1.0) -> Optional[float]:
    """Events after the first over the time from first to last: the first only marks the start."""
    if len(times) < 2 or max(times) == min(times):
        return None if len(times) < 2 else 0.0
    return (len(times) - 1) * per_event / (max(times) - min(times))


# --- shards -------------------------------------------------------------------------------------

def shards_png(records: Iterable[dict], path) -> Path:
    """Per shard: pushes received per second, and its version (updates applied) over time."""
    records = list(records)
    pushes = of_kind(records, "push")
    start, span = run_clock(records)
    fig, (rate, version) = new_figure("parameter-server shards")
    if not pushes:
        return save_empty(fig, (rate, version), "no pushes in this run", path)
    edges = time_edges(span)
    for shard, times in push_times(records, "shard").items():
        rate.stairs(rate_per_bin(np.asarray(times) - start, edges), edges, label=f"shard {shard}")
        mine = sorted((r for r in pushes if r["shard"] == shard), key=lambda r: r["t"])
        # the version after a push: `applied` is the version it met, plus one if it was applied
        version.step([r["t"] - start for r in mine], [r["applied"] + bool(r["accepted"]) for r in mine],
                     where="post", label=f"shard {shard}")
    for ax, label in ((rate, "pushes received per s"), (version, "version (updates applied)")):
        seconds_axis(ax, span)
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    return save(fig, path)
