"""`resnet-repro train-imagenet`: one rank of a data-parallel ImageNet run from the streaming loader (see `launch`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..settings import DistributedOptions
from .run_options import add_run_arguments, dataset_name, run_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "ImageNet index folder (`resnet-repro index-imagenet`)", "imagenet_paper")
    parser.add_argument(
        "--device",
        help="auto (CUDA + NCCL if present, else CPU + gloo), cpu or cuda "
        f"(default: the settings' or {DistributedOptions.device})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"DataLoader workers per process (default: the settings' or {DistributedOptions.workers})",
    )
    parser.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"SyncBatchNorm (default: the settings' or {'on' if DistributedOptions.sync_bn else 'off'})",
    )


def run(args: argparse.Namespace) -> int:
    spec = run_spec(args, dataset_name(args.data), DistributedOptions())
    changes = {"device": args.device, "workers": args.workers, "sync_bn": args.sync_bn}
    spec = spec.with_layout(**{key: value for key, value in changes.items() if value is not None})
    from ..distributed import train_distributed

    path = train_distributed(spec, Path(args.data), Path(args.out))
    if int(os.environ.get("RANK", 0)) == 0:  # one line from the job, not one per rank
        print(path)
    return 0
