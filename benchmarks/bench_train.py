"""Training throughput: the classic PyTorch CIFAR loop against this project's trainer, side by side.

(a) classic: a Dataset of PIL images (as torchvision's CIFAR10: uint8 arrays in memory, one PIL image per sample),
    RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader, an fp32 NCHW eager model
    and the plain SGD loop (`loss.item()` each step for the running loss, as the usual tutorials do).
(b) project: the trainer's own step (resnet_repro.train.build_training + StepRunner): data resident on the device,
    whole-batch augmentation, bf16 autocast / channels-last / torch.compile as the trainer chooses them.

Both train the same model with the same SGD settings on the same synthetic CIFAR-shaped data. The machine may be
shared and noisy, so the two are measured in interleaved windows (ABBA order) in one process, and the ratio is the
median of the per-round ratios. On CPU both are measured with 1 thread and with all cores (torch's default thread
count), one pass each, and the table has a row per (model, threads) with the projected time of the paper's 64,000
iterations. Also measured: the data pipelines alone, and (if ../shared/data holds it and not --quick) the classic
pipeline decoding real CIFAR-10 JPEGs through torchvision's ImageFolder. Also printed: the measured wall time of the
short real-data experiment, from its committed table (results/cifar10_short/tables/runs.csv).

--compile: the project trainer eager against torch.compile (choose_runtime with compile "off" / "on", all else the
same) in interleaved windows: the one-off compile time, steps/s of each, the gain, the break-even iteration count,
and the CPU_COMPILE_MIN_ITERATIONS (resnet_repro.core) it recommends.
--profile: torch.profiler over a few project-trainer steps: the top 15 ops by self CPU time (what limits the ratio).

    python benchmarks/bench_train.py [--device cpu|cuda] [--models resnet20,resnet56,resnet110] [--threads 1,all]
                                     [--quick] [--json PATH] [--compile | --profile]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))

from resnet_repro.core import Runtime, choose_runtime, cpu_has_fast_bf16, pick_device  # noqa: E402
from resnet_repro.data import PreparedData  # noqa: E402
from resnet_repro.models import build_model  # noqa: E402
from resnet_repro.settings import TrainSettings, resolve_settings  # noqa: E402
from resnet_repro.train import StepRunner, build_training  # noqa: E402

CIFAR_TRAIN_IMAGES = 50_000
PAPER_ITERATIONS = 64_000
JPEG_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SHORT_RUNS = REPO / "results" / "cifar10_short" / "tables" / "runs.csv"  # the short real-data experiment, of record
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # "all": all cores, unless OMP_NUM_THREADS says otherwise
COMPILE_WARM_STEPS = 3  # compiled steps timed as "compiling": the first traces and compiles forward and backward


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
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 20


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


# ------------------------------------------------------------------------------------------ (a) the classic loop
class ClassicCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per sample: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))
        self.targets = [int(v) for v in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def classic_transform() -> Callable:
    import torchvision.transforms as T

    return T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )


class ClassicLoader:
    """A DataLoader cycled over epochs, moving each batch to the device as the classic loop does."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch: int, workers: int, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=cuda,
            drop_last=True,
            persistent_workers=workers > 0,
        )
        self.device, self.non_blocking = device, cuda
        # Batches the workers may have queued while the other contender ran: drained untimed before each window.
        self.prefetched = workers * 2 + 1 if workers else 0
        self._iterator: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            x, y = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            x, y = next(self._iterator)
        return x.to(self.device, non_blocking=self.non_blocking), y.to(self.device, non_blocking=self.non_blocking)


class ClassicTrainer:
    def __init__(self, model_name: str, settings: TrainSettings, loader: ClassicLoader, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build_model(model_name).to(device)
        self.model.train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        self.loader, self.running_loss = loader, 0.0

    def step(self) -> None:
        inputs, targets = self.loader.next()
        outputs = self.model(inputs)
        loss = F.cross_entropy(outputs, targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.running_loss += loss.item()


# ------------------------------------------------------------------------------------------- (b) the project
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


def jpeg_pipeline_rate(
    archive: Path, batch: int, workers: int, device: torch.device, seconds: float, rounds: int
) -> dict[str, Any] | None:
    """The classic data pipeline on real CIFAR-10 JPEGs: torchvision ImageFolder, decoding every sample each epoch."""
    import torchvision

    with tempfile.TemporaryDirectory(prefix="bench-jpeg-") as scratch:
        started = time.perf_counter()
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        extract_s = time.perf_counter() - started
        roots = [p for p in Path(scratch).rglob("train") if p.is_dir()]
        if not roots:
            return None
        dataset = torchvision.datasets.ImageFolder(str(roots[0]), transform=classic_transform())
        loader = ClassicLoader(dataset, batch, workers, device)
        for _ in range(loader.prefetched + 2):
            loader.next()
        per_batch = timed(lambda: [loader.next() for _ in range(2)], device) / 2
        count = max(2, math.ceil(seconds / max(per_batch, 1e-6)))
        rates = [count * batch / timed(lambda: [loader.next() for _ in range(count)], device) for _ in range(rounds)]
        return {"images": len(dataset), "extract_s": round(extract_s, 1), "rate": statistics.median(rates)}


# -------------------------------------------------------------------------------- the short real-data experiment
def short_experiment(path: Path) -> dict[str, Any] | None:
    """The measured wall time of the short real-data experiment's runs, from its committed table (None if absent)."""
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = []
    for row in rows:
        try:
            runs.append(
                {
                    "model": row["model"],
                    "seed": row.get("seed", ""),
                    "iterations": int(row.get("iterations") or 0),
                    "wall_min": float(row["wall_min"]),
                    "images_per_s": float(row.get("images_per_s") or "nan"),
                    "threads": row.get("threads", ""),
                    "device": row.get("device", ""),
                    "runtime": row.get("runtime", ""),
                }
            )
        except (KeyError, ValueError):
            continue  # a row without a measured wall time
    return {"path": str(path), "runs": runs, "total_min": sum(run["wall_min"] for run in runs)}


def display_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def print_short_experiment(short: dict[str, Any] | None, path: Path) -> None:
    print()
    where = display_path(path)
    if short is None:
        print(f"Short real-data experiment: {where} is absent, so there is no measured wall time to report.")
        return
    runs = short["runs"]
    print(f"Short real-data experiment, measured wall time (results of record, {where}):")
    print()
    print(f"| {'model':9} | {'seed':>4} | {'iterations':>10} | {'wall min':>8} | {'img/s':>7} | {'threads':>7} |")
    print(f"|{'-' * 11}|{'-' * 6}|{'-' * 12}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for run in runs:
        print(
            f"| {run['model']:9} | {run['seed']:>4} | {run['iterations']:>10} | {run['wall_min']:8.2f} | "
            f"{run['images_per_s']:7.0f} | {run['threads']:>7} |"
        )
    threads = sorted({run["threads"] for run in runs})
    devices = sorted({run["device"] for run in runs})
    runtimes = sorted({run["runtime"] for run in runs})
    print()
    print(
        f"Total: {short['total_min']:.1f} min ({format_duration(short['total_min'] * 60)}) for {len(runs)} runs: "
        f"the sum of their wall times, i.e. the experiment's time as sequential jobs with {'/'.join(threads)} "
        f"threads each ({', '.join(devices)}; {'; '.join(runtimes)}). Jobs run side by side (train_threads below "
        "the cores) take less elapsed time than this sum."
    )


# ----------------------------------------------------------------------------------------------------- main
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument(
        "--models", default=None, help="comma-separated (default resnet20,resnet56,resnet110; --compile: 20,56)"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per model: a smoke test, not a number")
    parser.add_argument("--schedule", default="cifar_paper", help="schedule whose settings both loops use")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a project setting")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per model (default 5, quick 2)")
    parser.add_argument("--window", type=float, help="seconds per timed window (default 2 on CPU, 1.5 on CUDA)")
    parser.add_argument("--workers", type=int, help="classic DataLoader workers (default 0 on CPU, min(8, cores))")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts, one pass each; 'all' is torch's default "
        f"({TORCH_DEFAULT_THREADS} here). Default 1,all on CPU; all on CUDA and for --compile / --profile",
    )
    parser.add_argument("--train-images", type=int, help="synthetic training images (default 50000, quick 2560)")
    parser.add_argument("--jpeg", default=None, help=f"CIFAR-10 JPEG archive for the data row (default {JPEG_ARCHIVE})")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the real-JPEG data pipeline row")
    parser.add_argument("--runs-csv", type=Path, default=SHORT_RUNS, help="the short experiment's runs table")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--eager-models", default="", help="comma-separated models whose project run is not compiled (saves time)"
    )
    parser.add_argument("--budget", type=float, help="seconds: start no further model after this (checked per model)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--compile",
        action="store_true",
        help="project trainer eager vs torch.compile: compile time, gain, break-even, CPU_COMPILE_MIN_ITERATIONS",
    )
    mode.add_argument("--profile", action="store_true", help="torch.profiler: top 15 ops of project-trainer steps")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="--compile: keep inductor's on-disk cache (default: a fresh one, so the compile time is a cold start)",
    )
    return parser.parse_args(argv)


class Stopped(Exception):
    """SIGTERM (e.g. from `timeout`): stop measuring, still print what was measured."""


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def set_threads(threads: int) -> None:
    """One pass's thread count. Inductor's CPU kernels specialize on the thread count and dynamo does not guard on
    it, so nothing compiled under another count may be reused."""
    torch.set_num_threads(threads)
    torch._dynamo.reset()


def main(argv: list[str] | None = None) -> int:
    import yaml

    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    alone = args.compile or args.profile or cuda
    threads = parse_threads(args.threads or ("all" if alone else "1,all"))
    set_threads(threads[0])
    default_models = "resnet20,resnet56,resnet110"
    if args.compile:
        default_models = "resnet20,resnet56"
    models = (args.models or ("resnet20" if args.quick else default_models)).split(",")
    rounds = args.rounds or (2 if args.quick else 5)
    window = args.window or (0.5 if args.quick else (1.5 if cuda else 2.0))
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
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
            "classic_workers": workers,
            "classic_pin_memory": cuda,
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
    if args.compile:
        run_compile(results, args, models, threads, settings, prepared, device, rounds, window)
    elif args.profile:
        run_profile(results, args, models, threads, settings, prepared, device)
    else:
        run_comparison(results, args, models, threads, settings, prepared, device, rounds, window, workers, started)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


# ------------------------------------------------------------------------------- classic loop against the project
def run_comparison(
    results: dict[str, Any],
    args: argparse.Namespace,
    models: list[str],
    threads: list[int],
    settings: TrainSettings,
    prepared: PreparedData,
    device: torch.device,
    rounds: int,
    window: float,
    workers: int,
    started: float,
) -> None:
    batch = settings.batch_size
    train_x, train_y = prepared.train_images, prepared.train_labels
    classic_loader = ClassicLoader(ClassicCifar(train_x, train_y, classic_transform()), batch, workers, device)
    print(f"# classic DataLoader workers {workers}", flush=True)
    results["passes"] = []
    eager = set(filter(None, args.eager_models.split(",")))
    try:
        for count in threads:
            set_threads(count)
            one: dict[str, Any] = {"threads": count, "load_average_start": load_average(), "models": {}}
            results["passes"].append(one)
            print(f"# --- {count} thread{'s' if count > 1 else ''}", flush=True)
            # Data pipelines alone: the classic DataLoader (+ copy to the device) against the trainer's batch assembly.
            project_data = ProjectTrainer(models[0], settings, prepared, device)
            data_result = interleaved(
                {
                    "classic": (lambda k: [classic_loader.next() for _ in range(k)], None),
                    "project": (project_data.data_only, None),
                },
                batch,
                device,
                rounds,
                window / 2,
                {"classic": classic_loader.prefetched + 1, "project": 1},
            )
            one["data"] = summarize(data_result, "classic", "project")
            results["runtime_note"] = project_data.runtime.note
            del project_data
            print(f"# project runtime: {results['runtime_note']}", flush=True)
            jpeg = None if args.no_jpeg or args.quick else Path(args.jpeg) if args.jpeg else JPEG_ARCHIVE
            if "data_jpeg" not in results and jpeg is not None and jpeg.is_file():
                jpeg_rate = jpeg_pipeline_rate(jpeg, batch, workers, device, window / 2, max(2, rounds // 2))
                results["data_jpeg"] = jpeg_rate and {**jpeg_rate, "threads": count}
            measure_models(
                one, models, settings, prepared, classic_loader, device, rounds, window, started, args.budget, eager
            )
            one["load_average_end"] = load_average()
    except Stopped as stop:
        results["stopped"] = f"{stop} during the model measurements"
        print(f"# stopped by {stop}: printing what was measured", flush=True)
    if results["passes"]:  # the first pass, where earlier readers of the JSON look for it
        results["models"], results["data"] = results["passes"][0]["models"], results["passes"][0].get("data")
        results["passes"][-1].setdefault("load_average_end", load_average())
    results["environment"]["load_average_end"] = load_average()
    results["short_experiment"] = short_experiment(args.runs_csv)
    print_table(results, batch)
    print_short_experiment(results["short_experiment"], args.runs_csv)


def measure_models(
    results: dict[str, Any],
    models: list[str],
    settings: TrainSettings,
    prepared: PreparedData,
    classic_loader: ClassicLoader,
    device: torch.device,
    rounds: int,
    window: float,
    started: float,
    budget: float | None,
    eager_models: set[str],
) -> None:
    cuda, workers, batch = device.type == "cuda", classic_loader.loader.num_workers, settings.batch_size
    last: tuple[int, float, float] | None = None  # depth, seconds without and with the compile, of the last model
    for name in models:
        eager = name in eager_models
        if budget is not None and last is not None:
            # Measuring time and compile time grow about linearly with depth: what would overrun the budget is
            # measured uncompiled (labelled so in the table) or, if even that would overrun, skipped.
            scale = model_depth(name) / last[0]
            left = budget - (time.monotonic() - started)
            if left < last[1] * scale:
                results.setdefault("skipped", []).append(name)
                print(f"# {name}: skipped (it would end past the --budget of {budget:.0f} s)", flush=True)
                continue
            if not eager and choose_runtime(settings, device).compile and left < (last[1] + last[2]) * scale:
                eager = True
                print(f"# {name}: project measured uncompiled (compiling would overrun the --budget)", flush=True)
        model_started = time.monotonic()
        classic = ClassicTrainer(name, settings, classic_loader, device)
        project = ProjectTrainer(name, replace(settings, compile="off") if eager else settings, prepared, device)

        def classic_steps(k: int, classic: ClassicTrainer = classic) -> None:
            for _ in range(k):
                classic.step()

        def drain(classic: ClassicTrainer = classic) -> None:
            for _ in range(classic_loader.prefetched):
                classic.step()

        # CUDA graphs (compile's reduce-overhead) record on the third call: warm the project past it.
        warm = {"classic": classic_loader.prefetched + 1, "project": 3 if project.runtime.compile else 1}
        result = interleaved(
            {"classic": (classic_steps, drain if workers else None), "project": (project.steps, None)},
            batch,
            device,
            rounds,
            window,
            warm,
        )
        summary = summarize(result, "classic", "project")
        summary["project_runtime"] = project.runtime.note
        summary["measure_s"] = round(time.monotonic() - model_started, 1)
        summary["project_short"] = short_runtime(project.runtime)
        summary["compiled"] = project.runtime.compile
        compile_s = summary["first_step_s"]["project"] if project.runtime.compile else 0.0
        if last is not None and not project.runtime.compile:
            compile_s = last[2] * model_depth(name) / last[0]  # keep the last known compile-time estimate
        last = (model_depth(name), summary["measure_s"] - (compile_s if project.runtime.compile else 0.0), compile_s)
        results["models"][name] = summary
        print(
            f"# {name}: classic {summary['classic']:.0f} img/s, project {summary['project']:.0f} img/s, "
            f"ratio {summary['ratio']:.2f} (rounds {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}); "
            f"first project step {summary['first_step_s']['project']:.1f} s",
            flush=True,
        )
        del classic, project
        if cuda:
            torch.cuda.empty_cache()


def print_table(results: dict[str, Any], batch: int) -> None:
    info = results["environment"]
    print()
    print(
        f"Device: {info['device_name']} ({info['device']}); torch {info['torch']}; threads "
        f"{'/'.join(str(p['threads']) for p in results['passes'])} of {info['cpu_count']} CPUs; load average "
        f"{info['load_average_start']} -> {info['load_average_end']}"
    )
    cpus = info["cpu_affinity"] or info["cpu_count"] or 1
    for one in results["passes"]:
        load = one["load_average_start"]
        if info["device"] == "cpu" and load and one["threads"] > 1 and load[0] > cpus:
            # Measured here: at load 5 on 2 cores, 2 threads ran both loops slower than 1 and spread the ratios.
            print(
                f"WARNING: the machine is busy (load {load[0]} on {cpus} CPUs): {one['threads']} OpenMP threads "
                "wait for each other at every operation; numbers are noisy. Compare with the 1-thread rows."
            )
    print(f"Project runtime: {results.get('runtime_note', '-')}; batch {batch}")
    cuda_note = (
        ", pinned memory; cudnn.benchmark and TF32 (PyTorch's default for fp32 convolutions) apply to it too"
        if info["device"].startswith("cuda")
        else ""
    )
    print(
        "Classic: Dataset of PIL images + RandomCrop/Flip/ToTensor/Normalize, DataLoader "
        f"({results['settings']['classic_workers']} workers{cuda_note}), fp32 NCHW eager, torch.optim.SGD"
    )
    header = (
        f"| {'model':9} | {'threads':>7} | {'classic img/s':>13} | {'project img/s':>13} | {'ratio b/a':>9} | "
        f"{'64k its a':>9} | {'64k its b':>9} | {'project runtime':24} |"
    )
    print()
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    any_compiled = False
    for one in results["passes"]:
        for name, row in one["models"].items():
            a, b = row["classic"], row["project"]
            compile_s = row["first_step_s"]["project"] if row.get("compiled") else 0.0
            any_compiled |= bool(row.get("compiled"))
            print(
                f"| {name:9} | {one['threads']:>7} | {a:13.0f} | {b:13.0f} | {row['ratio']:8.2f}x | "
                f"{format_duration(PAPER_ITERATIONS * batch / a):>9} | "
                f"{format_duration(PAPER_ITERATIONS * batch / b + compile_s):>9} | {row['project_short']:24} |"
            )
        for name in one.get("skipped", []):
            print(f"| {name:9} | {one['threads']:>7} | skipped: it would have overrun the --budget |")
    for one in results["passes"]:
        data = one.get("data")
        if data:
            print(
                f"| {'data only':9} | {one['threads']:>7} | {data['classic']:13.0f} | {data['project']:13.0f} | "
                f"{data['ratio']:8.2f}x | {'':>9} | {'':>9} | {'device-resident batches':24} |"
            )
    jpeg = results.get("data_jpeg")
    if jpeg:
        print(
            f"| {'data JPEG':9} | {jpeg['threads']:>7} | {jpeg['rate']:13.0f} | {'':>13} | {'':>9} | {'':>9} | "
            f"{'':>9} | {'ImageFolder, JPEG':24} |"
        )
    print()
    print(
        "ratio b/a: median of per-round ratios of interleaved windows; 64k its: the paper's schedule (64,000 "
        "iterations x batch) at the measured rate, training steps only (no evaluation)"
        + ("; for a compiled project row it includes the one-off compile (its first step)." if any_compiled else ".")
    )
    if jpeg:
        print(
            f"data JPEG: the classic pipeline on real CIFAR-10 JPEGs via torchvision ImageFolder ({jpeg['images']} "
            "images, decoded per sample); the project decodes once, at `prepare`."
        )


# ------------------------------------------------------------------------------------------- eager vs compiled
def run_compile(
    results: dict[str, Any],
    args: argparse.Namespace,
    models: list[str],
    threads: list[int],
    settings: TrainSettings,
    prepared: PreparedData,
    device: torch.device,
    rounds: int,
    window: float,
) -> None:
    """Per (threads, model): the one-off compile time, eager and compiled steps/s, the gain and the break-even."""
    if not args.warm_cache:
        # A fresh inductor cache: the compile time of a model's first run on a machine (later runs may hit the
        # on-disk cache; the "warm" column measures that).
        scratch = tempfile.mkdtemp(prefix="bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
        results["settings"]["inductor_cache"] = scratch
    results["compile"] = []
    try:
        for count in threads:
            set_threads(count)
            for name in models:
                row = measure_compile(name, count, settings, prepared, device, rounds, window)
                results["compile"].append(row)
    except Stopped as stop:
        results["stopped"] = f"{stop} during the compile measurements"
        print(f"# stopped by {stop}: printing what was measured", flush=True)
    results["environment"]["load_average_end"] = load_average()
    results["recommended_cpu_compile_min_iterations"] = print_compile_table(results)


def measure_compile(
    name: str,
    threads: int,
    settings: TrainSettings,
    prepared: PreparedData,
    device: torch.device,
    rounds: int,
    window: float,
) -> dict[str, Any]:
    batch = settings.batch_size
    row: dict[str, Any] = {"model": name, "threads": threads}
    torch._dynamo.reset()
    eager = ProjectTrainer(name, replace(settings, compile="off"), prepared, device)
    compiled = ProjectTrainer(name, replace(settings, compile="on"), prepared, device)
    row["runtime"], row["compile_mode"] = compiled.runtime.note, compiled.runtime.compile_mode
    eager.steps(2)  # warm: first-call allocations and oneDNN primitive creation
    try:
        first = first_steps(compiled, device)
    except Exception as error:  # as the trainer: a compile that fails is reported, not fatal
        lines = str(error).strip().splitlines()
        row["failed"] = f"{type(error).__name__}: {lines[0] if lines else ''}"
        print(f"# {name} ({threads} threads): compile failed: {row['failed']}", flush=True)
        return row
    result = interleaved(
        {"eager": (eager.steps, None), "compiled": (compiled.steps, None)},
        batch,
        device,
        rounds,
        window,
        {"eager": 1, "compiled": 1},
    )
    summary = summarize(result, "eager", "compiled")
    step_eager, step_compiled = batch / summary["eager"], batch / summary["compiled"]
    # The one-off cost: the first compiled steps less what they would have taken warm.
    compile_s = sum(first) - COMPILE_WARM_STEPS * step_compiled
    # A second compile of the same model in a fresh dynamo state: what a later run pays with inductor's on-disk
    # cache (FX graph and AOTAutograd caches) warm, as the runs of one experiment after its first.
    torch._dynamo.reset()
    warm_first = first_steps(ProjectTrainer(name, replace(settings, compile="on"), prepared, device), device)
    compile_warm_s = sum(warm_first) - COMPILE_WARM_STEPS * step_compiled
    saved = step_eager - step_compiled
    row |= {
        "compile_s": compile_s,
        "compile_warm_cache_s": compile_warm_s,
        "first_steps_s": first,
        "eager_steps_per_s": 1 / step_eager,
        "compiled_steps_per_s": 1 / step_compiled,
        "gain": summary["ratio"],
        "gain_min": summary["ratio_min"],
        "gain_max": summary["ratio_max"],
        "break_even": compile_s / saved if saved > 0 else math.inf,
        "break_even_warm_cache": compile_warm_s / saved if saved > 0 else math.inf,
        "raw": summary["raw"],
        "steps_per_window": summary["steps_per_window"],
    }
    print(
        f"# {name} ({threads} threads): compile {compile_s:.1f} s (warm cache {compile_warm_s:.1f} s), eager "
        f"{row['eager_steps_per_s']:.2f} steps/s, compiled {row['compiled_steps_per_s']:.2f} steps/s, gain "
        f"{row['gain']:.3f} (rounds {row['gain_min']:.3f}-{row['gain_max']:.3f})",
        flush=True,
    )
    return row


def first_steps(trainer: ProjectTrainer, device: torch.device) -> list[float]:
    """Seconds of each of the first COMPILE_WARM_STEPS steps, one at a time (they trace and compile)."""
    return [timed(lambda: trainer.steps(1), device) for _ in range(COMPILE_WARM_STEPS)]


def format_count(value: float) -> str:
    return f"{math.ceil(value):,}" if math.isfinite(value) else "never"


def print_compile_table(results: dict[str, Any]) -> int | None:
    """The table, and the recommended CPU_COMPILE_MIN_ITERATIONS (None: compiling never pays)."""
    info = results["environment"]
    modes = sorted({row["compile_mode"] for row in results["compile"] if "compile_mode" in row})
    print()
    print(
        f"Device: {info['device_name']} ({info['device']}); torch {info['torch']}; {info['cpu_count']} CPUs; "
        f"load average {info['load_average_start']} -> {info['load_average_end']}; batch "
        f"{results['settings']['batch']}; torch.compile mode {', '.join(modes) or '-'}"
    )
    header = (
        f"| {'model':9} | {'threads':>7} | {'compile s':>9} | {'warm s':>6} | {'eager st/s':>10} | "
        f"{'comp. st/s':>10} | {'gain':>6} | {'gain rounds':>11} | {'break-even':>10} | {'64k eager':>9} | "
        f"{'64k comp.':>9} |"
    )
    print()
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    worst = 0.0
    for row in results["compile"]:
        if "failed" in row:
            print(f"| {row['model']:9} | {row['threads']:>7} | compile failed: {row['failed']} |")
            worst = math.inf
            continue
        worst = max(worst, row["break_even"])
        eager_64k = PAPER_ITERATIONS / row["eager_steps_per_s"]
        compiled_64k = PAPER_ITERATIONS / row["compiled_steps_per_s"] + row["compile_s"]
        print(
            f"| {row['model']:9} | {row['threads']:>7} | {row['compile_s']:9.1f} | {row['compile_warm_cache_s']:6.1f} "
            f"| {row['eager_steps_per_s']:10.2f} | {row['compiled_steps_per_s']:10.2f} | {row['gain']:5.3f}x | "
            f"{row['gain_min']:5.3f}-{row['gain_max']:5.3f} | {format_count(row['break_even']):>10} | "
            f"{format_duration(eager_64k):>9} | {format_duration(compiled_64k):>9} |"
        )
    print()
    print(
        f"compile s: the first {COMPILE_WARM_STEPS} compiled steps less {COMPILE_WARM_STEPS} warm ones, with a fresh "
        "inductor cache (warm s: again, in a fresh dynamo state, with the on-disk cache filled by the first); "
        "gain: median of per-round compiled/eager ratios of interleaved windows; break-even: compile s / (s per eager "
        "step - s per compiled step), in iterations; 64k comp. includes the compile."
    )
    if not results["compile"]:
        print("Recommended CPU_COMPILE_MIN_ITERATIONS: none (nothing was measured)")
        return None
    recommended = None if not math.isfinite(worst) else max(1000, math.ceil(2 * worst / 1000) * 1000)
    print(
        f"Recommended CPU_COMPILE_MIN_ITERATIONS = {recommended if recommended else 'never'}"
        + ("" if recommended else " (e.g. None in core.COMPILE_MIN_ITERATIONS: `compile: auto` never compiles on CPU)")
    )
    print(
        "Rule: twice the largest break-even above (cold cache, every model and thread count), rounded up to a "
        "thousand, so that a run compiled by `compile: auto` gains at least as much as its compile costs; "
        "'never' if for any of them compiling is not faster (or fails)."
    )
    return recommended


# -------------------------------------------------------------------------------------------------- profile
def run_profile(
    results: dict[str, Any],
    args: argparse.Namespace,
    models: list[str],
    threads: list[int],
    settings: TrainSettings,
    prepared: PreparedData,
    device: torch.device,
) -> None:
    """torch.profiler over a few warm project-trainer steps: the top 15 ops by self time, and the share of the
    convolutions (oneDNN / cuDNN), which no loop around them can make faster."""
    from torch.profiler import ProfilerActivity, profile

    steps = 3 if args.quick else 10
    eager_models = set(filter(None, args.eager_models.split(",")))
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    results["profile"] = []
    for count in threads:
        set_threads(count)
        for name in models:
            project = ProjectTrainer(
                name, replace(settings, compile="off") if name in eager_models else settings, prepared, device
            )
            project.steps(3)  # warm (and compiled, if the runtime compiles)
            with profile(activities=activities) as prof:
                project.steps(steps)
                sync(device)
            averages = prof.key_averages()
            total = sum(event.self_cpu_time_total for event in averages) or 1.0
            shares = profile_shares(prof.events(), total)
            print()
            print(
                f"Profile: {name}, {count} thread{'s' if count > 1 else ''}, {steps} warm project steps "
                f"({project.runtime.note}); top 15 ops by self {'device' if cuda else 'CPU'} time:"
            )
            print(averages.table(sort_by=sort_by, row_limit=15))
            print(
                "Share of self CPU time: "
                + ", ".join(f"{group} {share:.0%}" for group, share in shares.items())
                + f"; {total / steps / 1000:.1f} ms self CPU per step (all threads' work is in the op's own time)"
            )
            results["profile"].append(
                {
                    "model": name,
                    "threads": count,
                    "steps": steps,
                    "runtime": project.runtime.note,
                    "shares": shares,
                    "self_cpu_ms_per_step": total / steps / 1000,
                    "top": [
                        {"op": e.key, "self_cpu_us": e.self_cpu_time_total, "calls": e.count}
                        for e in sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
                    ],
                }
            )
            del project


# Groups of ops by name (substrings of the profiler's keys, first match wins); self times do not overlap. The ops
# inside the optimizer's step count as "optimizer" whatever their name.
PROFILE_GROUPS = {
    "convolution (oneDNN/cuDNN)": ("conv",),
    "compiled kernels (inductor)": ("compiledfxgraph", "cpp_fused", "triton_"),
    "batch norm": ("batch_norm",),
    "casts and copies": ("aten::copy_", "aten::_to_copy"),
}


def profile_shares(events: Any, total: float) -> dict[str, float]:
    """Each group's share of the self CPU time of the profiled events (optimizer, PROFILE_GROUPS, other)."""
    sums = dict.fromkeys(["optimizer", *PROFILE_GROUPS, "other"], 0.0)
    for event in events:
        group, parent = "other", event
        while parent is not None:
            if parent.name.startswith("Optimizer."):
                group = "optimizer"
                break
            parent = parent.cpu_parent
        if group == "other":
            name = event.name.lower()
            group = next((g for g, keys in PROFILE_GROUPS.items() if any(k in name for k in keys)), "other")
        sums[group] += event.self_cpu_time_total
    return {group: value / total for group, value in sums.items()}


if __name__ == "__main__":
    sys.exit(main())
