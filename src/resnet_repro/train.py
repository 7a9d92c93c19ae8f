"""The trainer: the whole dataset on the device, whole-batch augmentation, a plain SGD loop.

Files in the run folder:
    checkpoint.pt  resume state, rewritten atomically every `checkpoint_every` iterations and on SIGTERM/SIGUSR1/
                   SIGINT; removed when the run completes
    model.pt       the final weights and what is needed to rebuild the model (the run's result)
    history.csv    one row per evaluation: iteration, epoch, lr, train loss/error since the last row, test
                   loss/error, images/s
    epochs.csv     one row per completed epoch: train loss/error over the epoch
Everything that must be bitwise reproducible (model.pt, the losses and errors) is independent of timing.

This module holds the trainer's step code; the data on the device is resnet_repro.device_data's, the run itself
(resume, checks, cadence, files) resnet_repro.core's, shared with the data-parallel trainer (distributed.py), and
its steps run as resnet_repro.runtime chooses, through resnet_repro.step.

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import TrainingRun
from .device_data import DeviceData, evaluate_arrays
from .modelfile import DataFacts
from .models import build_model
from .prepared import PreparedData, load_prepared
from .progress import ProgressLog
from .runspec import RunSpec
from .runtime import Runtime, choose_runtime, configure_backends, pick_device
from .settings import TrainSettings
from .step import Forward, make_optimizer, train_step
from .world import stop_signals


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
        self.model, self.optimizer, self.data = model, optimizer, data
        self.seed, self.batch = seed, batch
        self.steps_per_epoch = len(data.train_y) // batch
        self._epoch: tuple[int, tuple[Tensor, Tensor, Tensor]] | None = None
        self.forward = Forward(model, runtime)

    @property
    def runtime(self) -> Runtime:
        """What the steps run as now (after a compile fallback: eager)."""
        return self.forward.runtime

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
        return train_step(self.forward, self.optimizer, x, y, lr)

    def run(self, start: int, count: int, lr_at: Callable[[int], float]) -> Tensor:
        """`count` steps from iteration `start` (for benchmarks): their losses, on the device, unsynchronized."""
        losses = torch.empty(count, device=self.data.device)
        for offset in range(count):
            losses[offset] = self.step(start + offset, lr_at(start + offset))[0]
        return losses

    def evaluate(self) -> tuple[float, float]:
        logits, labels = evaluate_arrays(self.model, self.data, self.runtime)
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) != labels).float().mean().item()


def train(spec: RunSpec, data_dir: Path, out: Path, device: str = "auto", log: ProgressLog | None = None) -> Path:
    """Train run `spec` on the prepared data in `data_dir` into `out` to completion (resuming a matching checkpoint);
    return the path of model.pt."""
    settings = spec.settings
    with stop_signals() as stop:
        target = pick_device(device)
        data = load_prepared(data_dir, settings.split)
        model, optimizer, device_data, runtime = build_training(spec.model, settings, data, target, spec.seed)
        n = len(device_data.train_y)
        facts = DataFacts(
            data.meta["name"], data.meta["sha256"], data.num_classes, int(data.meta["channels"]),
            int(data.meta["image_size"]),
        )  # fmt: skip
        run = TrainingRun(spec, out, facts, model, optimizer, target, stop, log=log)
        steps = StepRunner(model, optimizer, device_data, runtime, spec.seed, min(settings.batch_size, n))
        describe = f"on {data.meta['name']} [{n} train / {len(device_data.test_y)} {settings.split}], seed {spec.seed}"
        return run.train(steps, f"{describe}, {settings.iterations} iterations")
