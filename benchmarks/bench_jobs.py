"""Whole-machine throughput on CPU: how to split the cores between training jobs, measured on a slice of the short
real-data experiment.

Every run of the experiment (its models x seeds, as config.yaml lists them) trains for the first `--iterations`
iterations of its schedule, with its evaluations, as `resnet-repro train` processes. Each split ("jobs x threads":
that many processes at a time, each with OMP_NUM_THREADS threads, taking the runs in config order as Snakemake's
scheduler does) is timed by wall clock. The splits run one after another in one invocation, so they see the same
machine. A slice keeps the experiment's mix of models, evaluations and per-run start-up, but the start-up weighs
more in it than in the whole runs.

    python benchmarks/bench_jobs.py --data data/prepared/cifar10_jpeg [--experiment cifar10_short]
                                    [--iterations 200] [--splits 1x2,2x1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

from resnet_repro.plan import load_plan  # noqa: E402


def parse_splits(text: str) -> list[tuple[int, int]]:
    """'1x2,2x1' -> [(1, 2), (2, 1)]: (jobs at a time, threads per job)."""
    splits = []
    for part in text.split(","):
        jobs, threads = part.lower().split("x")
        splits.append((int(jobs), int(threads)))
    return splits


def train_command(run, data: Path, out: Path, iterations: int) -> list[str]:
    settings = run.settings
    return [
        str(Path(sys.executable).parent / "resnet-repro"),
        "train",
        "--model", run.model,
        "--seed", str(run.seed),
        "--schedule", run.schedule,
        "--set", f"iterations={iterations}",
        "--set", f"eval_every={min(settings.eval_every, iterations)}",
        "--set", "milestones=[]",
        "--data", str(data),
        "--out", str(out),
    ]  # fmt: skip


def time_split(runs: list, data: Path, iterations: int, jobs: int, threads: int, scratch: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    per_run: dict[str, float] = {}

    def one(run) -> None:
        out = scratch / f"{jobs}x{threads}" / run.key
        start = time.perf_counter()
        done = subprocess.run(train_command(run, data, out, iterations), env=env, capture_output=True, text=True)
        if done.returncode != 0:  # the trainer's own one-line error, not a traceback of this script
            raise SystemExit(f"error: training {run.key} failed: {done.stderr.strip().splitlines()[-1:]}")
        per_run[run.key] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, runs))
    return {"jobs": jobs, "threads": threads, "wall_s": time.perf_counter() - start, "runs_s": per_run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the experiment's prepared dataset folder")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--experiment", default="cifar10_short")
    parser.add_argument("--iterations", type=int, default=200, help="iterations of each run's slice")
    parser.add_argument("--splits", default="1x2,2x1", help="jobs x threads, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    if not (args.data / "meta.json").is_file():
        parser.error(f"--data {args.data}: not a prepared dataset (run `resnet-repro prepare` first)")
    plan = load_plan(args.config)
    if args.experiment not in plan.experiments:
        parser.error(f"--experiment {args.experiment!r} is not an enabled experiment of {args.config}")
    runs = plan.experiments[args.experiment]
    full = sum(run.settings.iterations for run in runs)
    sliced = args.iterations * len(runs)
    print(
        f"{args.experiment}: {len(runs)} runs, a slice of {args.iterations} iterations each "
        f"({sliced} of {full} iterations, 1/{full / sliced:.1f}); {os.cpu_count()} cores"
    )
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for jobs, threads in parse_splits(args.splits):
            result = time_split(runs, args.data, args.iterations, jobs, threads, Path(folder))
            results.append(result)
            print(f"  {jobs} job(s) x {threads} thread(s): {result['wall_s']:.0f} s", flush=True)
    best = min(results, key=lambda r: r["wall_s"])
    for result in results:
        result["relative_to_best"] = result["wall_s"] / best["wall_s"]
    print("\n| jobs at a time x threads each | wall time of the slice | vs the fastest |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['jobs']} x {r['threads']} | {r['wall_s']:.0f} s | {r['relative_to_best']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"experiment": args.experiment, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
