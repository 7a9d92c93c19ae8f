"""model.pt, a finished run's result: its weights, what rebuilds its model, and what ran; written by the trainers,
read back by evaluation and analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .errors import DataError
from .models import build_model
from .runfiles import atomic_torch_save, load_torch_file

if TYPE_CHECKING:
    from .runspec import RunSpec

# model.pt's layout (keys and their meaning): the trainers write it, evaluation refuses any other.
MODEL_FORMAT = 1


@dataclass(frozen=True)
class DataFacts:
    """What a run's data says about it: its identity, and the shape of the model's input and output."""

    name: str
    sha256: str
    num_classes: int
    in_channels: int
    image_size: int


def write_model_file(
    path: Path, spec: RunSpec, run_id: str, data: DataFacts, runtime: dict[str, Any], model: nn.Module
) -> None:
    """model.pt of `spec`'s run: the weights (on the CPU), its identity and settings, and `runtime`, what ran."""
    payload = {
        "format": MODEL_FORMAT,
        "model_name": spec.model,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "model_options": spec.settings.model_options,
        "seed": spec.seed,
        "run_id": run_id,
        "settings": spec.settings.to_dict(),
        "dataset": {"name": data.name, "sha256": data.sha256},
        "runtime": runtime,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def load_trained_model(path: Path) -> tuple[nn.Module, dict]:
    """The model stored in a model.pt written by a trainer, rebuilt, and the file's other entries."""
    saved = load_torch_file(path)
    if saved.get("format") != MODEL_FORMAT or "model_name" not in saved:
        raise DataError(f"{path} is not a final model file written by `resnet-repro train`")
    model = build_model(
        saved["model_name"], saved["num_classes"], saved["in_channels"], saved["image_size"], **saved["model_options"]
    )
    model.load_state_dict(saved["model"])
    return model, saved
