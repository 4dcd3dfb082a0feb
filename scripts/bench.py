"""One command for every performance figure of downpour: the same model, batch size and
Fashion-MNIST batches through single-process torch (1 thread, all threads, 1 thread in 2
processes at once), DDP over gloo, the pattern of Ray's parameter-server example and downpour over
both transports (Ray calls and shared memory); medians and spread over repetitions that interleave
the systems, ratios against the targets, where a downpour replica's step goes (compute, fetch wait,
push, push wait, other), time to a target test accuracy, scaling with replicas and shards, and the
shard micro-benchmarks. Writes docs/benchmarks.json and docs/benchmarks.md.

    python scripts/bench.py [--models mlp,cnn] [--reps 3] [--quick] [--skip tta,scaling,micro]
    python scripts/bench.py --compare [--models mlp,cnn] [--reps 3]  # downpour only, ray vs shm
    python scripts/bench.py --render     # rewrite docs/benchmarks.md from docs/benchmarks.json

Needs Fashion-MNIST (DOWNPOUR_DATA or the usual lookup). Absolute rates drift between runs on
shared machines; the ratios, measured side by side in one run, are what to compare.
"""

import argparse
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import baselines  # noqa: E402
import bench_micro  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from ps.common.config import TrainConfig  # noqa: E402
from ps.driver.ray_session import system_config  # noqa: E402
from replicas.data import load_dataset  # noqa: E402

BATCH = 32
STEPS = {"mlp": 1000, "cnn": 300}       # timed steps per worker
QUICK_STEPS = {"mlp": 100, "cnn": 50}
COMM_EVERY = 4                           # n_fetch = n_push of the "every 4 steps" downpour rows
TARGET_ACCURACY = 0.90
SCALING_REPLICAS, SCALING_SHARDS, SCALING_TOTAL_STEPS = (1, 2, 4, 8), (1, 2, 4), 2000
SCALING_TRANSPORT = "shm"
TRANSPORTS = ("ray", "shm")
# downpour settings (replicas, shards, every): each measured over shm; over Ray only those in
# RAY_SETTINGS in the full run (the rest are in --compare), to keep it near its 35 minutes
SETTINGS = ((2, 2, 1), (2, 2, COMM_EVERY), (4, 2, 1))
RAY_SETTINGS = SETTINGS[:2]
TTA_TRANSPORTS = ("shm", "ray")          # shm first: its row is the target's
CEILING = "torch 1 thread, 2 processes at once"  # the most two workers get from this machine
DDP, RAY_PS = "DDP gloo 2x1", "Ray PS example, 2 workers"
PHASES = ("compute", "fetch_wait", "push", "push_wait")  # a replica's timers, `<phase>_s` in its stats
STEP_KEYS = tuple(f"{p}_ms" for p in (*PHASES, "other"))
TARGETS = {  # (model, row, baseline): the throughput targets as row / baseline
    ("cnn", "downpour 2x2 (shm)", DDP): ">= 1.15",
    ("cnn", "downpour 2x2 (shm)", CEILING): ">= 0.95",
    ("mlp", "downpour 2x2 (shm)", DDP): ">= 1.5",
    ("mlp", "downpour 2x2 (shm)", RAY_PS): ">= 3",
}
PUSH_TARGET = ("2", ">= 5000")           # shm pushes/s of 100K floats from 2 actors at once
BANDWIDTH_TARGET = ">= 0.3"              # shm fetch+push / memcpy at the largest size (10M)
TTA_TARGET = "<= 1.0"                    # downpour 4x2 (shm) time to accuracy / torch's


# ---- downpour, through the same `train` the CLI runs ------------------------------------------

def downpour_run(dataset_dir, model: str, replicas: int, shards: int, **settings) -> dict:
    from ps.driver.train import train

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(model=model, replicas=replicas, shards=shards, batch_size=BATCH,
                             data_dir=dataset_dir, run_dir=str(Path(tmp) / "run"),
                             **{"eval_every": 0.0, "event_log": False, **settings})
        _, summary = train(config, out=io.StringIO())
    if summary["status"] != "completed":
        raise SystemExit(f"downpour run failed: {summary['error']}")
    asked, used = settings.get("transport"), {r.get("transport") for r in summary["replica_stats"]}
    if asked and used != {asked}:  # a row must be what its name says
        notes = {r.get("transport_note") for r in summary["replica_stats"]} - {None}
        raise SystemExit(f"downpour asked for transport {asked} ran over {used}: {notes}")
    return summary


def downpour_name(replicas: int, shards: int, every: int, transport: str) -> str:
    return f"downpour {replicas}x{shards} ({transport})" + (f", every {every} steps" if every > 1 else "")


def downpour(dataset_dir, model: str, replicas: int, shards: int, steps: int, every: int = 1,
             transport: str = "shm") -> dict:
    """samples/s, and where a replica step goes (milliseconds per step, see `per_step_ms`)."""
    summary = downpour_run(dataset_dir, model, replicas, shards, steps=steps, n_fetch=every,
                           n_push=every, transport=transport)
    return {"samples_per_s": summary["samples_per_s"], **per_step_ms(summary["replica_stats"])}


def per_step_ms(stats: list[dict]) -> dict:
    """Milliseconds per replica step, over all replicas, in each timed phase of the loop, and
    `other`: the rest of each replica's time from its first step to its end (batches, the
    gradient's flattening, the loop's bookkeeping). The first fetch comes before the first step
    and counts in fetch wait only, so `other` can be a little below 0 on short runs."""
    done = sum(r["steps"] for r in stats)
    spent = {p: sum(r.get(f"{p}_s", 0.0) for r in stats) for p in PHASES}  # a phase never timed: 0
    spent["other"] = sum(r["t_last"] - r["t_first"] for r in stats) - sum(spent.values())
    return {f"{p}_ms": 1e3 * seconds / done for p, seconds in spent.items()}


def downpour_systems(dataset_dir: str, model: str, steps: int, compare: bool) -> dict:
    """name -> a function measuring once, for each setting and transport; a row with more than 2
    replicas shares 2 workers' steps, so each row does the same work. With `compare` each setting
    over both transports, side by side."""
    rows = {}
    for replicas, shards, every in SETTINGS:
        for transport in TRANSPORTS:
            if compare or transport == "shm" or (replicas, shards, every) in RAY_SETTINGS:
                rows[downpour_name(replicas, shards, every, transport)] = functools.partial(
                    downpour, dataset_dir, model, replicas, shards, 2 * steps // replicas, every, transport)
    return rows


def systems(dataset, dataset_dir: str, model: str, steps: int) -> dict:
    """name -> a function measuring once. Steps are per worker for the parallel ones."""
    cores = os.cpu_count() or 1
    rate = lambda fn: lambda: {"samples_per_s": fn()}  # noqa: E731
    return {
        "torch 1 thread": rate(lambda: baselines.single_process(dataset, model, BATCH, steps, 1)),
        f"torch {cores} threads": rate(lambda: baselines.single_process(dataset, model, BATCH, steps, cores)),
        CEILING: rate(lambda: baselines.concurrent_single(dataset, model, BATCH, steps, 2)),
        DDP: rate(lambda: baselines.ddp(dataset, model, BATCH, steps, 2)),
        RAY_PS: rate(lambda: baselines.ray_ps_example(dataset, model, BATCH, 2 * steps, 2)),
        **downpour_systems(dataset_dir, model, steps, compare=False),
    }


def measure(runs: dict, model: str, reps: int) -> dict:
    """Each of `runs` (name -> a function measuring once) `reps` times, interleaved."""
    found: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # drift hits all alike
        for name in order:
            found[name].append(runs[name]())
            print(f"{model} rep {rep} {name:40s} {found[name][-1]['samples_per_s']:9.1f} samples/s", flush=True)
    return {name: {key: spread([r[key] for r in results]) for key in results[0]}
            for name, results in found.items()}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def ratios(model: str, result: dict) -> list[tuple[str, float, str]]:
    """(what, ratio, target or "-") of medians: the issue's targets, every downpour row against
    the ceiling of two workers on this machine, and each shm row against its Ray counterpart;
    those whose rows were measured."""
    m = {k: v["samples_per_s"]["median"] for k, v in result.items()}
    pairs = [(row, base) for (of, row, base) in TARGETS if of == model]
    pairs += [(row, CEILING) for row in m if row.startswith("downpour")]
    pairs += [(row, row.replace("(shm)", "(ray)")) for row in m if "(shm)" in row]
    return [(f"{row} / {base}", m[row] / m[base], TARGETS.get((model, row, base), "-"))
            for row, base in dict.fromkeys(pairs) if row in m and base in m]


# ---- time to a test accuracy -----------------------------------------------------------------

def tta_name(transport: str) -> str:
    return f"downpour 4x2 ({transport}), inverse"


def time_to_accuracy(dataset, dataset_dir: str, quick: bool) -> dict:
    """CNN: single-process torch on all threads against downpour with 4 replicas and the inverse
    rule over each transport; seconds of training until the first evaluation at or above
    TARGET_ACCURACY."""
    cores = os.cpu_count() or 1
    epochs, every = (0.5, 0.25) if quick else (3, 0.25)
    rows = {f"torch {cores} threads": baselines.time_to_accuracy(
        dataset, "cnn", BATCH, cores, TARGET_ACCURACY, max_epochs=epochs + 1, eval_every=every)}
    for transport in TTA_TRANSPORTS:
        summary = downpour_run(dataset_dir, "cnn", 4, 2, epochs=epochs, lr_rule="inverse",
                               eval_every=every, transport=transport, event_log=True)  # for τ
        start = min(r["t_first"] for r in summary["replica_stats"])
        reached = [e for e in summary["evaluations"] if e["accuracy"] >= TARGET_ACCURACY]
        rows[tta_name(transport)] = {
            "seconds": reached[0]["pulled_at"] - start if reached else None,
            "epochs": reached[0]["epochs"] if reached else epochs,
            "accuracy": (reached[0] if reached else summary["evaluations"][-1])["accuracy"],
            "final_accuracy": summary["test_accuracy"], "samples_per_s": summary["samples_per_s"],
            "tau_p50": summary["staleness"]["p50"]}
    for name, row in rows.items():
        print(f"time to {TARGET_ACCURACY}: {name:45s} {row}", flush=True)
    return rows


def tta_ratio(rows: dict, name: str) -> Optional[float]:
    """A row's seconds over the first row's (torch's); None when either did not reach the target."""
    base, seconds = next(iter(rows.values()))["seconds"], rows[name]["seconds"]
    return seconds / base if seconds and base else None


# ---- scaling with replicas and shards --------------------------------------------------------

def scaling(dataset_dir: str, model: str, total_steps: int) -> list[dict]:
    """One run per (replicas, shards); the replicas share `total_steps` steps, so each run does
    the same work."""
    rows = []
    for replicas in SCALING_REPLICAS:
        for shards in SCALING_SHARDS:
            result = downpour(dataset_dir, model, replicas, shards, total_steps // replicas,
                              transport=SCALING_TRANSPORT)
            rows.append({"replicas": replicas, "shards": shards, **result})
            print(f"scaling {model}: {replicas} replicas x {shards} shards "
                  f"{result['samples_per_s']:9.1f} samples/s", flush=True)
    return rows


# ---- the targets ---------------------------------------------------------------------

def meets(value: Optional[float], target: str) -> bool:
    op, bound = target.split()
    return value is not None and (value >= float(bound) if op == ">=" else value <= float(bound))


def targets(report: dict) -> list[dict]:
    """Every target of the issue that this report measured: what, the measured figure, the
    target, met. The throughput ones are the targeted rows of `ratios`."""
    rows = [(f"{model.upper()}: {what}", value, target) for model, found in report.get("ratios", {}).items()
            for what, value, target in found if target != "-"]
    if report.get("micro"):
        micro = report["micro"]
        senders, target = PUSH_TARGET
        rows.append((f"one shard: pushes/s of 100K floats from {senders} actors at once (shm)",
                     micro["pushes_per_s_100k"]["shm"][senders], target))
        largest = max(micro["bandwidth"], key=lambda r: r["floats"])
        rows.append((f"one shard: {largest['floats']:,} floats fetch+push (shm) / memcpy",
                     largest["shm_ratio"], BANDWIDTH_TARGET))
    tta = report.get("time_to_accuracy") or {}
    if tta_name("shm") in tta:
        rows.append((f"CNN: {tta_name('shm')}: time to {TARGET_ACCURACY:.2f} / {next(iter(tta))}",
                     tta_ratio(tta, tta_name("shm")), TTA_TARGET))
    return [{"what": what, "measured": value, "target": target, "met": meets(value, target)}
            for what, value, target in rows]


# ---- the report ------------------------------------------------------------------------------

def machine() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "platform": platform.platform()}


def write_markdown(path: Path, report: dict) -> None:
    lines = intro(report) + targets_section(report)
    for model, result in report["results"].items():
        lines += model_section(report, model, result)
    lines += tta_section(report.get("time_to_accuracy")) + scaling_section(report)
    lines += micro_section(report.get("micro"))
    path.write_text("\n".join(lines))


def intro(report: dict) -> list[str]:
    compare = ["Only downpour, over both transports side by side (`--compare`).", ""] \
        if report.get("mode") == "compare" else []
    return ["# Benchmarks", "",
            f"Written by `{report['command']}` on {report['date']}; every figure below comes from "
            "that one run.", "", *compare,
            "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + ".", "",
            f"Batch {BATCH} everywhere; Adam (fused) at 0.003; the same model and Fashion-MNIST "
            "batches. Rates are samples/s over the timed steps (start-up excluded), median "
            f"[min, max] of {report['reps']} repetitions that interleave the systems. "
            "`downpour RxS (t)` is R replicas and S shards over transport t: `ray` (actor calls) "
            f"or `shm` (shared memory); `every {COMM_EVERY} steps` sets n_fetch = n_push = "
            f"{COMM_EVERY}; rows of more than 2 replicas share 2 workers' steps. Per step: a "
            "downpour replica's milliseconds in forward/backward (compute), waiting for a fetch, "
            "sending its pushes (copies, doorbells or serialisation), waiting for their "
            "acknowledgements, and the rest of its time (other: batches, bookkeeping). "
            f"`{CEILING}` is the most any two workers get from this machine.", ""]


def fmt(value: Optional[float]) -> str:
    return "not reached" if value is None else f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def targets_section(report: dict) -> list[str]:
    rows = report.get("targets") or []
    if not rows:
        return []
    return ["## Targets", "", "| what | measured | target | met |", "| --- | --- | --- | --- |",
            *[f"| {r['what']} | {fmt(r['measured'])} | {r['target']} | {'yes' if r['met'] else 'no'} |"
              for r in rows], ""]


def model_section(report: dict, model: str, result: dict) -> list[str]:
    lines = [f"## {model.upper()}, {report['steps'][model]} steps per worker", "",
             "| system | samples/s | range | compute ms/step | fetch wait | push | push wait | other |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result.items():
        rate = r["samples_per_s"]
        per_step = " | ".join(f"{r[k]['median']:.2f}" if k in r else "" for k in STEP_KEYS)
        lines.append(f"| {name} | {rate['median']:.0f} | {rate['min']:.0f} to {rate['max']:.0f} | {per_step} |")
    lines += ["", "| ratio | measured | target |", "| --- | --- | --- |"]
    lines += [f"| {what} | {value:.2f} | {target} |" for what, value, target in report["ratios"][model]]
    return lines + [""]


def tta_section(rows: Optional[dict]) -> list[str]:
    if not rows:
        return []
    lines = [f"## Time to {TARGET_ACCURACY:.2f} test accuracy, CNN", "",
             "Seconds of training until the first evaluation (every 0.25 epoch, whole test "
             "set) at or above the target; torch's clock stops while it evaluates, "
             "downpour's evaluations run beside training and take CPU from it.", "",
             f"| system | seconds | epochs | accuracy then | / torch (target {TTA_TARGET}) | whole run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        seconds = "not reached" if r["seconds"] is None else f"{r['seconds']:.0f}"
        ratio = tta_ratio(rows, name)
        run = (f"final accuracy {r['final_accuracy']:.4f}, {r['samples_per_s']:.0f} samples/s"
               if "final_accuracy" in r else "")
        run += f", τ p50 {r['tau_p50']}" if r.get("tau_p50") is not None else ""
        lines.append(f"| {name} | {seconds} | {r['epochs']:.2f} | {r['accuracy']:.4f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {run} |")
    return lines + [""]


def scaling_section(report: dict) -> list[str]:
    if not report.get("scaling"):
        return []
    lines = [f"## Scaling, MLP over {SCALING_TRANSPORT}, {report['scaling_steps']} steps shared by the "
             "replicas (one run each; samples/s)", "",
             "| replicas | " + " | ".join(f"{s} shards" for s in SCALING_SHARDS) + " |",
             "| --- |" + " --- |" * len(SCALING_SHARDS)]
    for replicas in SCALING_REPLICAS:
        cells = [f"{r['samples_per_s']:.0f}" for r in report["scaling"] if r["replicas"] == replicas]
        lines.append(f"| {replicas} | " + " | ".join(cells) + " |")
    return lines + [""]


def micro_section(micro: Optional[dict]) -> list[str]:
    if not micro:
        return []
    lines = ["## One shard", "",
             "A fetch then a push of n floats, both awaited, from the driver (bytes of both "
             "directions over the time), against numpy memcpy of n floats in the same run. Ray: "
             "a pull call and a push call; shm: a copy of the shard's board, a copy into a slot "
             "with a doorbell, and the wait for its result.", "",
             "| floats | ray GB/s | shm GB/s | memcpy GB/s | ray / memcpy | shm / memcpy "
             f"(target {BANDWIDTH_TARGET} at 10M) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['floats']:,} | {r['ray_GBps']:.3f} | {r['shm_GBps']:.3f} | {r['memcpy_GBps']:.2f} | "
              f"{r['ray_ratio']:.3f} | {r['shm_ratio']:.3f} |" for r in micro["bandwidth"]]
    rates = micro["pushes_per_s_100k"]
    senders, target = PUSH_TARGET
    lines += ["", "Pushes of 100K floats per second one shard applied (SGD), sent without waiting as "
              "replicas do (shm: at most 2 in flight per sender); target "
              f"{target.split()[1]} per second from {senders} actors at once over shm.", "",
              "| sent from | ray pushes/s | shm pushes/s |", "| --- | --- | --- |"]
    for sender in dict.fromkeys([*rates["ray"], *rates["shm"]]):
        label = {"driver": "the driver", "1": "1 actor"}.get(sender, f"{sender} actors at once")
        cells = [f"{rates[t][sender]:.0f}" if sender in rates[t] else "-" for t in TRANSPORTS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if micro.get("call_cost"):
        lines += ["What one awaited Ray actor call costs here, from the driver (averages over 300 "
                  "calls of each kind):", "",
                  "| call | wall ms | caller CPU ms | actor CPU ms |", "| --- | --- | --- | --- |"]
        lines += [f"| {kind} | {c['wall_ms']:.2f} | {c['caller_cpu_ms']:.2f} | {c['actor_cpu_ms']:.2f} |"
                  for kind, c in micro["call_cost"].items()]
        lines.append("")
    return lines


def run_all(args, models: list[str], reps: int, steps: dict, report: dict) -> None:
    """Measures into `report`: every system, or with --compare downpour's rows only."""
    skip = set(filter(None, args.skip.split(",")))
    dataset_dir = os.environ.get("DOWNPOUR_DATA")
    dataset = None if args.compare else load_dataset("fashion-mnist", None, 0)
    runs = {m: downpour_systems(dataset_dir, m, steps[m], compare=True) if args.compare
            else systems(dataset, dataset_dir, m, steps[m]) for m in models}
    report["results"] = {m: measure(runs[m], m, reps) for m in models}
    report["ratios"] = {m: ratios(m, report["results"][m]) for m in models}
    if args.compare:
        return
    if "tta" not in skip:
        report["time_to_accuracy"] = time_to_accuracy(dataset, dataset_dir, args.quick)
    if "scaling" not in skip:
        report["scaling_steps"] = 200 if args.quick else SCALING_TOTAL_STEPS
        report["scaling"] = scaling(dataset_dir, "mlp", report["scaling_steps"])
    if "micro" not in skip:
        report["micro"] = bench_micro.measure(reps=2 if args.quick else 5, pushes=200 if args.quick else 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repetition of few steps; a smoke run")
    parser.add_argument("--skip", default="", help="comma list of tta, scaling, micro")
    parser.add_argument("--compare", action="store_true",
                        help="only downpour's rows, each over ray and shm side by side, and their ratios")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for benchmarks.json/.md")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite benchmarks.md from the benchmarks.json in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render:
        write_markdown(out / "benchmarks.md", json.loads((out / "benchmarks.json").read_text()))
        return 0
    reps, steps = (1, QUICK_STEPS) if args.quick else (args.reps, STEPS)
    models = args.models.split(",")
    ray.init(address="local", include_dashboard=False, logging_level="WARNING",
             _system_config=system_config())
    report = {"command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "reps": reps,
              "mode": "compare" if args.compare else "all", "steps": {m: steps[m] for m in models}}
    run_all(args, models, reps, steps, report)
    ray.shutdown()
    report["targets"] = targets(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(out / "benchmarks.md", report)
    for model in models:
        for what, value, target in report["ratios"][model]:
            print(f"{model}: {what}: {value:.2f} (target {target})")
    for t in report["targets"]:
        print(f"target: {t['what']}: {fmt(t['measured'])} ({t['target']}; {'met' if t['met'] else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
