"""What every evaluation of a trained run records beside its own scoring: top-1, top-k and per-class accuracy from
its scores, its last training figures, and the provenance (code, environment, devices, identity)."""

from __future__ import annotations

import csv
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .paths import EPOCHS_FILE, HISTORY_FILE
from .runtime import Runtime


def git_commit(where: Path | None = None) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def accuracy_metrics(
    scores: torch.Tensor, truth: torch.Tensor, classes: list[str]
) -> tuple[dict[str, Any], torch.Tensor]:
    """Top-1 error and accuracy, top-k accuracy (k = 5, or fewer classes) and per-class accuracy of `scores`
    ([N, classes] logits or probabilities) against `truth`, as metrics.json keys; and the confusion matrix."""
    k = min(5, len(classes))
    top = scores.topk(k, dim=1).indices
    predicted = top[:, 0]
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1)).tolist()
    accuracy = (predicted == truth).double().mean().item()
    top_k = round((top == truth[:, None]).any(1).double().mean().item(), 6)
    metrics = {
        "test_error": round(1 - accuracy, 6),
        "top1_accuracy": round(accuracy, 6),
        f"top{k}_accuracy": top_k,
        f"top{k}_error": round(1 - top_k, 6),
        "per_class_accuracy": {name: round(value, 6) for name, value in zip(classes, per_class, strict=True)},
    }
    return metrics, confusion


def last_train_row(run_dir: Path) -> dict[str, float]:
    for name in (EPOCHS_FILE, HISTORY_FILE):
        path = run_dir / name
        if path.is_file():
            rows = list(csv.DictReader(path.open()))
            if rows:
                return {"train_loss": float(rows[-1]["train_loss"]), "train_error": float(rows[-1]["train_error"])}
    return {}


def provenance(saved: dict, runtime: Runtime) -> dict[str, Any]:
    """Where a result came from: code, environment, devices, seed and the run's configuration hash."""
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "train_device": saved["runtime"]["device"],
        "train_runtime": saved["runtime"]["note"],
        "train_processor": saved["runtime"].get("processor"),  # absent from model files written before it was kept
        "train_precision": saved["runtime"]["precision"],
        "eval_device": str(runtime.device),
        "eval_runtime": runtime.note,
        "seed": saved["seed"],
        "config_hash": saved["run_id"],
        "settings": saved["settings"],
        "dataset_sha256": saved["dataset"]["sha256"],
    }
