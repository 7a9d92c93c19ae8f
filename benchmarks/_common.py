"""What the training benchmarks share: the environment record, synthetic CIFAR-shaped data, the project trainer's
own step, interleaved timing windows, thread passes and the common options. The one place the benchmarks import
resnet_repro's internals (bench_train.py, bench_compile.py, bench_profile.py import them from here)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

from _stopping import Stopped, ignore_stop_signals, stop_deferred, stop_on_sigterm  # noqa: E402

from resnet_repro.catalog import CATALOG  # noqa: E402
from resnet_repro.models import build_model  # noqa: E402
from resnet_repro.prepared import PreparedData  # noqa: E402
from resnet_repro.runtime import Runtime, choose_runtime, cpu_has_fast_bf16, pick_device  # noqa: E402
from resnet_repro.settings import TrainSettings, resolve_settings  # noqa: E402
from resnet_repro.train import StepRunner, build_training  # noqa: E402

# re-exported for the benchmarks
__all__ = ["Stopped", "TrainSettings", "build_model", "choose_runtime", "ignore_stop_signals", "stop_deferred"]

CIFAR_TRAIN_IMAGES = 50_000

PAPER_ITERATIONS = 64_000

TORCH_DEFAULT_THREADS = torch.get_num_threads()  # "all": all cores, unless OMP_NUM_THREADS says otherwise


# ------------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}"}
        info["multiprocessors"] = props.multi_processor_count
    return info


def synthetic_arrays(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-shaped uint8 images NCHW and labels; throughput does not depend on what the pixels show."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    return train, rng.integers(0, 10, n_train), test, rng.integers(0, 10, n_test)


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def model_depth(name: str) -> int:
    """The model's layer count, from its catalogue entry (20 where it has none): how measuring time scales."""
    depth = CATALOG[name].depth
    return depth if depth is not None else 20


def short_runtime(runtime: Runtime) -> str:
    return (
        f"{'bf16' if runtime.bf16 else 'fp32'} {'CL' if runtime.channels_last else 'NCHW'} "
        f"{runtime.compile_mode if runtime.compile else 'eager'}"
    )


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------------------------ the project
class ProjectTrainer:
    """The trainer's own step function on device-resident data (no copy of its loop)."""

    def __init__(self, model_name: str, settings: TrainSettings, prepared: PreparedData, device: torch.device) -> None:
        model, optimizer, data, self.runtime = build_training(model_name, settings, prepared, device, seed=0)
        model.train()
        self.settings = settings
        self.stepper = StepRunner(model, optimizer, data, self.runtime, seed=0, batch=settings.batch_size)
        self.iteration = 0

    def steps(self, count: int) -> None:
        losses = self.stepper.run(self.iteration, count, self.settings.lr_at)
        self.iteration += count
        if not torch.isfinite(losses).all():  # also the one sync per window, like the trainer's periodic check
            raise RuntimeError("non-finite loss in the project trainer")

    def data_only(self, count: int) -> None:
        for _ in range(count):
            x, _ = self.stepper.batch_at(self.iteration)
            self.iteration += 1
        sync(x.device)


# ---------------------------------------------------------------------------------------------- measurement
def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    contenders: dict[str, tuple[Callable[[int], None], Callable[[], None] | None]],
    images_per_step: int,
    device: torch.device,
    rounds: int,
    window_s: float,
    warm_steps: dict[str, int],
) -> dict[str, Any]:
    """Warm each contender up, size its window to about `window_s`, then time `rounds` rounds of windows in ABBA
    order. Returns per-contender images/s per round, the first step's time, and the paired ratios."""
    steps: dict[str, int] = {}
    first: dict[str, float] = {}
    for name, (run, _) in contenders.items():
        first[name] = timed(lambda run=run: run(1), device)
        for _ in range(max(0, warm_steps.get(name, 1) - 1)):
            timed(lambda run=run: run(1), device)
        per_step = timed(lambda run=run: run(1), device)
        steps[name] = max(1, round(window_s / max(per_step, 1e-6)))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            run, before = contenders[name]
            if before is not None:
                before()
            seconds = timed(lambda run=run, name=name: run(steps[name]), device)
            rates[name].append(steps[name] * images_per_step / seconds)
    return {"rates": rates, "steps_per_window": steps, "first_step_s": first}


def summarize(result: dict[str, Any], base: str, other: str) -> dict[str, Any]:
    rates = result["rates"]
    ratios = [b / a for a, b in zip(rates[base], rates[other], strict=True)]
    return {
        base: statistics.median(rates[base]),
        other: statistics.median(rates[other]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "raw": rates,
        "steps_per_window": result["steps_per_window"],
        "first_step_s": result["first_step_s"],
    }


# ------------------------------------------------------------------------------------- options and set-up
def parse_threads(spec: str) -> list[int]:
    """'1,all' -> [1, torch's default]; duplicates dropped, order kept."""
    counts: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        count = TORCH_DEFAULT_THREADS if part == "all" else int(part)
        if count < 1:
            raise SystemExit(f"--threads: {part!r} is not a positive thread count")
        if count not in counts:
            counts.append(count)
    if not counts:
        raise SystemExit("--threads: no thread count given")
    return counts


def set_threads(threads: int) -> None:
    """One pass's thread count. Inductor's CPU kernels specialize on the thread count and dynamo does not guard on
    it, so nothing compiled under another count may be reused."""
    torch.set_num_threads(threads)
    torch._dynamo.reset()


def base_parser(doc: str, default_models: str, windows: bool = True) -> argparse.ArgumentParser:
    """The options every training benchmark takes (windows: the interleaved-window ones, --rounds and --window)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--models", default=None, help=f"comma-separated (default {default_models}; quick resnet20)")
    parser.add_argument("--quick", action="store_true", help="a few seconds per model: a smoke test, not a number")
    parser.add_argument("--schedule", default="cifar_paper", help="schedule whose settings the project trainer uses")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a project setting")
    if windows:
        parser.add_argument("--rounds", type=int, help="interleaved rounds per model (default 5, quick 2)")
        parser.add_argument("--window", type=float, help="seconds per timed window (default 2 on CPU, 1.5 on CUDA)")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts, one pass each; 'all' is torch's default "
        f"({TORCH_DEFAULT_THREADS} here)",
    )
    parser.add_argument("--train-images", type=int, help="synthetic training images (default 50000, quick 2560)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser


@dataclass
class Bench:
    """One benchmark's set-up: where it runs, what it measures, on which data, and the results it fills."""

    device: torch.device
    threads: list[int]
    models: list[str]
    rounds: int
    window: float
    settings: TrainSettings
    prepared: PreparedData
    results: dict[str, Any]
    started: float

    def parts(self) -> tuple[dict[str, Any], list[str], list[int], TrainSettings, PreparedData, torch.device]:
        """What every tool's measuring function works with: results to fill, models, thread passes, settings,
        data and device."""
        return self.results, self.models, self.threads, self.settings, self.prepared, self.device


def setup(args: argparse.Namespace, default_models: str, default_threads: str) -> Bench:
    """Device, thread passes, models, settings and synthetic data from the common options; prints the set-up line."""
    import yaml

    started = time.monotonic()
    stop_on_sigterm()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    threads = parse_threads(args.threads or ("all" if cuda else default_threads))
    set_threads(threads[0])
    models = (args.models or ("resnet20" if args.quick else default_models)).split(",")
    unknown = [name for name in models if name not in CATALOG]
    if unknown:
        raise SystemExit(f"--models: unknown model {', '.join(unknown)} (see `resnet-repro models`)")
    rounds = getattr(args, "rounds", None) or (2 if args.quick else 5)
    window = getattr(args, "window", None) or (0.5 if args.quick else (1.5 if cuda else 2.0))
    n_train = args.train_images or (2560 if args.quick else CIFAR_TRAIN_IMAGES)
    overrides = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        overrides[key] = yaml.safe_load(value)
    settings = resolve_settings(args.schedule, overrides)
    batch = settings.batch_size

    train_x, train_y, test_x, test_y = synthetic_arrays(n_train, max(batch, n_train // 5))
    prepared = PreparedData(
        train_x,
        train_y,
        test_x,
        test_y,
        {
            "name": "synthetic-cifar",
            "classes": [str(i) for i in range(10)],
            "num_classes": 10,
            "channels": 3,
            "image_size": 32,
            "augment": {"pad": 4, "flip": True},
            "sha256": "synthetic",
        },
    )
    info = environment(device)
    info["threads_measured"] = threads
    info["torch_default_threads"] = TORCH_DEFAULT_THREADS
    results: dict[str, Any] = {
        "environment": info,
        "settings": {
            "schedule": args.schedule,
            "overrides": overrides,
            "project_settings": settings.to_dict(),
            "batch": batch,
            "rounds": rounds,
            "window_s": window,
            "train_images": n_train,
            "quick": args.quick,
        },
    }
    print(
        f"# {info['device_name']} ({device}), torch {info['torch']}, threads {threads} "
        f"({info['cpu_count']} CPUs, load {info['load_average_start']}), batch {batch}, schedule {args.schedule}, "
        f"{n_train} synthetic train images",
        flush=True,
    )
    return Bench(device, threads, models, rounds, window, settings, prepared, results, started)


def write_json(results: dict[str, Any], path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
