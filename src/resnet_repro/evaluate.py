"""Evaluation of a trained run on its prepared dataset: the headline numbers (metrics.json) and the rest (details.json).

metrics.json holds what runs are compared by (`dvc metrics show/diff`): errors, losses and the parameter count.
details.json beside it holds the run's identity, top-k and per-class accuracy, the confusion matrix, the sample
sizes and the provenance. Nothing in either depends on timing, so equal runs give byte-equal files. ImageNet runs
are evaluated by resnet_repro.evaluate_imagenet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .device_data import DeviceData, evaluate_arrays
from .errors import DataError
from .evaluation import accuracy_metrics, last_train_row, provenance
from .modelfile import load_trained_model
from .models import count_parameters
from .prepared import load_prepared
from .runfiles import write_evaluation
from .runtime import configure_backends, evaluation_runtime, pick_device
from .settings import TrainSettings


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
    runtime = evaluation_runtime(saved["runtime"], target)
    configure_backends(runtime)
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
        **{key: round(value, 6) for key, value in last_train_row(model_path.parent).items()},
        "parameters": count_parameters(model),
        # Sample sizes behind the errors: the verdict's binomial noise of a single run.
        "test_images": len(labels),
        "train_images": len(data.train_labels),
        "confusion_matrix": confusion.tolist(),
        "provenance": provenance(saved, runtime),
    }
    write_evaluation(metrics, Path(out))
    return metrics
