"""Tar archives read safely: every member checked before anything is written, extraction all or nothing.

A missing, unreadable or corrupt archive is one DataError line; a full disk is one OutputError line.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError
from .runfiles import NO_SPACE, atomic_directory, output_error


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or Path(name).is_absolute():
        raise DataError(f"unsafe archive: member {name!r} has an absolute path")
    if ".." in Path(name).parts:
        raise DataError(f"unsafe archive: member {name!r} leaves the target folder")
    if member.isdev():
        raise DataError(f"unsafe archive: member {name!r} is a device file")
    if member.issym() or member.islnk():
        base = root if member.islnk() else (root / name).parent
        target = (base / member.linkname).resolve()
        if Path(member.linkname).is_absolute() or not target.is_relative_to(root.resolve()):
            raise DataError(f"unsafe archive: link {name!r} -> {member.linkname!r} points outside the target folder")


@contextmanager
def reading_archive(archive: Path, out: Path) -> Iterator[tarfile.TarFile]:
    """A tar archive opened for reading into `out`: a missing, unreadable or corrupt archive (found on opening or
    later, while reading) is one DataError line; a full disk while the block writes is one OutputError line."""
    try:
        with tarfile.open(archive) as tar:
            yield tar
    except OSError as error:
        if error.errno in NO_SPACE:
            raise output_error(Path(out), error) from None
        raise DataError(f"cannot read archive {archive}: {_first_line(error)}") from None
    except (tarfile.TarError, EOFError, zlib_error()) as error:
        raise DataError(f"cannot read archive {archive}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    """One line of an error: tarfile lists every compression it tried on lines of their own."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].rstrip(":") + (" as tar, tar.gz, tar.bz2 or tar.xz" if len(lines) > 1 else "")


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a tar archive into `target` after checking every member; all or nothing."""
    with atomic_directory(target) as staging, reading_archive(archive, target) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, staging)
        tar.extractall(staging, members=members, filter="data")
    return Path(target)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
