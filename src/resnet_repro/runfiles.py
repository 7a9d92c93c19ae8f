"""Run-file formats and atomic writers, torch-free: what the trainers write and render and the tests read.

history.csv  one row per evaluation (HISTORY_FIELDS); the TIMING_FIELDS measure the machine, not learning, and are
             left out of reproducibility checks
epochs.csv   one row per completed epoch (EPOCH_FIELDS)
metrics.json the headline numbers of an evaluation (HEADLINE_METRICS: what `dvc metrics show` lists)
details.json the rest of it: identity, top-k and per-class accuracy, confusion matrix, sample sizes, provenance
Every file is written whole to a temporary file in the same folder and renamed: a reader sees the old or the new
file, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .paths import DETAILS_FILE, METRICS_FILE

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
