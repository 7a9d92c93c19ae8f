"""`resnet-repro models`: the registered models, with their parameter counts on request."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family (cifar, imagenet, fc)")
    parser.add_argument("--params", action="store_true", help="also build each model and count its parameters")


def run(args: argparse.Namespace) -> int:
    from ..catalog import CATALOG
    from ..models import build_model, count_parameters

    for name, info in sorted(CATALOG.items(), key=lambda item: (item[1].family, item[0])):
        if args.family and info.family != args.family:
            continue
        line = f"{name:18} {info.family:9} {info.description}"
        if args.params:
            size = 224 if info.family == "imagenet" else 32
            classes = 1000 if info.family == "imagenet" else 10
            line += f"  [{count_parameters(build_model(name, classes, 3, size)):,} params, {classes} classes]"
        print(line)
    return 0
