"""`resnet-repro render`: figures, tables and the verdict of one experiment, from its runs' files."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--experiment", required=True, help="experiment name in the config (e.g. demo, cifar10_depth)")
    parser.add_argument("--out", help="output folder (default: results/<experiment>)")
    parser.add_argument("--root", default=".", help="folder the run paths of the config are relative to (default: .)")


def run(args: argparse.Namespace) -> int:
    from ..paths import experiment_dir
    from ..plan import load_plan
    from ..render.report import render_experiment

    out = args.out or experiment_dir(args.experiment)
    written = render_experiment(load_plan(args.config), args.experiment, out, args.root)
    print(f"{args.experiment}: wrote {len(written)} files under {out}")
    return 0
