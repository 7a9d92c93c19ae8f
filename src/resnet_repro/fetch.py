"""Downloads of the official archives: http(s)://, file:// or a local path, verified by MD5, written atomically.

An existing file with the right checksum is kept; transient network errors are retried with backoff; a truncated or
corrupt transfer leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from .archives import source_path
from .errors import DataError
from .runfiles import atomic_writer, open_input

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def file_digest(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_source(source: str, timeout: float) -> tuple[io.BufferedIOBase, int | None]:
    """A readable stream for an http(s):// or file:// URL or a local path, and its size when known."""
    path = source_path(source)
    if path is None:
        response = urllib.request.urlopen(source, timeout=timeout)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    if not path.is_file():
        raise DataError(f"source file not found: {path}")
    return open_input(path, "source file"), path.stat().st_size


class _Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise (cluster logs)."""

    def __init__(self, label: str, total: int | None, stream=None) -> None:
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.next_report = 0.0

    def update(self, done: int, final: bool = False) -> None:
        fraction = done / self.total if self.total else None
        now = time.monotonic()
        if not final and now < self.next_report:
            return
        self.next_report = now + (0.2 if self.tty else 10.0)
        rate = done / max(now - self.start, 1e-9) / 1e6
        text = f"{self.label}: {done / 1e6:.1f} MB"
        if fraction is not None:
            text += f" / {self.total / 1e6:.1f} MB ({100 * fraction:.0f}%)"
        text += f", {rate:.1f} MB/s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def fetch(
    source: str,
    destination: Path,
    md5: str | None,
    retries: int = 3,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Copy `source` to `destination`, verified by MD5, atomically.

    An existing destination with the right checksum is kept as is. Transient network errors are retried with
    backoff; a checksum mismatch is not (the data itself is wrong) and leaves no file behind.
    """
    destination = Path(destination)
    if destination.is_file() and (md5 is None or file_digest(destination) == md5):
        return destination
    attempt = 0
    while True:
        attempt += 1
        try:
            return _fetch_once(source, destination, md5, timeout, quiet)
        except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as error:
            transient = not isinstance(error, urllib.error.HTTPError) or error.code in TRANSIENT_HTTP
            if not transient or attempt > retries:
                raise DataError(f"could not download {source}: {error}") from None
            wait = 2.0 ** (attempt - 1)
            print(f"download of {source} failed ({error}); retry {attempt}/{retries} in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)


def _fetch_once(source: str, destination: Path, md5: str | None, timeout: float, quiet: bool) -> Path:
    stream, total = _open_source(source, timeout)
    digest = hashlib.md5()
    progress = None if quiet else _Progress(f"fetch {destination.name}", total)
    done = 0
    with stream, atomic_writer(destination, suffix=".part") as handle:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            handle.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress.update(done)
        if progress:
            progress.update(done, final=True)
        # A failure raised here leaves the partial file unrenamed, and atomic_writer removes it.
        if total is not None and done != total:
            raise DataError(f"{source}: truncated transfer, got {done} of {total} bytes; nothing was kept")
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise DataError(
                f"{source}: checksum mismatch: expected md5 {md5}, got {actual} ({done} bytes); "
                "the file is corrupt or truncated and nothing was kept"
            )
    return destination
