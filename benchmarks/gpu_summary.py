"""What each part of benchmarks/gpu_check.sh came to, as one line each and one JSON, the same in GPU and CPU modes.

    python benchmarks/gpu_summary.py --json OUT/summary.json --parts WORK/parts.tsv ...   # gpu_check.sh calls it

gpu_check.sh records each part's state (completed, stopped by the budget, failed, not run) in the parts file; this
reads what the part left behind and says what it came to. A part stopped by the budget is "stopped at N of M" (the
full schedule's iteration from its checkpoint, the rounds, models or tests done), never a result and never a
failure: only a completed full-schedule run has a `final` test error.

Keys of the JSON: mode, commit, device (type, name, compute capability, memory, torch), status, seconds, budget_s,
parts (in the order run: part, state, exit, seconds, limit_s, note, report), full_schedule (state, iterations_done,
iterations_planned, final), packing (bench_packing.py's JSON), benchmark (compiled, eager: bench_train.py's JSON),
gpu_tests (pytest's counts and the number selected). What did not run is null.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# The states gpu_check.sh records for a part.
STATES = ("completed", "stopped", "failed", "not run")
FULL_SCHEDULE, PACKING, BENCHMARK, BENCHMARK_EAGER, GPU_TESTS = (
    "full schedule",
    "packing",
    "benchmark",
    "benchmark, eager",
    "gpu tests",
)
PYTEST_OUTCOMES = ("passed", "failed", "skipped", "deselected", "error", "errors", "xfailed", "xpassed")


def read_json(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def git_commit() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no git on the machine, or a stuck one
        return "unknown"
    return found.stdout.strip() or "unknown"


def device() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__,
        }
    return {"type": "cpu", "name": "cpu", "capability": None, "memory_gib": None, "torch": torch.__version__}


def read_parts(path: Path) -> list[dict[str, Any]]:
    """gpu_check.sh's record: one tab-separated line per part (part, state, exit, seconds, limit, note)."""
    parts = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, state, code, seconds, limit, note = line.split("\t")
        if state not in STATES:
            raise SystemExit(f"error: {path}: unknown state {state!r} for {name}")
        parts.append(
            {"part": name, "state": state, "exit": int(code), "seconds": int(seconds), "limit_s": int(limit)}
            | {"note": note}
        )
    return parts


def checkpoint_iteration(path: Path) -> int | None:
    """The iteration a stopped run saved its checkpoint at."""
    if not path.is_file():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["iteration"])


def full_schedule(state: str, history: Path, checkpoint: Path, planned: int) -> dict[str, Any]:
    rows: list[dict[str, str]] = []
    if history.is_file():
        with history.open() as handle:
            rows = list(csv.DictReader(handle))
    done = checkpoint_iteration(checkpoint)
    if done is None:
        done = int(rows[-1]["iteration"]) if rows else 0
    summary: dict[str, Any] = {"state": state, "iterations_done": done, "iterations_planned": planned}
    if state == "completed" and rows and done == planned:  # the only case with a final test error
        last = rows[-1]
        summary["final"] = {
            "test_error": float(last["test_error"]),
            "test_loss": float(last["test_loss"]),
            "train_error": float(last["train_error"]),
            "wall_s": float(last["wall_s"]),
            "images_per_s": float(last["images_per_s"]),
            "evaluations": len(rows),
        }
    return summary


def test_counts(log: Path) -> dict[str, int] | None:
    """pytest's closing counts ("3 passed, 20 skipped") and how many tests were selected, from its log."""
    if not log.is_file():
        return None
    text = log.read_text()
    counts: dict[str, int] = {}
    outcome = "|".join(PYTEST_OUTCOMES)
    closing = [line for line in text.splitlines() if re.search(rf"\d+ ({outcome})\b", line)]
    if closing:
        counts = {kind: int(count) for count, kind in re.findall(rf"(\d+) ({outcome})\b", closing[-1])}
    collected = re.search(r"collected (\d+) items?(?: / (\d+) deselected)?(?: / (\d+) selected)?", text)
    if collected:
        total, deselected, selected = (int(group) if group else None for group in collected.groups())
        counts["selected"] = selected if selected is not None else total - (deselected or 0)
    return counts


def stopped_note(part: dict[str, Any], done: int | None, planned: int | None, unit: str) -> str:
    where = f"at {done} of {planned} {unit}" if done is not None else f"before any of its {unit} were counted"
    return f"stopped {where} by the budget (its limit {part['limit_s']} s): not a result"


def report(part: dict[str, Any], summary: dict[str, Any]) -> str:
    """The one line that says what a part came to."""
    name, state = part["part"], part["state"]
    if state == "not run":
        return f"{name}: not run ({part['note']})"
    if state == "failed":
        return f"{name}: FAILED with exit status {part['exit']} after {part['seconds']} s ({part['note']})"
    if name == FULL_SCHEDULE:
        run = summary["full_schedule"]
        if state == "stopped":
            return f"{name}: {stopped_note(part, run['iterations_done'], run['iterations_planned'], 'iterations')}"
        final = run.get("final")
        if final is None:
            return f"{name}: ended without its last evaluation ({run['iterations_done']} iterations): not a result"
        return (
            f"{name}: final test error {final['test_error']:.4f} (test loss {final['test_loss']:.4f}) after "
            f"{run['iterations_done']} of {run['iterations_planned']} iterations; {part['seconds']} s including "
            f"start-up, any compile and {final['evaluations']} evaluations; last interval "
            f"{final['images_per_s']:.0f} img/s"
        )
    if name == PACKING:
        rounds = (summary["packing"] or {}).get("rounds", [])
        measured = [entry for entry in rounds if "aggregate_images_per_s" in entry]
        if state == "stopped":
            return f"{name}: {stopped_note(part, len(measured), len(rounds) or None, 'rounds')}"
        figures = "; ".join(
            f"{entry['runs']} x {entry['aggregate_images_per_s']:.0f} img/s ({entry.get('ratio_to_one_run', '-')}x)"
            for entry in measured
        )
        return f"{name}: {len(measured)} of {len(rounds)} rounds: {figures or 'none measured'}"
    if name in (BENCHMARK, BENCHMARK_EAGER):
        result = summary["benchmark"]["eager" if name == BENCHMARK_EAGER else "compiled"] or {}
        stop = result.get("stopped")
        if state == "stopped" or stop:
            done, planned = (stop["models_measured"], stop["models_planned"]) if stop else (None, None)
            return f"{name}: {stopped_note(part, done, planned, 'model measurements')}"
        models = result.get("models", {})
        figures = "; ".join(f"{model} {row['ratio']:.2f}x the classic loop" for model, row in models.items())
        return f"{name}: {figures or 'no model measured'}"
    if name == GPU_TESTS:
        counts = summary["gpu_tests"] or {}
        done = sum(counts.get(kind, 0) for kind in PYTEST_OUTCOMES if kind != "deselected")
        if state == "stopped":
            return f"{name}: {stopped_note(part, done if counts else None, counts.get('selected'), 'tests')}"
        shown = ", ".join(f"{counts[kind]} {kind}" for kind in PYTEST_OUTCOMES if counts.get(kind))
        return f"{name}: {shown or 'no counts in its log'}"
    return f"{name}: {state} in {part['seconds']} s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="the summary JSON to write")
    parser.add_argument("--mode", choices=["gpu", "cpu"], required=True, help="gpu, or cpu for --cpu-smoke")
    parser.add_argument("--status", type=int, required=True, help="the script's exit status")
    parser.add_argument("--seconds", type=int, required=True, help="the script's wall time so far")
    parser.add_argument("--budget", type=int, required=True, help="the script's budget in seconds")
    parser.add_argument("--parts", type=Path, required=True, help="gpu_check.sh's record of its parts")
    parser.add_argument("--iterations", type=int, required=True, help="the full-schedule run's planned iterations")
    parser.add_argument("--history", type=Path, required=True, help="the full-schedule run's history.csv")
    parser.add_argument("--checkpoint", type=Path, required=True, help="its checkpoint.pt (while stopped)")
    parser.add_argument("--packing", type=Path, required=True, help="bench_packing.py's JSON")
    parser.add_argument("--bench", type=Path, required=True, help="bench_train.py's JSON")
    parser.add_argument("--bench-eager", type=Path, required=True, help="bench_train.py's JSON, trainer eager")
    parser.add_argument("--tests-log", type=Path, required=True, help="the GPU tests' pytest log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = read_parts(args.parts)
    state = {part["part"]: part["state"] for part in parts}
    summary: dict[str, Any] = {
        "mode": args.mode,
        "commit": git_commit(),
        "device": device(),
        "status": args.status,
        "seconds": args.seconds,
        "budget_s": args.budget,
        "parts": parts,
        "full_schedule": None,
        "packing": read_json(args.packing),
        "benchmark": {"compiled": read_json(args.bench), "eager": read_json(args.bench_eager)},
        "gpu_tests": test_counts(args.tests_log) if GPU_TESTS in state else None,
    }
    if state.get(FULL_SCHEDULE, "not run") != "not run":
        summary["full_schedule"] = full_schedule(state[FULL_SCHEDULE], args.history, args.checkpoint, args.iterations)
    for part in parts:
        part["report"] = report(part, summary)
        print(part["report"])
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
