"""Run-file formats and atomic writers, torch-free: what the trainers write and render and the tests read.

history.csv  one row per evaluation (HISTORY_FIELDS); the TIMING_FIELDS measure the machine, not learning, and are
             left out of reproducibility checks
epochs.csv   one row per completed epoch (EPOCH_FIELDS)
metrics.json the headline numbers of an evaluation (HEADLINE_METRICS: what `dvc metrics show` lists)
details.json the rest of it: identity, top-k and per-class accuracy, confusion matrix, sample sizes, provenance
Every file is written whole to a temporary file in the same folder and renamed: a reader sees the old or the new
file, never half of one. These writers are the project's only ones (run files, checkpoints, downloads, prepared
data, rendered files, dvc.yaml): each final file gets the mode a plain open() gives (0o666 & ~umask), folders
0o777 & ~umask, and both the file and its folder are fsynced before the writer returns.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError, OutputError
from .paths import DETAILS_FILE, METRICS_FILE


@dataclass
class HistoryRow:
    """One evaluation of a run: training figures since the previous row, the held-out figures, and timing."""

    iteration: int
    epoch: float
    lr: float
    train_loss: float
    train_error: float
    test_loss: float
    test_error: float
    images_per_s: float
    elapsed_s: float
    wall_s: float
    threads: int


@dataclass
class EpochRow:
    """One completed epoch of a run: training figures over the epoch."""

    epoch: int
    iteration: int
    lr: float
    train_loss: float
    train_error: float
    images_per_s: float


HISTORY_FIELDS = [row.name for row in fields(HistoryRow)]
EPOCH_FIELDS = [row.name for row in fields(EpochRow)]
# Fields of a history row that measure the machine rather than learning: excluded from reproducibility checks.
TIMING_FIELDS = {"images_per_s", "elapsed_s", "wall_s", "threads"}


# Why a write failed when the user can fix it: the disk or quota is full, or the output is not theirs to write.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def output_error(path: Path, error: OSError) -> OutputError:
    """The one-line error for an output that cannot be written (the reason is in `error`)."""
    reason = "disk full or over quota" if error.errno in NO_SPACE else error.strerror or str(error)
    return OutputError(f"cannot write {path}: {reason}; nothing half-written was kept")


def output_folder(folder: Path) -> Path:
    """Make an output folder and its parents (0o777 & ~umask, like mkdir -p); one that cannot be made (not
    allowed, read-only, disk full) is one OutputError line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in NO_SPACE | NOT_ALLOWED:
            raise OutputError(f"cannot make the output folder {folder}: {error.strerror}") from None
        raise
    return folder


def _fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (where the file system supports it)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # folders that cannot be fsynced
            raise
    finally:
        os.close(fd)


# The umask is never read. os.umask() can only read it by setting it, process-wide, which races with any other
# thread creating a file; /proc/self/status is Linux-only. Instead each temporary file (and staging folder) is
# created fresh with mode 0o666 (0o777) and O_EXCL, so the kernel applies the umask, and a folder's default ACL,
# exactly as it does for a plain open(); the rename keeps that mode. (tempfile's mkstemp/mkdtemp force 0o600/0o700.)
def _new_temporary(path: Path, suffix: str) -> tuple[Path, BinaryIO]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(temporary, flags, 0o666)  # O_EXCL: never opens an existing file or follows a link
        except FileExistsError:
            continue
        return temporary, os.fdopen(fd, "wb")


def _new_folder(parent: Path, prefix: str) -> Path:
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(0o777)  # the umask applies, as for any folder the user makes
        except FileExistsError:
            continue
        return folder


@contextmanager
def atomic_writer(path: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary handle onto a temporary file beside `path` that becomes `path` only when the block succeeds: then
    the file is fsynced, renamed into place (mode 0o666 & ~umask) and the folder fsynced. On any failure the
    temporary file is removed; a full disk, quota or a refused output is an OutputError (one line)."""
    path = Path(path)
    output_folder(path.parent)
    try:
        temporary, handle = _new_temporary(path, suffix)
    except OSError as error:
        if error.errno in NO_SPACE | NOT_ALLOWED:
            raise output_error(path, error) from None
        raise
    committing = False
    try:
        with handle:
            yield handle
            committing = True
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        # Inside the block only a full disk is surely this file's fault (the block may read other files); once the
        # block is done, any refusal is the output's.
        if isinstance(error, OSError) and (error.errno in NO_SPACE or (committing and error.errno in NOT_ALLOWED)):
            raise output_error(path, error) from None
        raise


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically (see atomic_writer): readers see the old or the new file."""
    with atomic_writer(path) as handle:
        handle.write(payload)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging folder (mode 0o777 & ~umask) that replaces `target` only when the block succeeds; write its
    files with atomic_writer/atomic_write_bytes so that each is fsynced."""
    target = Path(target)
    output_folder(target.parent)
    try:
        staging = _new_folder(target.parent, f".{target.name}.tmp-")
    except OSError as error:
        if error.errno in NO_SPACE | NOT_ALLOWED:
            raise output_error(target, error) from None
        raise
    try:
        yield staging
        _fsync_folder(staging)
        if target.exists():
            trash = _new_folder(target.parent, f".{target.name}.old-")
            os.replace(target, trash / "old")
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
        _fsync_folder(target.parent)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise output_error(target, error) from None
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def open_input(path: Path, what: str = "input file") -> BinaryIO:
    """Open an input for reading; a missing, unreadable or non-file input is a one-line DataError naming it."""
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{what} not found: {path}") from None
    except (PermissionError, IsADirectoryError) as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror}") from None


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def load_torch_file(path: Path, what: str = "checkpoint") -> dict:
    """A checkpoint or model file, loaded without ever unpickling code (weights_only=True); a missing, corrupt or
    unsafe file is one DataError line (torch is imported here, on first use, as for atomic_torch_save)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise DataError(f"cannot load {what} {path}: {str(error).splitlines()[0]}") from None


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (torch is imported here, on first use, so that this module stays torch-free)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# The numbers `dvc metrics show` lists (those a run has): one short row per run.
HEADLINE_METRICS = (
    "test_error",
    "top5_error",
    "test_loss",
    "train_error",
    "train_loss",
    "single_crop_error",
    "parameters",
)


def details_file(metrics_file: Path) -> Path:
    """The companion of a metrics file: details.json beside metrics.json (X.details.json beside any other X.json)."""
    metrics_file = Path(metrics_file)
    if metrics_file.name == METRICS_FILE:
        return metrics_file.with_name(DETAILS_FILE)
    return metrics_file.with_suffix(".details.json")


def write_evaluation(result: dict[str, Any], out: Path) -> None:
    """Split `result` into the headline metrics (`out`) and the details (its companion), each written atomically;
    the details first, so that a metrics file never stands without them."""
    headline = {key: result[key] for key in HEADLINE_METRICS if key in result}
    details = {key: value for key, value in result.items() if key not in headline}
    atomic_write_bytes(details_file(out), (json.dumps(details, indent=2) + "\n").encode())
    atomic_write_bytes(Path(out), (json.dumps(headline, indent=2) + "\n").encode())
