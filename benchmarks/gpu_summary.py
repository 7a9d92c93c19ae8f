"""The one JSON summary of benchmarks/gpu_check.sh, of the same shape in its GPU and CPU-smoke modes.

    python benchmarks/gpu_summary.py DEST WORK MODE STATUS SECONDS    # writes DEST/summary.json

Keys: mode, commit, device (type, name, compute capability, memory, torch), status, seconds, gpu_tests (counts),
full_schedule (the ResNet-20 run: iterations reached, final test and train error, wall time, last throughput),
benchmark (compiled / eager: bench_train.py's JSON), packing (bench_packing.py's JSON). A step that did not run is
null.
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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


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


def test_counts(log: Path) -> dict[str, int] | None:
    """pytest's closing counts ("3 passed, 20 skipped") from the GPU tests' log."""
    if not log.is_file():
        return None
    lines = [
        line for line in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected)", line)
    ]
    if not lines:
        return {}
    return {
        kind: int(count) for count, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", lines[-1])
    }


def full_schedule(history: Path) -> dict[str, Any] | None:
    if not history.is_file():
        return None
    with history.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    last = rows[-1]
    return {
        "iterations": int(last["iteration"]),
        "test_error": float(last["test_error"]),
        "train_error": float(last["train_error"]),
        "wall_s": float(last["wall_s"]),
        "images_per_s": float(last["images_per_s"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="gpu_check.sh's output folder (summary.json is written there)")
    parser.add_argument("work", type=Path, help="its work folder (bench_eager.json)")
    parser.add_argument("mode", choices=["gpu", "cpu"], help="gpu, or cpu for --cpu-smoke")
    parser.add_argument("status", type=int, help="the script's exit status")
    parser.add_argument("seconds", type=int, help="the script's wall time")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dest, work, mode, status, seconds = args.dest, args.work, args.mode, args.status, args.seconds
    if not dest.is_dir():
        sys.exit(f"error: {dest} is not a folder (the output folder of gpu_check.sh)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "mode": mode,
        "commit": commit or "unknown",
        "device": device(),
        "status": status,
        "seconds": seconds,
        "gpu_tests": test_counts(dest / "gpu_tests.log"),
        "full_schedule": full_schedule(dest / "history.csv"),
        "benchmark": {"compiled": read_json(dest / "bench.json"), "eager": read_json(work / "bench_eager.json")},
        "packing": read_json(dest / "packing.json"),
    }
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {dest / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
