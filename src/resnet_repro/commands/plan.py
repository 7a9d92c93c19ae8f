"""`resnet-repro plan`: resolve every run of config.yaml into its settings.json, the file its training job reads."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--root", default=".", help="folder the run paths of the config are relative to (default: .)")


def run(args: argparse.Namespace) -> int:
    from ..plan import load_plan, write_specs

    plan = load_plan(args.config)
    written = write_specs(plan, args.root)
    print(f"{len(plan.runs)} runs planned; settings.json written for {len(written)} (the others were up to date)")
    return 0
