"""torch.profiler over a few warm steps of the project trainer: the top 15 ops by self time, and the share of each
group of ops (convolutions, inductor's kernels, batch norm, casts, the optimizer): what limits the speed.

    python benchmarks/bench_profile.py [--device cpu|cuda] [--models resnet20] [--threads all] [--eager-models ...]
                                       [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from _common import Bench, ProjectTrainer, base_parser, set_threads, setup, sync, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__, "resnet20,resnet56,resnet110", windows=False)
    parser.add_argument("--eager-models", default="", help="comma-separated models profiled uncompiled")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = setup(args, "resnet20,resnet56,resnet110", "all")
    run_profile(bench, args)
    write_json(bench.results, args.json)
    return 0


def run_profile(bench: Bench, args: argparse.Namespace) -> None:
    """torch.profiler over a few warm project-trainer steps: the top 15 ops by self time, and the share of the
    convolutions (oneDNN / cuDNN), which no loop around them can make faster."""
    results, models, threads, settings, prepared, device = bench.parts()
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
