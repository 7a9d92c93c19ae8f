"""`resnet-repro pipeline`: validate config.yaml (with what each experiment asks of a cluster), or regenerate
dvc.yaml from it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check", "sync"])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--dvc-yaml", default="dvc.yaml")


def run(args: argparse.Namespace) -> int:
    from ..plan import load_plan
    from ..resources import experiment_needs
    from ..stages import sync_dvc_yaml

    plan = load_plan(args.config, check_data=args.action == "check")
    if args.action == "sync":
        changed = sync_dvc_yaml(plan, args.dvc_yaml)
        print(f"{args.dvc_yaml}: {'updated' if changed else 'up to date'} ({len(plan.runs)} runs)")
        return 0
    for name, runs in plan.experiments.items():
        print(f"{name}: {len(runs)} runs: {', '.join(sorted({r.model for r in runs}))}")
        print(f"  needs: {experiment_needs(plan, name)}")
    print(f"config OK: {len(plan.runs)} distinct runs")
    return 0
