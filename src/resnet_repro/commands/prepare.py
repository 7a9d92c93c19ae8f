"""`resnet-repro prepare`: turn a raw dataset into the compact prepared format."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["cifar10", "cifar100", "digits", "imagefolder"])
    parser.add_argument("--raw", help="the fetched archive, or an image folder (folder or .tar/.tar.gz)")
    parser.add_argument("--out", required=True, help="prepared folder to write")


def run(args: argparse.Namespace) -> int:
    from ..prepare import prepare

    print(prepare(args.dataset, Path(args.out), Path(args.raw) if args.raw else None))
    return 0
