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

Eager against compiled: bench_compile.py; the top ops of a step: bench_profile.py (`--compile` and `--profile` here
run those).

    python benchmarks/bench_train.py [--device cpu|cuda] [--models resnet20,resnet56,resnet110] [--threads 1,all]
                                     [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
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
from _common import (
    PAPER_ITERATIONS,
    REPO,
    Bench,
    PreparedData,
    ProjectTrainer,
    Stopped,
    TrainSettings,
    base_parser,
    build_model,
    choose_runtime,
    format_duration,
    ignore_stop_signals,
    interleaved,
    load_average,
    model_depth,
    set_threads,
    setup,
    short_runtime,
    stop_deferred,
    summarize,
    timed,
    write_json,
)

JPEG_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SHORT_RUNS = REPO / "results" / "cifar10_short" / "tables" / "runs.csv"  # the short real-data experiment, of record
MOVED = {"--compile": "bench_compile", "--profile": "bench_profile"}  # the tools this file once held
# Seconds of --budget the real-JPEG row needs left to start: it extracts 60,000 files and starts the DataLoader's
# workers before timing anything. An estimate (the one GPU run that tried it was stopped inside it); the row comes
# after the models, so a stop there costs nothing else.
JPEG_ROW_MIN_S = 60


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
            worker_init_fn=ignore_stop_signals,  # they outlive a SIGTERM to the group, so the main process stops
        )
        self.device, self.non_blocking = device, cuda
        # Batches the workers may have queued while the other contender ran: drained untimed before each window.
        self.prefetched = workers * 2 + 1 if workers else 0
        self._iterator: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        with stop_deferred():  # a batch is received whole (see stop_deferred)
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
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__, "resnet20,resnet56,resnet110")
    parser.add_argument("--workers", type=int, help="classic DataLoader workers (default 0 on CPU, min(8, cores))")
    parser.add_argument("--jpeg", default=None, help=f"CIFAR-10 JPEG archive for the data row (default {JPEG_ARCHIVE})")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the real-JPEG data pipeline row")
    parser.add_argument("--runs-csv", type=Path, default=SHORT_RUNS, help="the short experiment's runs table")
    parser.add_argument(
        "--eager-models", default="", help="comma-separated models whose project run is not compiled (saves time)"
    )
    parser.add_argument(
        "--budget", type=float, help="seconds: start no further model (or the JPEG row) that would end after this"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for flag, tool in MOVED.items():
        if flag in argv:  # the former modes of this file: the same options, now their own tools
            return __import__(tool).main([a for a in argv if a != flag])
    args = parse_args(argv)
    try:
        bench = setup(args, "resnet20,resnet56,resnet110", "1,all")
    except Stopped as stop:  # before anything was measured: still a record that says so
        print(f"Stopped: {stop} during the set-up, before any measurement")
        write_json({"stopped": {"signal": str(stop), "models_measured": 0, "models_planned": None}}, args.json)
        return 0
    cuda = bench.device.type == "cuda"
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    bench.results["settings"] |= {"classic_workers": workers, "classic_pin_memory": cuda}
    run_comparison(bench, args, workers)
    write_json(bench.results, args.json)
    return 0


# ------------------------------------------------------------------------------- classic loop against the project
def run_comparison(bench: Bench, args: argparse.Namespace, workers: int) -> None:
    results, models, threads, settings, prepared, device = bench.parts()
    rounds, window, started = bench.rounds, bench.window, bench.started
    batch = settings.batch_size
    train_x, train_y = prepared.train_images, prepared.train_labels
    classic_loader = ClassicLoader(ClassicCifar(train_x, train_y, classic_transform()), batch, workers, device)
    print(f"# classic DataLoader workers {workers}", flush=True)
    results["passes"] = []
    eager = set(filter(None, args.eager_models.split(",")))
    planned = len(threads) * len(models)
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
            measure_models(
                one, models, settings, prepared, classic_loader, device, rounds, window, started, args.budget, eager
            )
            one["load_average_end"] = load_average()
        jpeg = None if args.no_jpeg or args.quick else Path(args.jpeg) if args.jpeg else JPEG_ARCHIVE
        left = math.inf if args.budget is None else args.budget - (time.monotonic() - started)
        if jpeg is not None and jpeg.is_file():
            if left < JPEG_ROW_MIN_S:
                print(f"# data JPEG: skipped ({left:.0f} s of the --budget left, it needs {JPEG_ROW_MIN_S})")
            else:
                jpeg_rate = jpeg_pipeline_rate(jpeg, batch, workers, device, window / 2, max(2, rounds // 2))
                results["data_jpeg"] = jpeg_rate and {**jpeg_rate, "threads": threads[-1]}
    except Stopped as stop:
        measured = sum(len(one["models"]) for one in results["passes"])
        results["stopped"] = {"signal": str(stop), "models_measured": measured, "models_planned": planned}
        print(f"# stopped by {stop} at {measured} of {planned} model measurements: printing what was measured")
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
    stopped = results.get("stopped")
    if stopped:
        print(
            f"Stopped: {stopped['signal']} at {stopped['models_measured']} of {stopped['models_planned']} model "
            "measurements; the rows below are the ones completed before it"
        )
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


if __name__ == "__main__":
    sys.exit(main())
