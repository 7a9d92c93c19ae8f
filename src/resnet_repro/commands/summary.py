"""`resnet-repro summary`: the reproduction verdict of every claim across the experiments of `all`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--out", help="output folder (default: results/summary)")
    parser.add_argument("--root", default=".", help="folder the run paths of the config are relative to (default: .)")
    parser.add_argument("--experiment", action="append", help="only these experiments (repeatable; default: `all`)")


def run(args: argparse.Namespace) -> int:
    from ..paths import SUMMARY_DIR
    from ..plan import load_plan
    from ..render.report import render_summary

    out = args.out or SUMMARY_DIR
    render_summary(load_plan(args.config), out, args.root, args.experiment or None)
    print(Path(out) / "tables" / "verdict.md")
    return 0
