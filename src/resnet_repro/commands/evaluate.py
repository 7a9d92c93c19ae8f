"""`resnet-repro evaluate`: score a trained run on its prepared dataset into metrics.json and details.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import METRICS_FILE
from .options import add_trained_run_arguments, take_gpu_slot, trained_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trained_run_arguments(parser, "prepared dataset folder it was trained on", METRICS_FILE)


def run(args: argparse.Namespace) -> int:
    model, out = trained_run(args)
    take_gpu_slot(args.device, packable=True)
    from ..evaluate import evaluate

    metrics = evaluate(model, Path(args.data), out, args.device)
    print(f"{out}: test error {metrics['test_error']:.4f}, loss {metrics['test_loss']:.4f}")
    return 0
