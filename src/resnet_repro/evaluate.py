"""Evaluation of a trained run: its headline numbers (metrics.json) and the rest (details.json).

metrics.json holds what runs are compared by (`dvc metrics show/diff`): errors, losses and the parameter count.
details.json beside it holds the run's identity, top-k and per-class accuracy, the confusion matrix, the sample
sizes and the provenance. Nothing in either depends on timing, so equal runs give byte-equal files."""

from __future__ import annotations

import csv
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from .data import load_prepared
from .errors import DataError
from .models import build_model, count_parameters
from .paths import EPOCHS_FILE, HISTORY_FILE
from .runfiles import MODEL_FORMAT, write_evaluation
from .runtime import Runtime, configure_backends, evaluation_runtime, pick_device
from .settings import TrainSettings
from .state import load_checkpoint
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
    if saved.get("format") != MODEL_FORMAT or "model_name" not in saved:
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
    top_k = round((top == truth[:, None]).any(1).double().mean().item(), 6)
    metrics = {
        "test_error": round(1 - accuracy, 6),
        "top1_accuracy": round(accuracy, 6),
        f"top{k}_accuracy": top_k,
        f"top{k}_error": round(1 - top_k, 6),
        "per_class_accuracy": {name: round(value, 6) for name, value in zip(classes, per_class, strict=True)},
    }
    return metrics, confusion


def _last_train_row(run_dir: Path) -> dict[str, float]:
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
        "eval_device": str(runtime.device),
        "eval_runtime": runtime.note,
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
        **{key: round(value, 6) for key, value in _last_train_row(model_path.parent).items()},
        "parameters": count_parameters(model),
        # Sample sizes behind the errors: the verdict's binomial noise of a single run.
        "test_images": len(labels),
        "train_images": len(data.train_labels),
        "confusion_matrix": confusion.tolist(),
        "provenance": provenance(saved, runtime),
    }
    write_evaluation(metrics, Path(out))
    return metrics


def evaluate_imagenet(
    model_path: Path, data_dir: Path, out: Path, device: str = "auto", workers: int = 4, batch_size: int = 50
) -> dict[str, Any]:
    """metrics.json and details.json of an ImageNet run: 10-crop top-1/top-5 error as test_error (Table 2's
    protocol), the single centre crop as single_crop_error; the same keys evaluate.py writes for the other
    datasets."""

    from .imagenet import Augment, TestImages, load_index, normalizer, worker_init

    model_path = Path(model_path)
    model, saved = load_trained_model(model_path)
    index = load_index(data_dir)
    if index.sha256 != saved["dataset"]["sha256"]:
        raise DataError(
            f"{model_path} was trained on ImageNet copy {saved['dataset']['sha256'][:12]}, but {data_dir} indexes "
            f"{index.sha256[:12]}; evaluate it on the data it was trained with"
        )
    settings = TrainSettings.from_dict(saved["settings"])
    augment = Augment.from_settings(settings.augment)
    target = pick_device(device)
    runtime = evaluation_runtime(saved["runtime"], target)
    configure_backends(runtime)
    model.to(target).eval()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = normalizer(index, settings.normalize, target)
    loader = torch.utils.data.DataLoader(
        TestImages(index, augment, ten_crop=True),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        pin_memory=target.type == "cuda",
    )
    probs_10, logits_1, labels = [], [], []
    with torch.no_grad():
        for views, y in loader:
            b, v = views.shape[:2]
            x = views.to(target, non_blocking=True).flatten(0, 1).float().div_(255).sub_(mean).div_(std)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = model(x).float().view(b, v, -1)
            probs_10.append(logits.softmax(-1).mean(1).cpu())
            logits_1.append(logits[:, 0].cpu())
            labels.append(y)
    probs, single, truth = torch.cat(probs_10), torch.cat(logits_1), torch.cat(labels)
    classes = index.classes
    accuracy, confusion = accuracy_metrics(probs, truth, classes)
    k = min(5, len(classes))
    single_top = single.topk(k, dim=1).indices
    metrics: dict[str, Any] = {
        "model": saved["model_name"],
        "dataset": "imagenet",
        "split": "val",
        "seed": saved["seed"],
        **accuracy,
        "test_loss": round(F.nll_loss(probs.clamp(min=1e-12).log(), truth).item(), 6),
        "testing": "10-crop (shorter side resized to test_resize; centre, 4 corners and their mirrors; mean softmax)",
        "single_crop_error": round(1 - (single_top[:, 0] == truth).double().mean().item(), 6),
        f"single_crop_top{k}_error": round(1 - (single_top == truth[:, None]).any(1).double().mean().item(), 6),
        "single_crop_loss": round(F.cross_entropy(single, truth).item(), 6),
        **{key: round(value, 6) for key, value in _last_train_row(model_path.parent).items()},
        "parameters": count_parameters(model),
        "test_images": len(truth),  # the validation images the errors rest on: the verdict's binomial noise
        # 1000x1000 would be megabytes of JSON, mostly zeros: kept only for small class counts.
        **({"confusion_matrix": confusion.tolist()} if len(classes) <= 100 else {}),
        "provenance": {
            **provenance(saved, runtime),
            "train_world_size": saved["runtime"].get("world_size", 1),
            "dataset_root": index.meta["root"],
        },
    }
    write_evaluation(metrics, Path(out))
    return metrics
