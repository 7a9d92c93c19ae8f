"""One training run, shared by both trainers: resume, the loop with its checks and stops, and the files it writes.

The CIFAR trainer (train.py: the whole dataset resident on the device) and the data-parallel trainer
(distributed.py: a streaming loader, one process per GPU under torchrun) each supply only their step and data code,
as a `Steps` object, and a runtime (resnet_repro.runtime). A `Run` does the rest, once:

* resume: a checkpoint of the same run identity is continued (weights, optimizer, RNG, `RunState`), one of another
  identity ignored, and all ranks must agree on where they resume;
* the loop: every `check_every` steps (and at epoch ends, evaluations and stops) one sync, one all-reduce with
  several processes, of the window of per-step losses, then the NaN check, the tallies, and what falls due: an epoch
  row, an evaluation (history.csv), a checkpoint, a stop on SIGTERM/SIGUSR1/SIGINT;
* the first compiled steps are guarded: one that fails (compilation, CUDA-graph recording) is undone and retaken
  eagerly, and the run goes on eager, saying so in model.pt's provenance. With several processes a compile failure
  stops the run instead: the other ranks may be inside a collective that the failed step never reached;
* the files (checkpoint.pt, history.csv, epochs.csv, model.pt), written by rank 0 only with runfiles' atomic writers.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .errors import Interrupted, ReproError, TrainingDiverged
from .models import count_parameters
from .paths import CHECKPOINT_FILE, EPOCHS_FILE, HISTORY_FILE, MODEL_FILE
from .progress import ProgressLog
from .runfiles import (
    EPOCH_FIELDS,
    HISTORY_FIELDS,
    MODEL_FORMAT,
    EpochRow,
    HistoryRow,
    atomic_torch_save,
    output_folder,
    write_csv,
)
from .runtime import Forward, Runtime, error_summary
from .settings import TrainSettings
from .state import RunState, check_resumable, load_checkpoint
from .world import SINGLE, Collective, World

# Optimizer flags that describe how this process runs the update, not the run's state: a resumed optimizer keeps
# the values its runtime chose (Optimizer.load_state_dict would otherwise bring back those of the saving machine).
RUNTIME_OPTIMIZER_FLAGS = ("fused", "foreach", "capturable")


class CompileFailed(ReproError):
    """torch.compile failed in a run of several processes, where falling back to eager is not safe."""


class Steps(Protocol):
    """A trainer's own part of a run: its data and its optimizer step."""

    steps_per_epoch: int
    batch: int  # the global batch: samples per step over all processes
    forward: Forward  # the training forward pass the step uses (the core falls it back to eager if compile fails)
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


@dataclass
class Job:
    """What is trained (the run's identity and what model.pt needs to rebuild the model) and where it is written."""

    model_name: str
    seed: int
    settings: TrainSettings
    run_id: str
    out: Path
    dataset: dict[str, str]  # name, sha256
    num_classes: int
    in_channels: int
    image_size: int
    runtime_extra: dict[str, Any] = field(default_factory=dict)  # more of model.pt's "runtime" (world size, BN)


class StepWindow:
    """Per-step [loss, wrong] since the last check, kept on the device: no sync per step."""

    def __init__(self, size: int, device: torch.device, start: int) -> None:
        self.values = torch.zeros(size, 2, dtype=torch.float64, device=device)
        self.start = start

    def put(self, iteration: int, loss: Tensor, wrong: Tensor) -> None:
        self.values[iteration - self.start, 0] = loss
        self.values[iteration - self.start, 1] = wrong

    def take(self, iteration: int) -> Tensor:
        """The steps up to `iteration`; the window then starts there."""
        taken, self.start = self.values[: iteration - self.start], iteration
        return taken


class Run:
    """One run of `job`: resume, the training loop with its checks and files, and model.pt."""

    def __init__(
        self,
        job: Job,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        stop: Callable[[], int | None],
        world: World = SINGLE,
        log: ProgressLog | None = None,
    ) -> None:
        self.job, self.model, self.optimizer, self.runtime, self.stop = job, model, optimizer, runtime, stop
        self.world, self.comm = world, Collective(world)
        self.device = runtime.device
        self.log = log or ProgressLog(job.settings.iterations, quiet=not world.main)  # rank 0 talks for all
        self.checkpoint_path = job.out / CHECKPOINT_FILE
        self.state = RunState.fresh(job.settings)
        self.wall_mark = time.monotonic()  # where this attempt's wall time is counted from
        self.clock = (self.wall_mark, 0)  # (time, iteration) the throughput is measured from
        if world.main:
            output_folder(job.out)

    # -------------------------------------------------------------------------------- resume and files
    def resume(self) -> None:
        """Continue a checkpoint of this run, if there is one (every rank reads it: DDP does not broadcast the
        optimizer state); ignore one of other settings; fail if the ranks disagree on where they are."""
        job, path, log = self.job, self.checkpoint_path, self.log
        if path.exists():
            saved = load_checkpoint(path)
            if saved.get("run_id") == job.run_id:
                check_resumable(saved, path)
                self.state = RunState.from_plain(saved["state"], path)
                self.model.load_state_dict(saved["model"])
                self.load_optimizer(saved["optimizer"])
                torch.set_rng_state(saved["rng_cpu"])
                self.restore_cuda_rng(saved.get("rng_cuda"), saved["world_size"])
                written, now = saved["world_size"], self.world.size
                where = f", written by {written} processes, now {now}" if written > 1 or now > 1 else ""
                log.line(
                    f"resuming {job.model_name} seed {job.seed} from iteration {self.state.iteration} ({path}{where})"
                )
            else:
                log.line(f"ignoring {path}: it belongs to different settings (run {saved.get('run_id')})")
        self.wall_mark = time.monotonic()
        iteration = self.state.iteration
        agreed = self.comm.max_(torch.tensor([iteration, -iteration], dtype=torch.long, device=self.device))
        if agreed[0] != -agreed[1]:  # a rank that saw another checkpoint (no shared file system?) would diverge
            raise ReproError(
                f"ranks disagree on the resume iteration ({int(-agreed[1])}..{int(agreed[0])}): is "
                f"{job.out} on a file system shared by all nodes?"
            )

    def load_optimizer(self, saved: dict) -> None:
        """The saved optimizer state, run as this process's runtime says (fused or not), not as the saver's did."""
        flags = [{k: group[k] for k in RUNTIME_OPTIMIZER_FLAGS if k in group} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, kept in zip(self.optimizer.param_groups, flags, strict=True):
            group.update(kept)

    def restore_cuda_rng(self, states: list[Tensor] | Tensor | None, written_by: int) -> None:
        """This rank's CUDA generator state on its own device, when the checkpoint was written by as many processes
        (each rank has its own stream); otherwise the freshly seeded per-rank stream goes on."""
        if isinstance(states, Tensor):  # a single process's state, as checkpoints held it before one per rank
            states = [states]
        if self.device.type == "cuda" and states is not None and written_by == self.world.size == len(states):
            torch.cuda.set_rng_state(states[self.world.rank], self.device)

    def save_checkpoint(self) -> None:
        cuda_rng = self.comm.gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        if not self.world.main:
            return
        payload = {
            "run_id": self.job.run_id,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "state": self.state.to_plain(),
            "world_size": self.world.size,
        }
        if cuda_rng is not None:
            payload["rng_cuda"] = cuda_rng  # one per rank, in rank order
        atomic_torch_save(payload, self.checkpoint_path)

    def write_tables(self) -> None:
        if self.world.main:
            write_csv(self.job.out / HISTORY_FILE, HISTORY_FIELDS, self.state.history)
            write_csv(self.job.out / EPOCHS_FILE, EPOCH_FIELDS, self.state.epochs)

    def write_model(self) -> Path:
        """model.pt: the final weights, what rebuilds the model, and what ran (rank 0's BN statistics)."""
        job = self.job
        self.comm.broadcast_buffers(self.model)
        if self.world.main:
            final = {
                "format": MODEL_FORMAT,
                "model_name": job.model_name,
                "num_classes": job.num_classes,
                "in_channels": job.in_channels,
                "image_size": job.image_size,
                "model_options": job.settings.model_options,
                "seed": job.seed,
                "run_id": job.run_id,
                "settings": job.settings.to_dict(),
                "dataset": job.dataset,
                "runtime": {**self.runtime.record(), **job.runtime_extra},
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            }
            atomic_torch_save(final, job.out / MODEL_FILE)
            self.write_tables()
            self.checkpoint_path.unlink(missing_ok=True)
        self.comm.barrier()
        return job.out / MODEL_FILE

    # ------------------------------------------------------------------------------------ compiled steps
    def compile_failed(self, steps: Steps, reason: str, iteration: int) -> None:
        """Go on eager from `iteration`: one log line, and the runtime (hence the provenance) says so. With several
        processes, stop instead (see the module's docstring)."""
        if self.comm.on:  # the failing step (or a rank's peer, failing) may have left collectives out of order
            raise CompileFailed(
                f"the first compiled steps failed on rank {self.world.rank} at iteration {iteration} ({reason}); "
                f"a run of {self.world.size} processes cannot fall back to eager safely: rerun with "
                "`--set compile=off` (config: `compile: off`)"
            )
        steps.forward.fall_back(reason)
        self.runtime = self.runtime.fell_back(reason, iteration)
        self.log.line(f"torch.compile failed ({reason}); training continues eager from iteration {iteration}")

    def guarded_step(self, steps: Steps, batch: Any, lr: float, iteration: int, last: bool) -> tuple[Tensor, Tensor]:
        """A step through the compiled forward pass that may still fail (compilation, CUDA-graph warm-up and
        recording): if it raises, undo what it may have changed (BN statistics, gradients) and take it eagerly.
        After the `last` of them, the throughput is measured afresh: without the compile time."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            loss, wrong = steps.step(batch, lr)
            loss.item()  # errors of the compiled step surface here, and the compile time is measured to here
        except Exception as error:  # torch.compile raises many types (Dynamo, Inductor, CUDA-graph capture)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.compile_failed(steps, error_summary(error), iteration)
            loss, wrong = steps.step(batch, lr)
        if last and steps.forward.compiled:
            self.log.line(f"compiled and ran the first steps in {time.monotonic() - self.wall_mark:.1f} s")
            self.clock = (time.monotonic(), iteration + 1)
        return loss, wrong

    # -------------------------------------------------------------------------------------------- loop
    def train(self, steps: Steps, describe: str) -> Path:
        """Train to the end of the schedule (from the resumed iteration) and write model.pt; return its path.
        `describe`: the data and the batch, for the first log line ("on <data> [...], seed N, ...")."""
        try:
            return self._train(steps, describe)
        finally:
            self.log.close()

    def _train(self, steps: Steps, describe: str) -> Path:
        state, settings = self.state, self.job.settings
        guarded = self.begin(steps, describe)
        self.window = StepWindow(settings.check_every, self.device, state.iteration)
        self.model.train()
        while state.iteration < settings.iterations:
            for item in steps.batches(state.iteration):
                iteration = state.iteration
                lr = settings.lr_at(iteration) if state.warmup_done else settings.warmup["lr"]
                if guarded and steps.forward.compiled:
                    loss, wrong = self.guarded_step(steps, item, lr, iteration, last=guarded == 1)
                    guarded -= 1
                else:
                    loss, wrong = steps.step(item, lr)
                self.window.put(iteration, loss, wrong)
                state.iteration = iteration = iteration + 1
                stop_local = self.stop()
                if self.check_due(iteration, steps.steps_per_epoch, stop_local):
                    self.check(steps, lr, stop_local)
                if iteration % steps.steps_per_epoch == 0 or iteration >= settings.iterations:
                    break
        return self.write_model()

    def check_due(self, iteration: int, steps_per_epoch: int, stop_local: int | None) -> bool:
        """Whether `iteration` ends with a check: every check_every steps, at evaluations, epoch ends and the last
        step; and at once on a stop when alone (several processes agree on a stop at their next check)."""
        settings = self.job.settings
        return (
            iteration % settings.check_every == 0
            or iteration % settings.eval_every == 0
            or iteration % steps_per_epoch == 0
            or iteration == settings.iterations
            or (stop_local is not None and not self.comm.on)
        )

    def begin(self, steps: Steps, describe: str) -> int:
        """The run's first log lines; the number of compiled steps to guard."""
        if steps.forward.error is not None:  # torch.compile itself raised
            self.compile_failed(steps, steps.forward.error, self.state.iteration)
        if steps.forward.compiled:
            mode = self.runtime.compile_mode
            self.log.line(f"torch.compile enabled (mode {mode}): the first steps include compilation")
        self.log.line(
            f"training {self.job.model_name} ({count_parameters(self.model):,} parameters) {describe}, device "
            f"{self.device} ({self.runtime.note}), run {self.job.run_id}"
        )
        self.log.start(self.state.iteration)
        self.clock = (time.monotonic(), self.state.iteration)
        return self.runtime.guarded_steps

    def check(self, steps: Steps, lr: float, stop_local: int | None) -> None:
        """The per-check block: one sync of the window's losses and of any stop request, the NaN check, the tallies,
        and whatever falls due at this iteration (progress, warm-up end, epoch row, evaluation, checkpoint, stop)."""
        state, settings, iteration = self.state, self.job.settings, self.state.iteration
        # One sync (an all-reduce with several processes): the window's global losses and wrong counts, and whether
        # any process must stop. Iteration counts are global, so every rank reaches the same checks.
        flag = torch.tensor([[float(stop_local is not None), 0.0]], dtype=torch.float64, device=self.device)
        payload = self.comm.sum_(torch.cat([self.window.take(iteration), flag])).cpu()
        losses = (payload[:-1, 0] / self.world.size).tolist()
        stop = payload[-1, 0].item() > 0
        self.raise_if_diverged(losses, iteration)
        state.add(losses, int(payload[:-1, 1].sum().item()))
        elapsed = time.monotonic() - self.clock[0]
        images_per_s = round((iteration - self.clock[1]) / max(elapsed, 1e-9) * steps.batch, 1)
        if iteration % settings.check_every == 0:
            self.end_block(iteration, steps.batch)
        if iteration % steps.steps_per_epoch == 0:
            loss, error = state.epoch.take(steps.batch)
            row = EpochRow(iteration // steps.steps_per_epoch, iteration, lr, loss, error, images_per_s)
            state.epochs.append(asdict(row))
        if iteration % settings.eval_every == 0 or iteration == settings.iterations:
            self.evaluation_row(steps, lr, images_per_s, elapsed)
        checkpoint_every = settings.checkpoint_every or settings.eval_every
        if (iteration % checkpoint_every == 0 or stop) and iteration < settings.iterations:
            state.last_checkpoint = iteration
            self.save_checkpoint()
        if stop:
            self.comm.barrier()  # the checkpoint is complete before any process exits
            cause = f"received {signal.Signals(stop_local).name}" if stop_local else "another process stopped"
            raise Interrupted(
                f"stop requested at iteration {iteration} ({cause}); checkpoint saved to {self.checkpoint_path}; "
                "rerun the same command to resume"
            )

    def raise_if_diverged(self, losses: list[float], iteration: int) -> None:
        bad = [i for i, value in enumerate(losses) if not math.isfinite(value)]
        if not bad:
            return
        first = iteration - len(losses) + bad[0] + 1
        kept = (
            f"the last good checkpoint (iteration {self.state.last_checkpoint}) is kept in {self.checkpoint_path}"
            if self.state.last_checkpoint
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"loss became {losses[bad[0]]} at iteration {first} of {self.job.model_name} seed {self.job.seed}; "
            f"training stopped and {kept}. Try a smaller learning rate or a warm-up."
        )

    def end_block(self, iteration: int, batch: int) -> None:
        """A check aligned to check_every: the progress bar, and the end of the warm-up once it is due."""
        state, settings = self.state, self.job.settings
        loss, error = state.block.take(batch)
        self.log.bar(iteration, loss, error)
        if not state.warmup_done and error < settings.warmup["until_train_error"]:
            state.warmup_done = True
            self.log.line(f"warm-up ends at iteration {iteration} (train error {error:.3f}); lr back to {settings.lr}")

    def evaluation_row(self, steps: Steps, lr: float, images_per_s: float, elapsed: float) -> None:
        """Evaluate (rank 0's BN statistics everywhere first), append history.csv's row, log it, write the tables."""
        state, iteration, iterations = self.state, self.state.iteration, self.job.settings.iterations
        self.comm.broadcast_buffers(self.model)
        test_loss, test_error = steps.evaluate()
        train_loss, train_error = state.interval.take(steps.batch)
        now = time.monotonic()
        state.wall_s, self.wall_mark = state.wall_s + now - self.wall_mark, now
        epoch, wall_s, threads = (
            round(iteration / steps.steps_per_epoch, 4),
            round(state.wall_s, 1),
            torch.get_num_threads(),
        )
        row = HistoryRow(
            iteration,
            epoch,
            lr,
            train_loss,
            train_error,
            test_loss,
            test_error,
            images_per_s,
            round(elapsed, 2),
            wall_s,
            threads,
        )
        state.history.append(asdict(row))
        self.log.tested(steps.eval_name, test_error)
        self.log.line(
            f"iter {iteration}/{iterations} epoch {row.epoch:.2f} lr {lr:g} train loss {train_loss:.4f} err "
            f"{train_error:.4f} | {steps.eval_name} loss {test_loss:.4f} err {test_error:.4f} | "
            f"{images_per_s:.0f} img/s"
        )
        self.write_tables()
        self.clock = (time.monotonic(), iteration)
