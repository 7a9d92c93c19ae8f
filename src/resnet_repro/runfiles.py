"""Run-file formats and atomic writers, torch-free: what the trainers write and render and the tests read.

history.csv  one row per evaluation (HISTORY_FIELDS); the TIMING_FIELDS measure the machine, not learning, and are
             left out of reproducibility checks
epochs.csv   one row per completed epoch (EPOCH_FIELDS)
Every file is written whole to a temporary file in the same folder and renamed: a reader sees the old or the new
file, never half of one.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

HISTORY_FIELDS = [
    "iteration",
    "epoch",
    "lr",
    "train_loss",
    "train_error",
    "test_loss",
    "test_error",
    "images_per_s",
    "elapsed_s",
    "wall_s",
    "threads",
]
EPOCH_FIELDS = ["epoch", "iteration", "lr", "train_loss", "train_error", "images_per_s"]
# Fields of a history row that measure the machine rather than learning: excluded from reproducibility checks.
TIMING_FIELDS = {"images_per_s", "elapsed_s", "wall_s", "threads"}


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (torch is imported here, on first use, so that this module stays torch-free)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
