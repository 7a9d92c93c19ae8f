"""The official dataset archives: where each lives, its checksum, and what a configured source names.

Only parses and names: `plan` and `stages` use it before any job runs (standard library only), `fetch` downloads.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


@dataclass(frozen=True)
class ArchiveSpec:
    """An official dataset archive: where it lives and how to check it."""

    url: str
    md5: str
    filename: str


ARCHIVES: dict[str, ArchiveSpec] = {
    "cifar10": ArchiveSpec(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-python.tar.gz",
    ),
    "cifar100": ArchiveSpec(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python.tar.gz",
    ),
}


def source_path(source: str) -> Path | None:
    """The local file a source names (a file:// URL or a plain path), None for an http(s):// URL; DataError for
    anything else. Only parses: `pipeline check` uses it too, before any job runs."""
    try:
        parsed = urllib.parse.urlsplit(source)  # not urlparse, which cuts a file name at ';'
    except ValueError as error:  # e.g. an unclosed [ in the host
        raise DataError(f"unsupported source {source!r}: {error}") from None
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise DataError(f"unsupported source {source!r}: no host after {parsed.scheme}://")
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        return Path(source)
    raise DataError(f"unsupported source {source!r}: use https://, http://, file:// or a local path")
