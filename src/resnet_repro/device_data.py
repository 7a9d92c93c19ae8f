"""A prepared dataset resident on the device: the paper's normalization, whole-batch augmentation as tensor ops,
and batched evaluation of a model on its held-out split (what training, evaluation and analysis share)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prepared import CIFAR_AUGMENT, PreparedData
from .settings import TrainSettings

if TYPE_CHECKING:
    from .runtime import Runtime


class DeviceData:
    """A prepared dataset resident on the training device, with the paper's preprocessing and augmentation
    applied to whole batches as tensor operations."""

    def __init__(self, data: PreparedData, settings: TrainSettings, device: torch.device) -> None:
        self.train_x = torch.from_numpy(data.train_images).to(device)
        self.train_y = torch.from_numpy(data.train_labels).to(device)
        self.test_x = torch.from_numpy(data.test_images).to(device)
        self.test_y = torch.from_numpy(data.test_labels).to(device)
        pixels = self.train_x.float().div_(255)
        self.mean = pixels.mean(0, keepdim=True)  # per-pixel mean image [1,C,H,W], as the paper
        if settings.normalize == "channel":
            self.mean = pixels.mean((0, 2, 3), keepdim=True)
            self.std = pixels.std((0, 2, 3), keepdim=True)
        else:
            self.std = torch.ones_like(self.mean[:, :, :1, :1])
        del pixels
        augment = {**data.meta.get("augment", CIFAR_AUGMENT), **(settings.augment or {})}
        self.pad, self.flip = int(augment["pad"]), bool(augment["flip"])
        self.device = device

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float().div_(255) - self.mean) / self.std

    def epoch_randomness(self, seed: int, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Order, crop offsets and flips for every sample of one epoch, from (seed, epoch) alone: resuming
        mid-epoch regenerates exactly what the interrupted run used."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n = len(self.train_y)
        order = torch.randperm(n, generator=generator)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        if not self.flip:
            flips.zero_()
        if self.device.type == "cuda":  # pinned + non-blocking: the copy does not stall the queued steps
            order, offsets, flips = (t.pin_memory() for t in (order, offsets, flips))
        move = {"device": self.device, "non_blocking": self.device.type == "cuda"}
        return order.to(**move), offsets.to(**move), flips.to(**move)

    def batch(self, index: Tensor, offsets: Tensor, flips: Tensor) -> tuple[Tensor, Tensor]:
        """Normalize, zero-pad, random-crop and flip a batch in one pass of tensor ops."""
        x = self.normalize(self.train_x[index])
        return augment_batch(x, offsets, flips, self.pad), self.train_y[index]


def augment_batch(x: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Per-sample random crops of a zero-padded batch via one gather, and per-sample flips via `where`."""
    if pad:
        b, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B,1,H,1]
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B,1,1,W]
        flat = padded.reshape(b, c, -1)
        index = (rows * (w + 2 * pad) + cols).expand(b, c, h, w).reshape(b, c, -1)
        x = flat.gather(2, index).reshape(b, c, h, w)
    return torch.where(flips[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def evaluate_arrays(
    model: nn.Module, data: DeviceData, runtime: Runtime, batch_size: int = 1000
) -> tuple[Tensor, Tensor]:
    """Logits (fp32, on CPU) and labels for the whole test split: single original view, no augmentation."""
    model.eval()
    outputs = []
    for start in range(0, len(data.test_y), batch_size):
        x = data.normalize(data.test_x[start : start + batch_size])
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            outputs.append(model(x).float())
    model.train()
    return torch.cat(outputs).cpu(), data.test_y.cpu()
