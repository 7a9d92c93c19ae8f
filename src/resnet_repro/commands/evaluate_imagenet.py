"""`resnet-repro evaluate-imagenet`: 10-crop evaluation of a trained ImageNet run into metrics.json/details.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import METRICS_FILE
from .options import add_trained_run_arguments, take_gpu_slot, trained_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trained_run_arguments(parser, "the ImageNet index it was trained on (`index-imagenet`)", METRICS_FILE)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding JPEGs (default 4)")


def run(args: argparse.Namespace) -> int:
    model, out = trained_run(args)
    take_gpu_slot(args.device, packable=False)  # a whole GPU (gpu=1 in its rule)
    from ..evaluate_imagenet import evaluate_imagenet

    metrics = evaluate_imagenet(model, Path(args.data), out, args.device, args.workers)
    print(f"{out}: 10-crop error {metrics['test_error']:.4f}, centre crop {metrics['single_crop_error']:.4f}")
    return 0
