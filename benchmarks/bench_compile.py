"""Eager against torch.compile in the project trainer: the one-off compile time, steps/s of each, the gain, the
break-even iteration count, and the CPU_COMPILE_MIN_ITERATIONS (resnet_repro.runtime) it recommends.

The two runtimes (choose_runtime with compile "off" / "on", all else the same) are measured in interleaved windows in
one process, on synthetic CIFAR-shaped data, by default with all cores and a fresh inductor cache (a cold start).

    python benchmarks/bench_compile.py [--device cpu|cuda] [--models resnet20,resnet56] [--threads all]
                                       [--warm-cache] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import replace
from typing import Any

import torch
from _common import (
    PAPER_ITERATIONS,
    Bench,
    PreparedData,
    ProjectTrainer,
    Stopped,
    TrainSettings,
    base_parser,
    format_duration,
    interleaved,
    load_average,
    set_threads,
    setup,
    summarize,
    timed,
    write_json,
)

COMPILE_WARM_STEPS = 3  # compiled steps timed as "compiling": the first traces and compiles forward and backward


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__, "resnet20,resnet56")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="keep inductor's on-disk cache (default: a fresh one, so the compile time is a cold start)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = setup(args, "resnet20,resnet56", "all")
    run_compile(bench, args)
    write_json(bench.results, args.json)
    return 0


def run_compile(bench: Bench, args: argparse.Namespace) -> None:
    """Per (threads, model): the one-off compile time, eager and compiled steps/s, the gain and the break-even."""
    results, models, threads, settings, prepared, device = bench.parts()
    rounds, window = bench.rounds, bench.window
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
        + ("" if recommended else " (None in runtime.COMPILE_MIN_ITERATIONS: `compile: auto` never compiles on CPU)")
    )
    print(
        "Rule: twice the largest break-even above (cold cache, every model and thread count), rounded up to a "
        "thousand, so that a run compiled by `compile: auto` gains at least as much as its compile costs; "
        "'never' if for any of them compiling is not faster (or fails)."
    )
    return recommended


if __name__ == "__main__":
    sys.exit(main())
