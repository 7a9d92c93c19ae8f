"""`resnet-repro index-imagenet`: check a local ImageNet folder and write its index (no copy)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path", required=True, help="ILSVRC-2012 folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
    )
    parser.add_argument("--out", required=True, help="index folder to write (meta.json, train.tsv, val.tsv)")


def run(args: argparse.Namespace) -> int:
    from ..imagenet import build_index, load_index

    out = build_index(Path(args.path), Path(args.out))
    meta = load_index(out).meta
    print(f"{out}: {meta['num_classes']} classes, {meta['counts']['train']} train / {meta['counts']['val']} val images")
    return 0
