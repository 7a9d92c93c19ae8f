"""`resnet-repro responses`: the std of each 3x3 layer's response on the test set (paper Fig. 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import RESPONSES_FILE
from .options import add_trained_run_arguments, take_gpu_slot, trained_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trained_run_arguments(parser, "prepared dataset folder it was trained on", RESPONSES_FILE)


def run(args: argparse.Namespace) -> int:
    model, out = trained_run(args)
    take_gpu_slot(args.device, packable=True)
    from ..analysis import write_responses

    result = write_responses(model, Path(args.data), out, args.device)
    print(f"{out}: {len(result['layers'])} layers of {result['model']} on {result['images']} images")
    return 0
