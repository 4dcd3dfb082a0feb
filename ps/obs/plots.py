"""PNG figures from a run's event log: staleness, evaluations, fetch spread, throughput, shards.

Every function takes the log's records (as `ps.obs.events.read_events` yields them), writes one PNG
of FIGSIZE at DPI and returns its path. matplotlib is imported only when a figure is drawn, so
`import ps.obs.plots` works without it; `require_matplotlib` turns its absence into a UserError.
A panel without data shows a sentence saying so, never an empty frame.
"""

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ps.common.errors import UserError
from ps.obs.records import (  # noqa: F401  (report and tests reach them as plots.*)
    TIME_BINS,
    active_rate,
    header_of,
    nearest_rank,
    of_kind,
    push_times,
    rate_per_bin,
    run_clock,
    samples_per_push,
    stat_per_bin,
    time_edges,
)

FIGSIZE = (12, 4.5)  # inches; at DPI this is 1200x450 px
DPI = 100
GROUPINGS = ("shard", "replica")
UPDATES_LABEL = "updates (sum of shard versions)"


def require_matplotlib():
    """pyplot on the Agg backend (files only, no display needed), or a UserError saying how to get it."""
    try:
        import matplotlib
    except ImportError:  # a dependency of downpour since 0.1: only a broken install lacks it
        raise UserError("plotting needs matplotlib, a dependency of downpour missing here: "
                        "pip install 'matplotlib>=3.7' (or 'downpour[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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


def seconds_axis(ax, span: float, start: float = 0.0) -> None:
    """x from `start` to `span`, seconds since the run started (a window keeps its own times)."""
    ax.set_xlim(start, span)
    ax.set_xlabel("time since start (s)")


# --- staleness ----------------------------------------------------------------------------------

def staleness_png(records: Iterable[dict], by: str, path, title: Optional[str] = None,
                  window: Optional[tuple] = None) -> Path:
    """Left: tau histogram of accepted pushes per shard or replica; right: tau over time as a heat
    map, one row per shard or replica. `window` (start, end), seconds since the run started,
    either None for open: only the pushes in [start, end), and the time axis shows that span."""
    if by not in GROUPINGS:
        raise UserError(f"staleness plots group by {' or '.join(GROUPINGS)}, not {by!r}")
    records = list(records)
    start, span = run_clock(records)
    lo, hi = window_span(window, span)
    end = hi if window and window[1] is not None else np.inf  # open: up to the last push, included
    pushes = [r for r in of_kind(records, "push") if r.get("accepted") and lo <= r["t"] - start < end]
    if not pushes:
        where = f"between {lo:g} and {hi:g} s" if window else "in the log"
        raise UserError(f"no accepted pushes to plot in {path} {where}: nothing was applied there")
    groups = sorted({r[by] for r in pushes})
    fig, left, rows = staleness_axes(title or f"staleness by {by}", len(groups))
    tau_histogram(left, pushes, by)
    tau_heat_maps(fig, rows, pushes, by, groups, start, (lo, hi))
    mark_faults(rows, [r["t"] - start for r in of_kind(records, "fault")])
    return save(fig, path)


def window_span(window: Optional[tuple], span: float) -> tuple[float, float]:
    """The time axis (seconds since start) of a window, the whole run where a side is open."""
    lo, hi = window or (None, None)
    lo = 0.0 if lo is None else float(lo)
    hi = max(span, lo + 1e-3) if hi is None else float(hi)
    return lo, hi


def staleness_axes(title: str, rows: int):
    """The histogram on the left half; on the right, `rows` heat maps stacked on one time axis."""
    plt = require_matplotlib()
    # heat maps keep a readable height each: a run with many replicas (restarts add ids) grows taller
    fig = plt.figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], 0.6 * rows + 1)), dpi=DPI, layout="constrained")
    fig.suptitle(title)
    grid = fig.add_gridspec(rows, 2)
    left = fig.add_subplot(grid[:, 0])
    first = fig.add_subplot(grid[0, 1])
    return fig, left, [first] + [fig.add_subplot(grid[i, 1], sharex=first, sharey=first)
                                 for i in range(1, rows)]


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


def tau_heat_maps(fig, rows: list, pushes: list[dict], by: str, groups: list[int], start: float,
                  axis: tuple[float, float]) -> None:
    """Per group, pushes per (time bin, tau) on one log colour scale, so a rare large tau stays
    visible and rows compare; the p50 and p99 of each bin drawn over it."""
    from matplotlib.colors import LogNorm
    edges = np.linspace(*axis, TIME_BINS + 1)
    tau_edges = np.arange(max(r["tau"] for r in pushes) + 2) - 0.5
    cells = {}
    for key in groups:
        mine = [r for r in pushes if r[by] == key]
        times, taus = np.array([r["t"] - start for r in mine]), np.array([r["tau"] for r in mine])
        cells[key] = times, taus, np.histogram2d(times, taus, bins=(edges, tau_edges))[0]
    norm = LogNorm(vmin=1, vmax=max(max(c.max() for *_, c in cells.values()), 2))
    for ax, key in zip(rows, groups):
        times, taus, counts = cells[key]
        masked = np.ma.masked_equal(counts.T, 0)  # empty cells stay background, not the lowest colour
        mesh = ax.pcolormesh(edges, tau_edges, masked, norm=norm, cmap="viridis")
        for p, style in ((50, "-"), (99, "--")):
            centres, values = stat_per_bin(times, taus, edges, nearest_rank(p))
            ax.plot(centres, values, style, color="tab:red", label=f"p{p}")
        ax.set_ylabel(f"{by} {key}\ntau", fontsize="small")
        integer_ticks(ax.yaxis)
        ax.tick_params(labelbottom=ax is rows[-1])  # time ticks on the bottom row only
    seconds_axis(rows[-1], axis[1], axis[0])
    rows[0].set_title("staleness over time")
    rows[0].legend(fontsize="x-small", loc="upper left")
    fig.colorbar(mesh, ax=rows, label="pushes")


def mark_faults(rows: list, times: list[float]) -> None:
    """A dotted vertical line at each fault on every row (the time axis is already fixed)."""
    for ax in rows:
        for i, x in enumerate(times):
            ax.axvline(x, color="tab:orange", linestyle=":", linewidth=1.2,
                       label="fault" if ax is rows[0] and i == 0 else None)
    if times:
        rows[0].legend(fontsize="x-small", loc="upper left")


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
