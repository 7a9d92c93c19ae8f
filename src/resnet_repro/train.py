"""The trainer: the whole dataset on the device, whole-batch augmentation, a plain SGD loop.

Files in the run folder:
    checkpoint.pt  resume state, rewritten atomically every `checkpoint_every` iterations and on SIGTERM/SIGUSR1/
                   SIGINT; removed when the run completes
    model.pt       the final weights and what is needed to rebuild the model (the run's result)
    history.csv    one row per evaluation: iteration, epoch, lr, train loss/error since the last row, test
                   loss/error, images/s
    epochs.csv     one row per completed epoch: train loss/error over the epoch
Everything that must be bitwise reproducible (model.pt, the losses and errors) is independent of timing.

This module holds the trainer's data and step code; the run itself (runtime choice, resume, checks, cadence,
files) is resnet_repro.core's, shared with the data-parallel trainer (distributed.py), and its steps run as
resnet_repro.runtime chooses.

Speed: the whole prepared dataset lives on the training device and batches are augmented there (StepRunner); bf16
autocast and channels-last where the device has fast bf16 (CUDA; CPUs with AMX or AVX512-BF16); on CUDA also
cudnn.benchmark, a fused SGD step and, for runs long enough to repay compilation (runtime.COMPILE_MIN_ITERATIONS),
torch.compile with CUDA graphs.
Reproducibility: on CPU the default path is bitwise reproducible for a given thread count (tests/test_speed.py).
On CUDA, cudnn.benchmark's algorithm choice and atomic adds in some backward kernels make two runs agree to noise,
not to the bit; `precision: fp32` does not change that, and `compile: off` only removes compile's own choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import Job, Run
from .data import CIFAR_AUGMENT, PreparedData, load_prepared
from .models import build_model
from .progress import ProgressLog
from .runtime import Forward, Runtime, choose_runtime, configure_backends, make_optimizer, pick_device, train_step
from .settings import TrainSettings, settings_hash
from .world import stop_signals


# ------------------------------------------------------------------------------------------- augmentation
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


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class RunSpec:
    model: str
    seed: int
    settings: TrainSettings
    data_dir: Path
    out_dir: Path
    device: str = "auto"


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


def build_training(
    model_name: str, settings: TrainSettings, data: PreparedData, device: torch.device, seed: int
) -> tuple[nn.Module, torch.optim.Optimizer, DeviceData, Runtime]:
    """The model (seeded, on the device, in the runtime's memory format), its optimizer, the device-resident
    data and the runtime choices: everything a run needs before its first step (the benchmark uses it too)."""
    runtime = choose_runtime(settings, device)
    configure_backends(runtime)
    torch.manual_seed(seed)
    size = int(data.meta["image_size"])
    model = build_model(model_name, data.num_classes, int(data.meta["channels"]), size, **settings.model_options)
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    device_data = DeviceData(data, settings, device)
    return model, make_optimizer(model, settings, runtime), device_data, runtime


class StepRunner:
    """The trainer's optimizer step: the batch of `iteration` from the epoch's (seed, epoch) randomness, assembled
    on the device, then forward, backward and update. Nothing here waits for the device. As the core's `Steps`, a
    batch is named by its iteration."""

    eval_name: str = "test"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: DeviceData,
        runtime: Runtime,
        seed: int,
        batch: int,
    ) -> None:
        self.model, self.optimizer, self.data, self.runtime = model, optimizer, data, runtime
        self.seed, self.batch = seed, batch
        self.steps_per_epoch = len(data.train_y) // batch
        self._epoch: tuple[int, tuple[Tensor, Tensor, Tensor]] | None = None
        self.forward = Forward(model, runtime)

    def batch_at(self, iteration: int) -> tuple[Tensor, Tensor]:
        """Normalized, augmented images and labels of the batch trained at `iteration`."""
        epoch, position = divmod(iteration, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.data.epoch_randomness(self.seed, epoch))
        order, offsets, flips = self._epoch[1]
        index = order[position * self.batch : (position + 1) * self.batch]
        x, y = self.data.batch(index, offsets[index], flips[index])
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def batches(self, start: int) -> Iterable[int]:
        return range(start, (start // self.steps_per_epoch + 1) * self.steps_per_epoch)

    def step(self, iteration: int, lr: float) -> tuple[Tensor, Tensor]:
        """Train on the batch of `iteration` at learning rate `lr`; return its loss and the number of wrong
        predictions, as device tensors (reading them is what synchronizes)."""
        x, y = self.batch_at(iteration)
        return train_step(self.forward, self.optimizer, self.runtime, x, y, lr)

    def run(self, start: int, count: int, lr_at: Callable[[int], float]) -> Tensor:
        """`count` steps from iteration `start` (for benchmarks): their losses, on the device, unsynchronized."""
        losses = torch.empty(count, device=self.data.device)
        for offset in range(count):
            losses[offset] = self.step(start + offset, lr_at(start + offset))[0]
        return losses

    def evaluate(self) -> tuple[float, float]:
        logits, labels = evaluate_arrays(self.model, self.data, self.runtime)
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) != labels).float().mean().item()


def train(spec: RunSpec, log: ProgressLog | None = None) -> Path:
    """Train one run to completion (resuming a matching checkpoint) and return the path of model.pt."""
    settings = spec.settings
    with stop_signals() as stop:
        device = pick_device(spec.device)
        data = load_prepared(spec.data_dir, settings.split)
        model, optimizer, device_data, runtime = build_training(spec.model, settings, data, device, spec.seed)
        n = len(device_data.train_y)
        job = Job(
            model_name=spec.model,
            seed=spec.seed,
            settings=settings,
            run_id=settings_hash(spec.model, data.meta["sha256"], spec.seed, settings),
            out=Path(spec.out_dir),
            dataset={"name": data.meta["name"], "sha256": data.meta["sha256"]},
            num_classes=data.num_classes,
            in_channels=int(data.meta["channels"]),
            image_size=int(data.meta["image_size"]),
        )
        run = Run(job, model, optimizer, runtime, stop, log=log)
        run.resume()
        steps = StepRunner(model, optimizer, device_data, runtime, spec.seed, min(settings.batch_size, n))
        describe = f"on {data.meta['name']} [{n} train / {len(device_data.test_y)} {settings.split}], seed {spec.seed}"
        return run.train(steps, f"{describe}, {settings.iterations} iterations")
