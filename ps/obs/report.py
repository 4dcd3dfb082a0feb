"""A run's report: figures and a markdown summary made from RUN_DIR's event log, summary and config.

`write_report(run_dir)` writes RUN_DIR/report/report.md and the PNGs it links to. It reads the
log with ps.events and draws with ps.plots (matplotlib only), so it works on a machine without
Ray or torch, and on a run that crashed before writing summary.json.
"""

import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import yaml

from ps.common import rundir, schema
from ps.common.errors import UserError
from ps.obs import events, faults, plots, staleness
from ps.obs.records import layouts, replica_count, shard_count, shard_sizes

REPORT_NAME = "report.md"
REPORT_DIR = "report"
NONE = "–"


def write_report(run_dir: Path, out_dir: Optional[Path] = None,
                 warn: Optional[Callable[[str], None]] = None) -> Path:
    """Writes report.md and its figures into out_dir (default RUN_DIR/report); returns report.md.
    A log that ends early or a damaged summary.json is told to `warn` (one line each; without it,
    warnings.warn) and in the report, which covers what could be read."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    records = load_records(run_dir, notes.append)
    summary, config = load_summary(run_dir, notes.append), load_config(run_dir)
    for note in notes:
        if warn is None:
            warnings.warn(note)
        else:
            warn(note)
    out = prepare_out_dir(Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR)
    per_push = samples_per_push(records, config)
    images = draw_figures(records, out, per_push)
    text = render(run_dir, records, summary, config, images, per_push, notes)
    return write_text(out / REPORT_NAME, text)


# --- inputs -------------------------------------------------------------------------------------

def load_records(run_dir: Path, note: Callable[[str], None]) -> list[dict]:
    try:
        return list(events.read_events(run_dir / schema.LOG_NAME, on_damage=lambda d: note(str(d))))
    except events.LogError as exc:
        raise UserError(str(exc)) from None


def load_summary(run_dir: Path, note: Callable[[str], None]) -> Optional[dict]:
    """None when the run crashed before writing it, or when it is damaged (told to `note`):
    the log still tells a lot."""
    if not (run_dir / rundir.SUMMARY_NAME).exists():
        return None
    try:
        return rundir.read_summary(run_dir, hint="the report shows what the event log holds")
    except UserError as exc:
        note(str(exc))
        return None


def load_config(run_dir: Path) -> dict:
    try:
        loaded = yaml.safe_load((run_dir / rundir.CONFIG_NAME).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def samples_per_push(records: list[dict], config: dict) -> Optional[int]:
    """From the header when it says; older logs lack it, but the run's config.yaml has both numbers."""
    return (plots.samples_per_push(plots.header_of(records))
            or plots.samples_per_push({k: config.get(k) for k in ("batch_size", "n_push")}))


# --- outputs ------------------------------------------------------------------------------------

def prepare_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out} ({exc.strerror or exc}): "
                        f"choose another output folder or fix its permissions") from None
    return out


def write_text(path: Path, text: str) -> Path:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): "
                        f"choose another output folder or fix its permissions") from None
    return path


def draw_figures(records: list[dict], out: Path, per_push: Optional[int]) -> dict[str, Optional[str]]:
    """File name of each figure by role; None for the staleness ones when no push was accepted."""
    has_accepted = any(r.get("accepted") for r in plots.of_kind(records, "push"))
    images: dict[str, Optional[str]] = {"staleness": None, "staleness_by_replica": None}
    if has_accepted:
        plots.staleness_png(records, "shard", out / "staleness.png", "staleness by shard")
        plots.staleness_png(records, "replica", out / "staleness_by_replica.png", "staleness by replica")
        images.update(staleness="staleness.png", staleness_by_replica="staleness_by_replica.png")
    drawers = {"evaluations": plots.evaluations_png, "spread": plots.spread_png,
               "shards": plots.shards_png}
    for role, draw in drawers.items():
        images[role] = draw(records, out / f"{role}.png").name
    images["throughput"] = plots.throughput_png(records, out / "throughput.png", per_push).name
    return images


# --- markdown -----------------------------------------------------------------------------------

def render(run_dir: Path, records: list[dict], summary: Optional[dict], config: dict,
           images: dict, per_push: Optional[int], notes: Sequence[str] = ()) -> str:
    start, _ = plots.run_clock(records)
    sections = [
        [f"# Run report: {run_dir.name}", ""],
        [*(f"**Warning:** {cell(note)}" for note in notes), *([""] if notes else [])],
        run_section(records, summary, config),
        staleness_section(records, images),
        fetch_section(records, images),
        rejected_section(records),
        faults_section(records, start),
        throughput_section(records, images, per_push, start),
        shard_section(records, images),
        evaluation_section(records, images, start),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def run_section(records: list[dict], summary: Optional[dict], config: dict) -> list[str]:
    done = summary or {}
    latest = {**plots.header_of(records), **(layouts(records) or [{}])[-1]}  # shards after a resume
    sources = (done, config, latest)

    def settings(*keys) -> str:
        return ", ".join(fmt_any(pick(key, sources)) for key in keys)

    rows = [
        ("model", settings("model")), ("dataset", settings("dataset")),
        ("replicas", settings("replicas")), ("shards", settings("shards")),
        ("status", status_text(summary)),
        ("test accuracy", fmt(done.get("test_accuracy"), 4)),
        ("test loss", fmt(done.get("test_loss"), 4)),
        ("samples/s", fmt(done.get("samples_per_s"), 1)),
        ("training samples", fmt_any(done.get("train_samples"))),
        ("wall time (s)", fmt(done.get("wall_time_s"), 1)),
        ("training time (s)", fmt(done.get("train_time_s"), 1)),
        ("batch size, n_fetch, n_push", settings("batch_size", "n_fetch", "n_push")),
        ("optimizer, lr, lr rule, schedule", settings("optimizer", "lr", "lr_rule", "lr_schedule")),
        ("event log", log_contents(records)),
    ]
    return ["## Run", "", *table(["", "value"], rows), ""]


def pick(key: str, sources: tuple[dict, ...]):
    """The first value given: summary.json (what happened), then config.yaml and the log header."""
    return next((source[key] for source in sources if source.get(key) is not None), None)


def status_text(summary: Optional[dict]) -> str:
    if summary is None:
        return "unknown: no readable summary.json (the run may have crashed)"
    error = f" ({summary['error']})" if summary.get("error") else ""
    return fmt_any(summary.get("status")) + error + (" (dry run)" if summary.get("dry_run") else "")


def log_contents(records: list[dict]) -> str:
    pushes = plots.of_kind(records, "push")
    rejected = sum(not p.get("accepted") for p in pushes)
    return (f"{len(pushes)} pushes ({rejected} rejected), {len(plots.of_kind(records, 'fetch'))} "
            f"fetches, {len(plots.of_kind(records, 'eval'))} evaluations over "
            f"{plots.run_clock(records)[1]:.1f} s")


def staleness_rows(groups: dict[int, np.ndarray], keys) -> list[list]:
    rows = []
    for key in keys:
        s = staleness.summarize(groups.get(key, []))
        rows.append([key, s["count"], fmt(s["mean"], 2), s["p50"], s["p90"], s["p99"], s["max"]])
    return rows


def staleness_section(records: list[dict], images: dict) -> list[str]:
    by_shard = staleness.taus_by(records, "shard")
    by_replica = staleness.taus_by(records, "replica")
    # every shard and replica the header or a resume names gets a row, so one that got nothing shows up
    shards = sorted(set(range(shard_count(records))) | set(by_shard))
    replicas = sorted(set(range(replica_count(records))) | set(by_replica))
    everything = np.concatenate(list(by_shard.values())) if by_shard else np.zeros(0, np.int64)
    columns = ["pushes", "mean", "p50", "p90", "p99", "max"]
    lines = ["## Staleness", "",
             "tau = the shard's version when a push arrived minus the version the gradient was "
             "computed from; accepted pushes only, nearest-rank percentiles.", "",
             *table(["shard", *columns], staleness_rows(by_shard, shards)
                    + staleness_rows({"all": everything}, ["all"])), "",
             *table(["replica", *columns], staleness_rows(by_replica, replicas)), ""]
    if images["staleness"] is None:
        return lines + ["No accepted pushes, so no staleness figures.", ""]
    return lines + [image("staleness by shard", images["staleness"]),
                    image("staleness by replica", images["staleness_by_replica"]), ""]


def fetch_section(records: list[dict], images: dict) -> list[str]:
    fetches = plots.of_kind(records, "fetch")
    lines = ["## Fetches", ""]
    if not fetches:
        return lines + ["No fetches in this run.", "", image("fetch spread", images["spread"]), ""]
    spreads = np.array([f["spread"] for f in fetches])
    reply = [f["reply_spread_s"] for f in fetches if f.get("reply_spread_s") is not None]
    mixed = spreads > 0
    rows = [("fetches", len(fetches)),
            ("with mixed shard versions", f"{int(mixed.sum())} ({100 * mixed.mean():.1f}%)"),
            ("max spread (versions)", int(spreads.max())),
            ("mean time between first and last reply (ms)", fmt(1000 * np.mean(reply) if reply else None, 1))]
    return lines + [*table(["", "value"], rows), "", image("fetch spread", images["spread"]), ""]


def rejected_section(records: list[dict]) -> list[str]:
    """Counted by the reason's text before ':', which names the check (the rest is the detail)."""
    reasons = Counter((p.get("reason") or "no reason given").split(":")[0].strip()
                      for p in plots.of_kind(records, "push") if not p.get("accepted"))
    lines = ["## Rejected pushes", ""]
    if not reasons:
        return lines + ["None: every push was applied.", ""]
    return lines + [*table(["reason", "pushes"], reasons.most_common()), ""]


def faults_section(records: list[dict], start: float) -> list[str]:
    """Only for a log with fault-tolerance records or fenced pushes: every fault and what followed,
    the fenced pushes, the checkpoints and the resumes (docs/event-log.md, "Faults and checkpoints")."""
    fenced = Counter(p["shard"] for p in plots.of_kind(records, "push") if faults.is_fenced(p))
    if not fenced and not any(r.get("kind") in faults.KINDS for r in records):
        return []
    lines = ["## Faults and checkpoints", ""]
    rows = faults.fault_rows(records, start)
    lines += (table(["time (s)", "actor", "cause", "detail", "followed by"], rows) if rows
              else ["No faults."]) + [""]
    checkpoints = plots.of_kind(records, "checkpoint")
    last = checkpoints[-1] if checkpoints else None
    by_shard = ", ".join(f"shard {s}: {n}" for s, n in sorted(fenced.items()))
    lost = sum(r.get("lost_updates") or 0 for r in plots.of_kind(records, "restore"))
    lines += table(["", "value"], [
        ("fenced pushes (computed on an older shard incarnation)",
         f"{sum(fenced.values())}" + (f" ({by_shard})" if fenced else "")),
        ("updates lost in shard restores", lost),
        ("checkpoints", len(checkpoints) if not last else
         f"{len(checkpoints)} (last #{last['seq']} at {fmt_any(last['versions'])}, in {last['path']})"),
    ]) + [""]
    resumes = [[fmt(r["t"] - start, 1), f"#{r['seq']}", fmt_any(r.get("versions")), r["replicas"],
                r["shards"], r.get("steps_done")] for r in plots.of_kind(records, "resume")]
    if resumes:
        headers = ["resumed at (s)", "checkpoint", "versions", "replicas", "shards", "steps done"]
        lines += table(headers, resumes) + [""]
    return lines


def throughput_section(records: list[dict], images: dict, per_push: Optional[int],
                       start: float) -> list[str]:
    """From the pushes to shard 0: every replica sends each of its pushes to every shard once."""
    unit = "samples/s" if per_push else "pushes/s"
    by_replica = plots.push_times(records, "replica", shard=0)
    lines = ["## Throughput per replica", "",
             (f"Each push to shard 0 stands for n_push x batch size = {per_push} samples; "
              if per_push else "Batch size and n_push are unknown, so rates are in pushes/s; ")
             + f"{unit} counts the pushes after a replica's first over the time to its last.", ""]
    if not by_replica:
        return lines + ["No pushes to shard 0 in this run.", "",
                        image("throughput", images["throughput"]), ""]
    rows = []
    for replica, times in by_replica.items():
        rows.append([replica, len(times), len(times) * per_push if per_push else NONE,
                     fmt(min(times) - start, 1), fmt(max(times) - start, 1),
                     fmt(plots.active_rate(times, per_push or 1), 1)])
    headers = ["replica", "pushes", "samples", "first push (s)", "last push (s)", unit]
    return lines + [*table(headers, rows), "", image("throughput", images["throughput"]), ""]


def shard_section(records: list[dict], images: dict) -> list[str]:
    sizes = shard_sizes(records)  # after a re-shard, the new job's
    pushes = plots.of_kind(records, "push")
    rows = []
    for shard, times in plots.push_times(records, "shard").items():
        mine = [p for p in pushes if p["shard"] == shard]
        last = max(mine, key=lambda p: p["t"])
        rows.append([shard, fmt_any(sizes[shard]) if shard < len(sizes) else NONE, len(mine),
                     sum(not p.get("accepted") for p in mine),
                     last["applied"] + bool(last.get("accepted")),
                     fmt(plots.active_rate(times), 1)])
    lines = ["## Shards", ""]
    if rows:
        headers = ["shard", "elements", "pushes", "rejected", "last version", "pushes/s"]
        lines += table(headers, rows) + [""]
    return lines + [image("shards", images["shards"]), ""]


def evaluation_section(records: list[dict], images: dict, start: float) -> list[str]:
    evals = plots.of_kind(records, "eval")
    lines = ["## Evaluations", ""]
    if not evals:
        return lines + ["No evaluations in this run.", "",
                        image("evaluations", images["evaluations"]), ""]
    rows = [[fmt(e["t"] - start, 1), "final" if e.get("samples") == -1 else e.get("samples"),
             sum(e.get("versions") or []), fmt(e.get("accuracy"), 4), fmt(e.get("loss"), 4)]
            for e in evals]
    headers = ["time (s)", "samples", plots.UPDATES_LABEL, "accuracy", "loss"]
    return lines + [*table(headers, rows), "", image("evaluations", images["evaluations"]), ""]


# --- markdown helpers ---------------------------------------------------------------------------

def fmt(value, digits: int) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def fmt_any(value) -> str:
    return NONE if value is None else str(value)


def cell(value) -> str:
    """A '|' or a line break inside a cell (an error message, a rule's reason) would break the row."""
    return fmt_any(value).replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def image(alt: str, name: str) -> str:
    return f"![{alt}]({name})"
