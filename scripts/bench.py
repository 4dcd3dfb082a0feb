"""One command for every performance figure of downpour: the same model, batch size and
Fashion-MNIST batches through single-process torch (1 thread, all threads, 1 thread in 2
processes at once), DDP over gloo, the pattern of Ray's parameter-server example and downpour;
medians and spread over repetitions that interleave the systems, ratios against the targets,
downpour's per-step overhead, time to a target test accuracy, scaling with replicas and shards,
and the shard micro-benchmarks. Writes docs/benchmarks.json and docs/benchmarks.md.

    python scripts/bench.py [--models mlp,cnn] [--reps 3] [--quick] [--skip tta,scaling,micro]
    python scripts/bench.py --render     # rewrite docs/benchmarks.md from docs/benchmarks.json

Needs Fashion-MNIST (DOWNPOUR_DATA or the usual lookup). Absolute rates drift between runs on
shared machines; the ratios, measured side by side in one run, are what to compare.
"""

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    return summary


def downpour(dataset_dir, model: str, replicas: int, shards: int, steps: int, every: int = 1) -> dict:
    """samples/s, and per replica step: milliseconds in forward/backward and everything else."""
    summary = downpour_run(dataset_dir, model, replicas, shards, steps=steps, n_fetch=every, n_push=every)
    stats = summary["replica_stats"]
    elapsed = sum(r["t_last"] - r["t_first"] for r in stats)
    compute, done = sum(r["compute_s"] for r in stats), sum(r["steps"] for r in stats)
    return {"samples_per_s": summary["samples_per_s"], "compute_ms": 1e3 * compute / done,
            "overhead_ms": 1e3 * (elapsed - compute) / done}


def systems(dataset, dataset_dir: str, model: str, steps: int) -> dict:
    """name -> a function measuring once. Steps are per worker for the parallel ones."""
    cores = os.cpu_count() or 1
    rate = lambda fn: lambda: {"samples_per_s": fn()}  # noqa: E731
    return {
        "torch 1 thread": rate(lambda: baselines.single_process(dataset, model, BATCH, steps, 1)),
        f"torch {cores} threads": rate(lambda: baselines.single_process(dataset, model, BATCH, steps, cores)),
        "torch 1 thread, 2 processes at once": rate(
            lambda: baselines.concurrent_single(dataset, model, BATCH, steps, 2)),
        "DDP gloo 2x1": rate(lambda: baselines.ddp(dataset, model, BATCH, steps, 2)),
        "Ray PS example, 2 workers": rate(
            lambda: baselines.ray_ps_example(dataset, model, BATCH, 2 * steps, 2)),
        "downpour 2x2": lambda: downpour(dataset_dir, model, 2, 2, steps),
        f"downpour 2x2, every {COMM_EVERY} steps": lambda: downpour(dataset_dir, model, 2, 2, steps, COMM_EVERY),
        "downpour 4x2": lambda: downpour(dataset_dir, model, 4, 2, steps // 2),
    }


def measure(model: str, reps: int, steps: int, dataset, dataset_dir: str) -> dict:
    runs = systems(dataset, dataset_dir, model, steps)
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
    """(what, ratio, target) for the issue's throughput targets, for both downpour settings."""
    m = {k: v["samples_per_s"]["median"] for k, v in result.items()}
    cores = os.cpu_count() or 1
    rows = []
    for dp in ("downpour 2x2", f"downpour 2x2, every {COMM_EVERY} steps"):
        if model == "cnn":
            rows += [(f"{dp} / DDP gloo 2x1", m[dp] / m["DDP gloo 2x1"], ">= 1.25"),
                     (f"{dp} / (2 x torch 1 thread)", m[dp] / (2 * m["torch 1 thread"]), ">= 0.95")]
        if model == "mlp":
            rows += [(f"{dp} / Ray PS example", m[dp] / m["Ray PS example, 2 workers"], ">= 3"),
                     (f"{dp} / torch {cores} threads", m[dp] / m[f"torch {cores} threads"], ">= 0.7")]
    return rows


# ---- time to a test accuracy -----------------------------------------------------------------

def time_to_accuracy(dataset, dataset_dir: str, quick: bool) -> dict:
    """CNN: single-process torch on all threads against downpour with 4 replicas and the inverse
    rule; seconds of training until the first evaluation at or above TARGET_ACCURACY."""
    cores = os.cpu_count() or 1
    epochs, every = (0.5, 0.25) if quick else (3, 0.25)
    rows = {f"torch {cores} threads": baselines.time_to_accuracy(
        dataset, "cnn", BATCH, cores, TARGET_ACCURACY, max_epochs=epochs + 1, eval_every=every)}
    for name, n in (("downpour 4x2, inverse", 1), (f"downpour 4x2, inverse, every {COMM_EVERY} steps",
                                                     COMM_EVERY)):
        summary = downpour_run(dataset_dir, "cnn", 4, 2, epochs=epochs, lr_rule="inverse",
                               eval_every=every, n_fetch=n, n_push=n, event_log=True)  # for τ
        start = min(r["t_first"] for r in summary["replica_stats"])
        reached = [e for e in summary["evaluations"] if e["accuracy"] >= TARGET_ACCURACY]
        rows[name] = {"seconds": reached[0]["pulled_at"] - start if reached else None,
                      "epochs": reached[0]["epochs"] if reached else epochs,
                      "accuracy": (reached[0] if reached else summary["evaluations"][-1])["accuracy"],
                      "final_accuracy": summary["test_accuracy"], "samples_per_s": summary["samples_per_s"],
                      "tau_p50": summary["staleness"]["p50"]}
    for name, row in rows.items():
        print(f"time to {TARGET_ACCURACY}: {name:45s} {row}", flush=True)
    return rows


# ---- scaling with replicas and shards --------------------------------------------------------

def scaling(dataset_dir: str, model: str, total_steps: int) -> list[dict]:
    """One run per (replicas, shards); the replicas share `total_steps` steps, so each run does
    the same work."""
    rows = []
    for replicas in SCALING_REPLICAS:
        for shards in SCALING_SHARDS:
            result = downpour(dataset_dir, model, replicas, shards, total_steps // replicas)
            rows.append({"replicas": replicas, "shards": shards, **result})
            print(f"scaling {model}: {replicas} replicas x {shards} shards "
                  f"{result['samples_per_s']:9.1f} samples/s", flush=True)
    return rows


# ---- the report ------------------------------------------------------------------------------

def machine() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "platform": platform.platform()}


def write_markdown(path: Path, report: dict) -> None:
    lines = ["# Benchmarks", "",
             f"Written by `{report['command']}` on {report['date']}; every figure below comes from "
             "that one run.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + ".", "",
             f"Batch {BATCH} everywhere; Adam (fused) at 0.003; the same model and Fashion-MNIST "
             "batches. Rates are samples/s over the timed steps (start-up excluded), median "
             f"[min, max] of {report['reps']} repetitions that interleave the systems. "
             f"`downpour RxS` is R replicas and S shards; `every {COMM_EVERY} steps` sets "
             f"n_fetch = n_push = {COMM_EVERY}. Per step: a downpour replica's milliseconds in "
             "forward/backward, and in everything else (fetch, push, waiting, batch).", ""]
    for model, result in report["results"].items():
        lines += [f"## {model.upper()}, {report['steps'][model]} steps per worker", "",
                  "| system | samples/s | range | compute ms/step | other ms/step |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in result.items():
            rate = r["samples_per_s"]
            per_step = (f"{r['compute_ms']['median']:.2f} | {r['overhead_ms']['median']:.2f}"
                        if "compute_ms" in r else "|")
            span = f"{rate['min']:.0f} to {rate['max']:.0f}"
            lines.append(f"| {name} | {rate['median']:.0f} | {span} | {per_step} |")
        lines += ["", "| ratio | measured | target |", "| --- | --- | --- |"]
        lines += [f"| {what} | {value:.2f} | {target} |" for what, value, target in report["ratios"][model]]
        lines.append("")
    if report.get("time_to_accuracy"):
        rows = report["time_to_accuracy"]
        base = next(iter(rows.values()))["seconds"]
        lines += [f"## Time to {TARGET_ACCURACY:.2f} test accuracy, CNN", "",
                  "Seconds of training until the first evaluation (every 0.25 epoch, whole test "
                  "set) at or above the target; torch's clock stops while it evaluates, "
                  "downpour's evaluations run beside training and take CPU from it.", "",
                  "| system | seconds | epochs | accuracy then | / torch (target <= 1.0) | whole run |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, r in rows.items():
            seconds = "not reached" if r["seconds"] is None else f"{r['seconds']:.0f}"
            ratio = f"{r['seconds'] / base:.2f}" if r["seconds"] and base else "-"
            run = (f"final accuracy {r['final_accuracy']:.4f}, {r['samples_per_s']:.0f} samples/s"
                   if "final_accuracy" in r else "")
            run += f", τ p50 {r['tau_p50']}" if r.get("tau_p50") is not None else ""
            lines.append(f"| {name} | {seconds} | {r['epochs']:.2f} | {r['accuracy']:.4f} | {ratio} | {run} |")
        lines.append("")
    if report.get("scaling"):
        lines += [f"## Scaling, MLP, {report['scaling_steps']} steps shared by the replicas (one run "
                  "each; samples/s)", "",
                  "| replicas | " + " | ".join(f"{s} shards" for s in SCALING_SHARDS) + " |",
                  "| --- |" + " --- |" * len(SCALING_SHARDS)]
        for replicas in SCALING_REPLICAS:
            cells = [f"{r['samples_per_s']:.0f}" for r in report["scaling"] if r["replicas"] == replicas]
            lines.append(f"| {replicas} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("micro"):
        micro = report["micro"]
        lines += ["## One shard", "",
                  "Pull then push of n floats, both awaited, from the driver (bytes of both "
                  "directions over the time), against numpy memcpy of n floats in the same run.", "",
                  "| floats | pull+push GB/s | memcpy GB/s | ratio (target >= 0.3 at 10M) |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['floats']:,} | {r['pull_push_GBps']:.3f} | {r['memcpy_GBps']:.2f} | {r['ratio']:.3f} |"
                  for r in micro["bandwidth"]]
        lines += ["", f"Pushes of 100K floats sent without waiting, as replicas do: one shard applied "
                  f"**{micro['pushes_per_s_100k']:.0f} per second** from the driver (target >= 1000)"]
        from_actors = micro.get("pushes_per_s_100k_from_actors", {})
        lines[-1] += "".join(f", {rate:.0f} from {clients} actors at once"
                             for clients, rate in from_actors.items()) + ".\n"
        if micro.get("call_cost"):
            lines += ["What one awaited Ray actor call costs here, from the driver (averages over 300 "
                      "calls of each kind):", "",
                      "| call | wall ms | caller CPU ms | actor CPU ms |", "| --- | --- | --- | --- |"]
            lines += [f"| {kind} | {c['wall_ms']:.2f} | {c['caller_cpu_ms']:.2f} | {c['actor_cpu_ms']:.2f} |"
                      for kind, c in micro["call_cost"].items()]
            lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repetition of few steps; a smoke run")
    parser.add_argument("--skip", default="", help="comma list of tta, scaling, micro")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for benchmarks.json/.md")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite benchmarks.md from the benchmarks.json in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render:
        write_markdown(out / "benchmarks.md", json.loads((out / "benchmarks.json").read_text()))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    reps, steps = (1, QUICK_STEPS) if args.quick else (args.reps, STEPS)
    dataset = load_dataset("fashion-mnist", None, 0)
    dataset_dir = os.environ.get("DOWNPOUR_DATA")
    ray.init(address="local", include_dashboard=False, logging_level="WARNING",
             _system_config=system_config())
    models = args.models.split(",")
    report = {"command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "reps": reps,
              "steps": {m: steps[m] for m in models}}
    report["results"] = {m: measure(m, reps, steps[m], dataset, dataset_dir) for m in models}
    report["ratios"] = {m: ratios(m, report["results"][m]) for m in models}
    if "tta" not in skip:
        report["time_to_accuracy"] = time_to_accuracy(dataset, dataset_dir, args.quick)
    if "scaling" not in skip:
        report["scaling_steps"] = 200 if args.quick else SCALING_TOTAL_STEPS
        report["scaling"] = scaling(dataset_dir, "mlp", report["scaling_steps"])
    if "micro" not in skip:
        report["micro"] = bench_micro.measure(reps=2 if args.quick else 5, pushes=200 if args.quick else 1000)
    ray.shutdown()
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(out / "benchmarks.md", report)
    for model in models:
        for what, value, target in report["ratios"][model]:
            print(f"{model}: {what}: {value:.2f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
