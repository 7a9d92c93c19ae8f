"""`resnet-repro train`: train one run on a prepared dataset (resuming a matching checkpoint in --out)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import PAPER_SCHEDULE
from .options import add_device_option, take_gpu_slot
from .run_options import add_run_arguments, dataset_name, run_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "prepared dataset folder", PAPER_SCHEDULE)
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    spec = run_spec(args, dataset_name(args.data))
    take_gpu_slot(args.device, packable=True)
    from ..train import train

    print(train(spec, Path(args.data), Path(args.out), args.device))
    return 0
