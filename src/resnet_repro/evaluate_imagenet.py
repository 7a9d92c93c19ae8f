"""Evaluation of a trained ImageNet run: 10-crop top-1/top-5 error on the validation images (the paper's Table 2
protocol), the centre crop alone beside it; the same metrics.json and details.json as every other evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import DataError
from .evaluation import accuracy_metrics, last_train_row, provenance
from .imagenet import Augment, TestImages, load_index, normalizer, worker_init
from .modelfile import load_trained_model
from .models import count_parameters
from .runfiles import write_evaluation
from .runtime import configure_backends, evaluation_runtime, pick_device
from .settings import TrainSettings


def evaluate_imagenet(
    model_path: Path, data_dir: Path, out: Path, device: str = "auto", workers: int = 4, batch_size: int = 50
) -> dict[str, Any]:
    """metrics.json and details.json of an ImageNet run: 10-crop top-1/top-5 error as test_error (Table 2's
    protocol), the single centre crop as single_crop_error; the same keys evaluate.py writes for the other
    datasets."""
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
        **{key: round(value, 6) for key, value in last_train_row(model_path.parent).items()},
        "parameters": count_parameters(model),
        # 1000x1000 would be megabytes of JSON, mostly zeros: kept only for small class counts.
        # The validation images the errors rest on: the verdict's binomial noise of a single run. No train_images:
        # ImageNet's training error is a running error over an interval of the stream, not one fixed set.
        "test_images": len(truth),
        **({"confusion_matrix": confusion.tolist()} if len(classes) <= 100 else {}),
        "provenance": {
            **provenance(saved, runtime),
            "train_world_size": saved["runtime"].get("world_size", 1),
            "dataset_root": index.meta["root"],
        },
    }
    write_evaluation(metrics, Path(out))
    return metrics
