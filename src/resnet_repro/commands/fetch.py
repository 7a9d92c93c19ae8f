"""`resnet-repro fetch`: download an official dataset archive, verified by MD5, atomically."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..archives import ARCHIVES
from ..paths import raw_archive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=list(ARCHIVES))
    parser.add_argument("--source", help="https://, file:// URL or local path (default: the official URL)")
    parser.add_argument("--md5", help="expected MD5 (default: the official archive's)")
    parser.add_argument("--out", help="destination file (default: data/raw/<archive name>)")
    parser.add_argument("--retries", type=int, default=3, help="retries on transient network errors (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from ..fetch import fetch

    spec = ARCHIVES[args.dataset]
    out = Path(args.out or raw_archive(spec.filename))
    print(fetch(args.source or spec.url, out, args.md5 or spec.md5, retries=args.retries, quiet=args.quiet))
    return 0
