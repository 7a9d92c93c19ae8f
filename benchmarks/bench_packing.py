"""Packed throughput: N small training runs sharing one GPU (`gpu_runs_per_device: N`), for N = 1, 2, 4, 8.

Each N starts N real `resnet-repro train` processes of one model at once, each in a GPU slot of its own
(RESNET_REPRO_GPU_RUNS_PER_DEVICE=N on a machine whose GPUs nvidia-smi lists), and reads every run's own
throughput from its history.csv (the last interval: start-up and data loading excluded). The aggregate, and its
ratio to N = 1, is what packing buys. With --device cpu (the smoke mode of benchmarks/gpu_check.sh) the runs share
the CPU instead: the shape of the result, not a number. On SIGTERM (e.g. from `timeout`) the round in progress is
stopped, its runs end with a checkpoint, and the rounds measured so far are still printed and written.

    python benchmarks/bench_packing.py --data data/prepared/cifar10_jpeg --runs 1,2,4,8 --json packing.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stopping import Stopped, stop_on_sigterm

REPO = Path(__file__).resolve().parents[1]
# Seconds a stopped round's runs get to save their checkpoint and exit before they are killed.
STOP_GRACE_S = 10


def packed_round(count: int, args: argparse.Namespace, work: Path) -> dict:
    """`count` concurrent runs; their throughputs from their own history.csv, and the round's wall time."""
    env = {**os.environ, "RESNET_REPRO_GPU_RUNS_PER_DEVICE": str(count), "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "resnet_repro.cli", "train", "--model", args.model, "--data", str(args.data)]
    command += ["--schedule", "cifar_paper", "--device", args.device, "--set", f"iterations={args.iterations}"]
    command += ["--set", f"eval_every={args.iterations // 2}", "--set", "milestones=[]", "--set", "compile=off"]
    began = time.monotonic()
    runs: list[subprocess.Popen] = []
    try:
        for k in range(count):
            with (work / f"n{count}-run{k}.log").open("w") as log:
                runs.append(
                    subprocess.Popen(
                        [*command, "--seed", str(k), "--out", str(work / f"n{count}" / f"run{k}")],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        codes = [run.wait() for run in runs]
    except Stopped:
        end_runs(runs)
        raise
    wall = time.monotonic() - began
    rates = []
    for k, code in enumerate(codes):
        history = work / f"n{count}" / f"run{k}" / "history.csv"
        if code != 0 or not history.is_file():
            log = (work / f"n{count}-run{k}.log").read_text().strip().splitlines()
            return {"runs": count, "failed": f"run {k} exited {code}: {log[-1] if log else 'no output'}"}
        with history.open() as handle:
            rates.append(float(list(csv.DictReader(handle))[-1]["images_per_s"]))
    return {"runs": count, "images_per_s": rates, "aggregate_images_per_s": round(sum(rates), 1), "wall_s": wall}


def end_runs(runs: list[subprocess.Popen]) -> None:
    """The runs of a stopped round: SIGTERM (each saves a checkpoint and exits), SIGKILL after STOP_GRACE_S."""
    for run in runs:
        if run.poll() is None:
            run.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for run in runs:
        try:
            run.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def measure_rounds(counts: list[int], args: argparse.Namespace) -> tuple[list[dict], dict | None]:
    """One round per count, while the budget lasts; what was measured, and how a SIGTERM stopped it (or None)."""
    started, rounds = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as work:
        try:
            for count in counts:
                if time.monotonic() - started > args.budget:
                    rounds.append({"runs": count, "skipped": "out of budget"})
                    continue
                print(f"# round of {count} concurrent run{'s' if count > 1 else ''}: started", flush=True)
                rounds.append(packed_round(count, args, Path(work)))
                print(json.dumps(rounds[-1]), flush=True)
        except Stopped as stop:
            measured = sum("aggregate_images_per_s" in entry for entry in rounds)
            left = counts[len(rounds) :]  # the round in progress, then those never started
            rounds += [{"runs": count, "stopped": str(stop)} for count in left[:1]]
            rounds += [{"runs": count, "skipped": "stopped before it"} for count in left[1:]]
            return rounds, {"signal": str(stop), "rounds_measured": measured, "rounds_planned": len(counts)}
    return rounds, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a prepared CIFAR dataset folder")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--runs", default="1,2,4,8", help="comma-separated runs per GPU (default 1,2,4,8)")
    parser.add_argument("--iterations", type=int, default=400, help="iterations per run (default 400)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, in slots) or cpu (the smoke mode)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds: start no further round after")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not (args.data / "meta.json").is_file():
        print(f"error: {args.data} is not a prepared dataset (no meta.json)", file=sys.stderr)
        return 2
    stop_on_sigterm()
    rounds, stopped = measure_rounds([int(n) for n in args.runs.split(",")], args)
    single = next(
        (r["aggregate_images_per_s"] for r in rounds if r["runs"] == 1 and "aggregate_images_per_s" in r), None
    )
    for entry in rounds:
        if single and "aggregate_images_per_s" in entry:
            entry["ratio_to_one_run"] = round(entry["aggregate_images_per_s"] / single, 2)
    result = {"model": args.model, "device": args.device, "iterations": args.iterations, "rounds": rounds}
    if stopped:
        result["stopped"] = stopped
        print(
            f"Stopped: {stopped['signal']} at {stopped['rounds_measured']} of {stopped['rounds_planned']} rounds; "
            "the rows below are the ones completed before it"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| runs per GPU | aggregate img/s | ratio to 1 run |")
    print("|---:|---:|---:|")
    for entry in rounds:
        aggregate = entry.get("aggregate_images_per_s", entry.get("failed") or entry.get("skipped"))
        aggregate = f"stopped ({entry['stopped']})" if "stopped" in entry else aggregate
        print(f"| {entry['runs']} | {aggregate} | {entry.get('ratio_to_one_run', '-')} |")
    return 0 if all("failed" not in entry for entry in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
