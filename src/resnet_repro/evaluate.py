"""Evaluation of a trained run: metrics.json with errors, top-k, per-class accuracy, confusion matrix and
provenance. Nothing in it depends on timing, so equal runs give byte-equal files."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from .core import choose_runtime, load_checkpoint, pick_device
from .data import load_prepared
from .errors import DataError
from .models import build_model, count_parameters
from .runfiles import atomic_write_bytes
from .settings import TrainSettings
from .train import DeviceData, evaluate_arrays


def git_commit(where: Path | None = None) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_trained_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model stored in a model.pt written by the trainer."""
    saved = load_checkpoint(path)
    if saved.get("format") != 1 or "model_name" not in saved:
        raise DataError(f"{path} is not a final model file written by `resnet-repro train`")
    model = build_model(
        saved["model_name"], saved["num_classes"], saved["in_channels"], saved["image_size"], **saved["model_options"]
    )
    model.load_state_dict(saved["model"])
    return model, saved


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
    metrics = {
        "test_error": round(1 - accuracy, 6),
        "top1_accuracy": round(accuracy, 6),
        f"top{k}_accuracy": round((top == truth[:, None]).any(1).double().mean().item(), 6),
        "per_class_accuracy": {name: round(value, 6) for name, value in zip(classes, per_class, strict=True)},
    }
    return metrics, confusion


def _last_train_row(run_dir: Path) -> dict[str, float]:
    for name in ("epochs.csv", "history.csv"):
        path = run_dir / name
        if path.is_file():
            rows = list(csv.DictReader(path.open()))
            if rows:
                return {"train_loss": float(rows[-1]["train_loss"]), "train_error": float(rows[-1]["train_error"])}
    return {}


def provenance(saved: dict, eval_device: torch.device) -> dict[str, Any]:
    """Where a result came from: code, environment, devices, seed and the run's configuration hash."""
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "train_device": saved["runtime"]["device"],
        "train_runtime": saved["runtime"]["note"],
        "eval_device": str(eval_device),
        "seed": saved["seed"],
        "config_hash": saved["run_id"],
        "settings": saved["settings"],
        "dataset_sha256": saved["dataset"]["sha256"],
    }


def evaluate(model_path: Path, data_dir: Path, out: Path, device: str = "auto") -> dict[str, Any]:
    model_path = Path(model_path)
    model, saved = load_trained_model(model_path)
    settings = TrainSettings.from_dict(saved["settings"])
    data = load_prepared(data_dir, settings.split)
    if data.meta["sha256"] != saved["dataset"]["sha256"]:
        raise DataError(
            f"{model_path} was trained on data {saved['dataset']['sha256'][:12]}, but {data_dir} holds "
            f"{data.meta['sha256'][:12]}; evaluate it on the data it was trained with"
        )
    target = pick_device(device)
    runtime = choose_runtime(settings, target)
    model.to(target)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    logits, labels = evaluate_arrays(model, DeviceData(data, settings, target), runtime)
    accuracy, confusion = accuracy_metrics(logits, labels, data.meta["classes"])
    metrics: dict[str, Any] = {
        "model": saved["model_name"],
        "dataset": saved["dataset"]["name"],
        "split": settings.split,
        "seed": saved["seed"],
        **accuracy,
        "test_loss": round(F.cross_entropy(logits, labels).item(), 6),
        **{key: round(value, 6) for key, value in _last_train_row(model_path.parent).items()},
        "parameters": count_parameters(model),
        # Sample sizes behind the errors: the verdict's binomial noise of a single run.
        "test_images": len(labels),
        "train_images": len(data.train_labels),
        "confusion_matrix": confusion.tolist(),
        "provenance": provenance(saved, target),
    }
    atomic_write_bytes(Path(out), (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics
