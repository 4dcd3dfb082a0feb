"""One command for the throughput comparison: the same model, batch size and Fashion-MNIST batches
through single-process torch (1 thread, all threads), DDP over gloo, the pattern of Ray's
parameter-server example, and downpour; medians and spread over repetitions that interleave the
systems, ratios between them, written to docs/benchmarks.json and docs/benchmarks.md.

    python scripts/bench.py [--models mlp,cnn] [--reps 3] [--steps 300] [--quick]

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
import ray  # noqa: E402
import torch  # noqa: E402

from ps.cluster import system_config  # noqa: E402
from ps.config import TrainConfig  # noqa: E402
from replicas.data import load_dataset  # noqa: E402

BATCH = 32


def downpour(dataset_dir, model: str, replicas: int, shards: int, steps: int) -> float:
    from ps.job import train

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(model=model, replicas=replicas, shards=shards, steps=steps,
                             batch_size=BATCH, eval_every=0.0, data_dir=dataset_dir,
                             run_dir=str(Path(tmp) / "run"))
        _, summary = train(config, out=io.StringIO())
    if summary["status"] != "completed":
        raise SystemExit(f"downpour run failed: {summary['error']}")
    return summary["samples_per_s"]


def systems(dataset, dataset_dir: str, model: str, steps: int) -> dict:
    """name -> a function measuring samples/s once. Steps are per worker for the parallel ones."""
    cores = os.cpu_count() or 1
    return {
        "torch 1 thread": lambda: baselines.single_process(dataset, model, BATCH, steps, 1),
        f"torch {cores} threads": lambda: baselines.single_process(dataset, model, BATCH, steps, cores),
        "DDP gloo 2x1": lambda: baselines.ddp(dataset, model, BATCH, steps, 2),
        "Ray PS example, 2 workers": lambda: baselines.ray_ps_example(dataset, model, BATCH, 2 * steps, 2),
        "downpour 2 replicas x 2 shards": lambda: downpour(dataset_dir, model, 2, 2, steps),
        "downpour 4 replicas x 2 shards": lambda: downpour(dataset_dir, model, 4, 2, steps // 2),
    }


def measure(model: str, reps: int, steps: int, dataset, dataset_dir: str) -> dict:
    runs = systems(dataset, dataset_dir, model, steps)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # drift hits all alike
        for name in order:
            rates[name].append(runs[name]())
            print(f"{model} rep {rep} {name:32s} {rates[name][-1]:9.1f} samples/s", flush=True)
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
            for name, v in rates.items()}


def ratios(model: str, result: dict) -> list[tuple[str, float, str]]:
    """(what, ratio, target) for the issue's throughput targets this harness measures."""
    m = {k: v["median"] for k, v in result.items()}
    cores = os.cpu_count() or 1
    rows = []
    if model == "cnn":
        dp = m["downpour 2 replicas x 2 shards"]
        rows += [("downpour 2x2 / DDP gloo 2x1", dp / m["DDP gloo 2x1"], ">= 1.25"),
                 ("downpour 2x2 / (2 x torch 1 thread)", dp / (2 * m["torch 1 thread"]), ">= 0.95")]
    if model == "mlp":
        dp = m["downpour 2 replicas x 2 shards"]
        rows += [("downpour 2x2 / Ray PS example (2 workers)", dp / m["Ray PS example, 2 workers"], ">= 3"),
                 (f"downpour 2x2 / torch {cores} threads", dp / m[f"torch {cores} threads"], ">= 0.7")]
    return rows


def machine() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "platform": platform.platform()}


def write_markdown(path: Path, report: dict) -> None:
    lines = ["# Benchmarks", "",
             f"Written by `{report['command']}` on {report['date']}.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + ".", "",
             f"Batch {BATCH} everywhere; Adam; the same model and Fashion-MNIST batches. Rates are "
             "samples/s over the timed steps (start-up excluded); median [min, max] of "
             f"{report['reps']} repetitions that interleave the systems.", ""]
    for model, result in report["results"].items():
        lines += [f"## {model.upper()}", "", "| system | samples/s | range |", "| --- | --- | --- |"]
        for name, r in result.items():
            lines.append(f"| {name} | {r['median']:.0f} | {r['min']:.0f} to {r['max']:.0f} |")
        lines += ["", "| ratio | measured | target |", "| --- | --- | --- |"]
        for what, value, target in report["ratios"][model]:
            lines.append(f"| {what} | {value:.2f} | {target} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per worker")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 100 steps")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for benchmarks.json/.md")
    args = parser.parse_args()
    reps, steps = (1, 100) if args.quick else (args.reps, args.steps)
    dataset = load_dataset("fashion-mnist", None, 0)
    dataset_dir = os.environ.get("DOWNPOUR_DATA")
    ray.init(address="local", include_dashboard=False, logging_level="WARNING",
             _system_config=system_config())
    models = args.models.split(",")
    results = {model: measure(model, reps, steps, dataset, dataset_dir) for model in models}
    ray.shutdown()
    report = {"command": "python scripts/bench.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "reps": reps, "steps": steps,
              "results": results, "ratios": {m: ratios(m, results[m]) for m in models}}
    out = Path(args.out)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(out / "benchmarks.md", report)
    for model in models:
        for what, value, target in report["ratios"][model]:
            print(f"{model}: {what}: {value:.2f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
