"""Paper Fig. 7's analysis: the standard deviation of layer responses on the test set.

The responses are the outputs of each 3x3 convolution's batch norm, before the ReLU or the addition of the
shortcut (`models.response_layers`). Forward hooks accumulate per-channel sums in float64 over the whole test
split, so the result does not depend on the batch size and no activation is kept in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .device_data import DeviceData
from .errors import DataError
from .modelfile import load_trained_model
from .models import response_layers
from .prepared import load_prepared
from .runfiles import atomic_write_bytes
from .runtime import pick_device
from .settings import TrainSettings


class _Moments:
    """Running per-channel count, sum and sum of squares of one layer's output."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def __call__(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        x = output.detach().double()
        dims = [d for d in range(x.dim()) if d != 1]  # everything but channels
        total, squares = x.sum(dims), (x * x).sum(dims)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.numel() // x.shape[1]

    def result(self) -> dict[str, float]:
        assert self.total is not None and self.squares is not None
        mean_c = self.total / self.count
        var_c = (self.squares / self.count - mean_c**2).clamp(min=0)
        # Whole-layer std (over images, positions and channels): what Fig. 7 plots.
        mean = self.total.sum() / (self.count * len(self.total))
        var = max(0.0, float(self.squares.sum() / (self.count * len(self.total)) - mean**2))
        return {
            "std": round(math.sqrt(var), 8),
            "channel_std_mean": round(float(var_c.sqrt().mean()), 8),
            "mean": round(float(mean), 8),
        }


@torch.no_grad()
def layer_responses(model_path: Path, data_dir: Path, device: str = "auto", batch_size: int = 500) -> dict[str, Any]:
    """The std of every response layer's output over the run's evaluation split, in network order."""
    model_path = Path(model_path)
    model, saved = load_trained_model(model_path)
    layers = response_layers(model)
    if not layers:
        raise DataError(
            f"{saved['model_name']} has no residual-stage 3x3 layers to analyse (Fig. 7 needs a ResNet/plain net)"
        )
    settings = TrainSettings.from_dict(saved["settings"])
    data = load_prepared(data_dir, settings.split)
    if data.meta["sha256"] != saved["dataset"]["sha256"]:
        raise DataError(f"{model_path} was trained on other data than {data_dir}; analyse it on its own data")
    target = pick_device(device)
    model.to(target).eval()
    names = {module: name for name, module in model.named_modules()}
    moments = [_Moments() for _ in layers]
    hooks = [layer.register_forward_hook(m) for layer, m in zip(layers, moments, strict=True)]
    try:
        device_data = DeviceData(data, settings, target)
        for start in range(0, len(device_data.test_y), batch_size):
            model(device_data.normalize(device_data.test_x[start : start + batch_size]))  # fp32: exact stds
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "model": saved["model_name"],
        "dataset": saved["dataset"]["name"],
        "seed": saved["seed"],
        "split": settings.split,
        "images": len(device_data.test_y),
        "definition": "std of each 3x3 layer's output after BN, before ReLU/addition, over the evaluation split",
        "layers": [
            {"index": i + 1, "name": names[layer], **m.result()}
            for i, (layer, m) in enumerate(zip(layers, moments, strict=True))
        ],
    }


def write_responses(model_path: Path, data_dir: Path, out: Path, device: str = "auto") -> dict[str, Any]:
    result = layer_responses(model_path, data_dir, device)
    atomic_write_bytes(Path(out), (json.dumps(result, indent=2) + "\n").encode())
    return result
