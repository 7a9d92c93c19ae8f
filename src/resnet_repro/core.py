"""One training run, shared by both trainers: resume, the loop with its checks and stops, and the files it writes.

The CIFAR trainer (train.py: the whole dataset resident on the device) and the data-parallel trainer
(distributed.py: a streaming loader, one process per GPU under torchrun) each supply only their data and step code,
as a `Steps` object. A `TrainingRun` does the rest, once:

* resume: the run's checkpoint, if any, is continued (resnet_repro.checkpoint);
* the loop: each step (the first compiled ones guarded, resnet_repro.step), then every `check_every` steps (and at
  epoch ends, evaluations and stops) one check: one sync, one all-reduce with several processes, of the window of
  per-step losses and of any stop request; the NaN check; the tallies; and what falls due: an epoch row, an
  evaluation (history.csv), a checkpoint, a stop on SIGTERM/SIGUSR1/SIGINT;
* the files: history.csv and epochs.csv after each evaluation, model.pt at the end, by rank 0 only.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoints
from .errors import Interrupted, TrainingDiverged
from .modelfile import DataFacts, write_model_file
from .models import count_parameters
from .paths import CHECKPOINT_FILE, EPOCHS_FILE, HISTORY_FILE, MODEL_FILE
from .progress import ProgressLog
from .runfiles import EPOCH_FIELDS, HISTORY_FIELDS, EpochRow, HistoryRow, output_folder, write_csv
from .runspec import RunSpec
from .settings import TrainSettings
from .step import CompileGuard, Forward
from .world import SINGLE, Collective, World


class Steps(Protocol):
    """A trainer's own part of a run: its data and its optimizer step."""

    steps_per_epoch: int
    batch: int  # the global batch: samples per step over all processes
    forward: Forward  # the training forward pass the step uses, and the runtime it runs as
    eval_name: str  # what `evaluate` measures, for the log ("test", "val (centre crop)")

    def batches(self, start: int) -> Iterable[Any]:
        """What `step` takes, for the iterations from `start` to the end of its epoch."""
        ...

    def step(self, batch: Any, lr: float) -> tuple[Tensor, Tensor]:
        """One optimizer step at learning rate `lr`: this process's loss and number of wrong predictions, as
        device tensors, unsynchronized."""
        ...

    def evaluate(self) -> tuple[float, float]:
        """Loss and error of the current model on the held-out split (all processes together)."""
        ...


class StepWindow:
    """Per-step [loss, wrong] since the last check, kept on the device: no sync per step."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.values = torch.zeros(size, 2, dtype=torch.float64, device=device)
        self.start = 0

    def put(self, iteration: int, loss: Tensor, wrong: Tensor) -> None:
        self.values[iteration - self.start, 0] = loss
        self.values[iteration - self.start, 1] = wrong

    def take(self, iteration: int) -> Tensor:
        """The steps up to `iteration`; the window then starts there."""
        taken, self.start = self.values[: iteration - self.start], iteration
        return taken

    def sync(self, iteration: int, stop_here: bool, comm: Collective) -> tuple[list[float], int, bool]:
        """One sync (an all-reduce with several processes) of the steps up to `iteration`: their global losses, the
        number of wrong predictions, and whether any process must stop. Iteration counts are global: every rank
        checks alike."""
        flag = torch.tensor([[float(stop_here), 0.0]], dtype=torch.float64, device=self.values.device)
        payload = comm.sum_(torch.cat([self.take(iteration), flag])).cpu()
        losses = (payload[:-1, 0] / comm.world.size).tolist()
        return losses, int(payload[:-1, 1].sum().item()), payload[-1, 0].item() > 0


def check_due(iteration: int, settings: TrainSettings, steps_per_epoch: int, stop_now: bool) -> bool:
    """Whether `iteration` ends with a check: every check_every steps, at evaluations, epoch ends and the last step;
    and at once on a stop when a process is alone (`stop_now`: several processes agree on a stop at their next
    check)."""
    return (
        iteration % settings.check_every == 0
        or iteration % settings.eval_every == 0
        or iteration % steps_per_epoch == 0
        or iteration == settings.iterations
        or stop_now
    )


def diverged(losses: list[float], iteration: int, spec: RunSpec, last_checkpoint: int, path: Path) -> TrainingDiverged:
    """The error for a window of per-step `losses`, up to `iteration`, that holds a NaN or an infinity."""
    bad = next(i for i, value in enumerate(losses) if not math.isfinite(value))
    kept = (
        f"the last good checkpoint (iteration {last_checkpoint}) is kept in {path}"
        if last_checkpoint
        else "no checkpoint had been written yet"
    )
    return TrainingDiverged(
        f"loss became {losses[bad]} at iteration {iteration - len(losses) + bad + 1} of {spec.model} seed "
        f"{spec.seed}; training stopped and {kept}. Try a smaller learning rate or a warm-up."
    )


def interrupted(iteration: int, stop_local: int | None, path: Path) -> Interrupted:
    """The error that ends a run stopped at `iteration` (by signal `stop_local`, or another process's), its
    checkpoint saved at `path`."""
    cause = f"received {signal.Signals(stop_local).name}" if stop_local else "another process stopped"
    return Interrupted(
        f"stop requested at iteration {iteration} ({cause}); checkpoint saved to {path}; rerun the same command to "
        "resume"
    )


class TrainingRun:
    """One run of `spec` in this process, on data `data`, into the folder `out`; made, it has resumed its checkpoint."""

    def __init__(
        self,
        spec: RunSpec,
        out: Path,
        data: DataFacts,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        stop: Callable[[], int | None],
        world: World = SINGLE,
        log: ProgressLog | None = None,
        runtime_extra: dict[str, Any] | None = None,  # more of model.pt's "runtime" (world size, BN)
    ) -> None:
        self.spec, self.settings, self.out, self.data = spec, spec.settings, Path(out), data
        self.model, self.optimizer, self.device, self.stop = model, optimizer, device, stop
        self.world, self.comm, self.runtime_extra = world, Collective(world), runtime_extra or {}
        self.run_id = spec.identity(data.sha256)
        self.log = log or ProgressLog(self.settings.iterations, quiet=not world.main)  # rank 0 talks for all
        self.checkpoints = Checkpoints(self.out / CHECKPOINT_FILE, self.run_id, model, optimizer, device, self.comm)
        self.window = StepWindow(self.settings.check_every, device)
        self.state = self.checkpoints.resume(self.settings, self.log, f"{spec.model} seed {spec.seed}")
        self.wall_mark = time.monotonic()  # where this attempt's wall time is counted from
        self.clock = (self.wall_mark, self.state.iteration)  # (time, iteration) the throughput is measured from
        if world.main:
            output_folder(self.out)

    def train(self, steps: Steps, describe: str) -> Path:
        """Train to the end of the schedule (from the resumed iteration) and write model.pt; return its path.
        `describe`: the data and the batch, for the first log line ("on <data> [...], seed N, ...")."""
        try:
            guard = self.begin(steps, describe)
            state = self.state
            while state.iteration < self.settings.iterations:
                for item in steps.batches(state.iteration):
                    self.step(steps, guard, item)
                    if state.iteration % steps.steps_per_epoch == 0 or state.iteration >= self.settings.iterations:
                        break
            return self.write_model(steps.forward)
        finally:
            self.log.close()

    def begin(self, steps: Steps, describe: str) -> CompileGuard:
        """The run's first log lines; the guard of its first compiled steps."""
        guard = CompileGuard(steps.forward, self.model, self.optimizer, self.log, self.world)
        guard.begin(self.state.iteration, started=self.wall_mark)
        self.log.line(
            f"training {self.spec.model} ({count_parameters(self.model):,} parameters) {describe}, device "
            f"{self.device} ({steps.forward.runtime.note}), run {self.run_id}"
        )
        self.log.start(self.state.iteration)
        self.clock = (time.monotonic(), self.state.iteration)
        self.window.start = self.state.iteration
        self.model.train()
        return guard

    def step(self, steps: Steps, guard: CompileGuard, item: Any) -> None:
        """One optimizer step, then the check when one is due."""
        state, settings = self.state, self.settings
        iteration = state.iteration
        lr = settings.lr_at(iteration) if state.warmup_done else settings.warmup["lr"]
        loss, wrong, warmed_up = guard.step(lambda: steps.step(item, lr), iteration)
        if warmed_up:  # throughput from here on, without the compile time
            self.clock = (time.monotonic(), iteration + 1)
        self.window.put(iteration, loss, wrong)
        state.iteration = iteration + 1
        stop_local = self.stop()
        if check_due(state.iteration, settings, steps.steps_per_epoch, stop_local is not None and not self.comm.on):
            self.check(steps, lr, stop_local)

    def check(self, steps: Steps, lr: float, stop_local: int | None) -> None:
        """The per-check block: the window's losses synced and checked, the tallies, and whatever falls due at this
        iteration: progress and warm-up end, an epoch row, an evaluation, a checkpoint, a stop."""
        state, settings, iteration = self.state, self.settings, self.state.iteration
        losses, wrong, stop = self.window.sync(iteration, stop_local is not None, self.comm)
        if not all(math.isfinite(value) for value in losses):
            raise diverged(losses, iteration, self.spec, self.state.last_checkpoint, self.checkpoints.path)
        state.add(losses, wrong)
        elapsed = time.monotonic() - self.clock[0]
        images_per_s = round((iteration - self.clock[1]) / max(elapsed, 1e-9) * steps.batch, 1)
        if iteration % settings.check_every == 0:
            self.end_block(iteration, steps.batch)
        if iteration % steps.steps_per_epoch == 0:
            loss, error = state.epoch.take(steps.batch)
            state.epochs.append(
                asdict(EpochRow(iteration // steps.steps_per_epoch, iteration, lr, loss, error, images_per_s))
            )
        if iteration % settings.eval_every == 0 or iteration == settings.iterations:
            self.evaluate(steps, lr, images_per_s, elapsed)
        checkpoint_due = iteration % (settings.checkpoint_every or settings.eval_every) == 0
        if (checkpoint_due or stop) and iteration < settings.iterations:
            state.last_checkpoint = iteration
            self.checkpoints.save(state)
        if stop:
            self.comm.barrier()  # every process stops together, once the checkpoint is complete
            raise interrupted(iteration, stop_local, self.checkpoints.path)

    def end_block(self, iteration: int, batch: int) -> None:
        """A check aligned to check_every: the progress bar, and the end of the warm-up once it is due."""
        state, settings = self.state, self.settings
        loss, error = state.block.take(batch)
        self.log.bar(iteration, loss, error)
        if not state.warmup_done and error < settings.warmup["until_train_error"]:
            state.warmup_done = True
            self.log.line(f"warm-up ends at iteration {iteration} (train error {error:.3f}); lr back to {settings.lr}")

    def evaluate(self, steps: Steps, lr: float, images_per_s: float, elapsed: float) -> None:
        """An evaluation: rank 0's BN statistics everywhere, the held-out loss and error, the training figures
        since the last one, the wall time so far; as history.csv's next row, a log line, and the tables written."""
        state, iteration = self.state, self.state.iteration
        self.comm.broadcast_buffers(self.model)
        test_loss, test_error = steps.evaluate()
        train_loss, train_error = state.interval.take(steps.batch)
        now = time.monotonic()
        state.wall_s, self.wall_mark = state.wall_s + now - self.wall_mark, now
        epoch = round(iteration / steps.steps_per_epoch, 4)
        row = HistoryRow(
            iteration, epoch, lr, train_loss, train_error, test_loss, test_error, images_per_s, round(elapsed, 2),
            round(state.wall_s, 1), torch.get_num_threads(),
        )  # fmt: skip
        state.history.append(asdict(row))
        self.log.tested(steps.eval_name, test_error)
        self.log.line(
            f"iter {iteration}/{self.settings.iterations} epoch {epoch:.2f} lr {lr:g} train loss {train_loss:.4f} "
            f"err {train_error:.4f} | {steps.eval_name} loss {test_loss:.4f} err {test_error:.4f} | "
            f"{images_per_s:.0f} img/s"
        )
        self.write_tables()
        self.clock = (time.monotonic(), iteration)

    def write_tables(self) -> None:
        if self.world.main:
            write_csv(self.out / HISTORY_FILE, HISTORY_FIELDS, self.state.history)
            write_csv(self.out / EPOCHS_FILE, EPOCH_FIELDS, self.state.epochs)

    def write_model(self, forward: Forward) -> Path:
        """model.pt (rank 0's BN statistics, and the runtime that ran), the final tables, the checkpoint removed."""
        self.comm.broadcast_buffers(self.model)
        if self.world.main:
            runtime = {**forward.runtime.record(), **self.runtime_extra}
            write_model_file(self.out / MODEL_FILE, self.spec, self.run_id, self.data, runtime, self.model)
            self.write_tables()
            self.checkpoints.remove()
        self.comm.barrier()
        return self.out / MODEL_FILE
