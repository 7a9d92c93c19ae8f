"""`resnet-repro imagenet-val-layout`: sort the official flat validation images into val/<wnid>/."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devkit", required=True, help="ILSVRC2012_devkit_t12.tar.gz (meta.mat and the ground truth)")
    parser.add_argument("--images", required=True, help="ILSVRC2012_img_val.tar, or the folder it was extracted to")
    parser.add_argument("--out", required=True, help="the val/ folder to fill (e.g. /data/imagenet/val)")


def run(args: argparse.Namespace) -> int:
    from ..imagenet import layout_val

    placed = layout_val(Path(args.devkit), Path(args.images), Path(args.out))
    print(f"{args.out}: {placed} validation images sorted into class folders")
    return 0
