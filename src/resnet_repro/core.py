"""The trainer core: one training run from its runtime choice and resume to model.pt, shared by both trainers.

The CIFAR trainer (train.py: the whole dataset resident on the device) and the data-parallel trainer
(distributed.py: a streaming loader, one process per GPU under torchrun) each supply only their step and data code,
as a `Steps` object; everything else about a run lives here, once:

* the runtime (`choose_runtime`): device, bf16 autocast, channels-last, torch.compile, fused SGD and the CUDA
  backend switches. A compile that fails (torch.compile itself, or the first compiled step) falls back to eager
  with one log line, and model.pt's provenance says what ran, on one process or many;
* the run state (iteration, warm-up, tallies, history and epoch rows, wall time), saved in checkpoint.pt, and
  resume: a checkpoint of the same run identity is continued, one of another identity ignored, and all ranks must
  agree on where they resume;
* the NaN check: every `check_every` steps, one sync (one all-reduce in a world of several processes), naming the
  iteration that diverged;
* the cadence: checks, epoch rows, evaluations (history.csv), checkpoints, and stops on SIGTERM/SIGUSR1/SIGINT;
* the files (checkpoint.pt, history.csv, epochs.csv, model.pt), written by rank 0 only with runfiles' atomic writers;
* the progress log: a live bar on a terminal, plain lines in logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DataError, Interrupted, ReproError, TrainingDiverged
from .models import count_parameters
from .runfiles import EPOCH_FIELDS, HISTORY_FIELDS, atomic_torch_save, write_csv
from .settings import TrainSettings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
TALLIES = ("interval", "epoch_acc", "block")  # since the last history row / epoch end / aligned check

# ------------------------------------------------------------------------------------------- runtime choices
# torch.compile's mode per device type. On CUDA, "reduce-overhead" replays each compiled step as a CUDA graph:
# a CIFAR ResNet step at batch 128 is a few hundred small kernels, so kernel launches, not math, bound it there.
# The environment variable RESNET_REPRO_COMPILE_MODE overrides it (e.g. "max-autotune-no-cudagraphs"); speed only,
# so it is not part of a run's identity.
COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": "default"}
# `compile: auto` compiles runs of at least this many iterations: compilation (a minute or more) must pay for itself.
CUDA_COMPILE_MIN_ITERATIONS = 2000
# Measured on the 2-core reference CPU (AVX512-BF16, bf16 channels-last, `bench_train.py --compile`): compiling took
# 53 s (ResNet-20) and 49 s (ResNet-56) and made a step 15% and 10% faster, so it pays back after 2,146 and 731
# iterations; auto compiles at twice the larger. The short experiment (2,000 iterations a run) stays eager.
CPU_COMPILE_MIN_ITERATIONS = 5000
COMPILE_MIN_ITERATIONS = {"cuda": CUDA_COMPILE_MIN_ITERATIONS, "cpu": CPU_COMPILE_MIN_ITERATIONS}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile: bool
    note: str  # why these were chosen, for the log and provenance
    compile_mode: str = "default"
    fused_sgd: bool = False  # one fused optimizer kernel for all parameters (CUDA)
    compile_fallback: str | None = None  # why a compile that was chosen was abandoned for eager

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def cudagraphs(self) -> bool:
        """Compiled steps replay as CUDA graphs: each step must be marked (torch.compiler.cudagraph_mark_step_begin)."""
        return self.compile and self.device.type == "cuda" and "reduce-overhead" in self.compile_mode

    def fell_back(self, reason: str, iteration: int) -> Runtime:
        """This runtime after a failed compile: eager from `iteration` on, and saying so."""
        kept = self.note.rsplit(", ", 1)[0]  # the precision and layout parts; the last part is the compile choice
        note = f"{kept}, eager (compile ({self.compile_mode}) failed at iteration {iteration}: {reason})"
        return dataclasses.replace(self, compile=False, note=note, compile_fallback=reason)

    def record(self) -> dict[str, Any]:
        """What ran, for model.pt's provenance."""
        return {
            "device": str(self.device),
            "note": self.note,
            "precision": "bf16" if self.bf16 else "fp32",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_mode": self.compile_mode if self.compile else None,
            "compile_fallback": self.compile_fallback,
            "fused_sgd": self.fused_sgd,
        }


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 convolutions are then about twice as fast as fp32 on CPU."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """The training device; with `local_rank` (one process per GPU) the local rank's GPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda requested but CUDA is not available")
    if device.type == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


def choose_runtime(
    settings: TrainSettings, device: torch.device, compile_modes: dict[str, str] = COMPILE_MODES
) -> Runtime:
    fast_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    if settings.precision == "auto":
        bf16 = fast_bf16
        note = "bf16 autocast (device has fast bf16)" if bf16 else "fp32 (no fast bf16 on this device)"
    else:
        bf16 = settings.precision == "bf16"
        note = f"{settings.precision} (requested)"
    channels_last = bf16 if settings.channels_last == "auto" else settings.channels_last == "on"
    if settings.compile == "auto":
        threshold = COMPILE_MIN_ITERATIONS.get(device.type)
        compile_on = threshold is not None and settings.iterations >= threshold
    else:
        compile_on = settings.compile == "on"
    mode = os.environ.get("RESNET_REPRO_COMPILE_MODE") or compile_modes.get(device.type, "default")
    note += f", {'channels-last' if channels_last else 'NCHW'}, {f'compiled ({mode})' if compile_on else 'eager'}"
    # One fused kernel for all parameters on CUDA; CPU keeps the default (bitwise-stable) implementation.
    return Runtime(device, bf16, channels_last, compile_on, note, mode, fused_sgd=device.type == "cuda")


def configure_backends(runtime: Runtime) -> None:
    """Process-wide switches that speed up CUDA without changing results beyond bf16/TF32 rounding."""
    if runtime.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithm once
    if runtime.bf16:
        # The fast path already accepts reduced precision; TF32 for the fp32 matmuls left outside autocast.
        torch.set_float32_matmul_precision("high")


def make_optimizer(model: nn.Module, settings: TrainSettings, runtime: Runtime) -> torch.optim.Optimizer:
    """The paper's SGD with momentum and weight decay, fused where the runtime says so."""
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        **({"fused": True} if runtime.fused_sgd else {}),
    )


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class Forward:
    """A module's training forward pass: compiled when the runtime says so, eager after `fall_back`. A compile that
    raises at once (e.g. an unknown RESNET_REPRO_COMPILE_MODE) leaves it eager, with the reason in `error`."""

    def __init__(self, module: nn.Module, runtime: Runtime) -> None:
        self.module = module
        self.call: Callable[[Tensor], Tensor] = module
        self.error: str | None = None
        if runtime.compile:
            try:
                # dynamic=False: the training batch has one shape; never trade speed for shape-generic kernels.
                self.call = torch.compile(module, mode=runtime.compile_mode, dynamic=False)
            except Exception as error:  # torch raises several types; the trainer falls back to eager
                self.error = _reason(error)

    @property
    def compiled(self) -> bool:
        return self.call is not self.module

    def __call__(self, x: Tensor) -> Tensor:
        return self.call(x)

    def fall_back(self, reason: str) -> None:
        self.call, self.error = self.module, reason


def train_step(
    forward: Forward, optimizer: torch.optim.Optimizer, runtime: Runtime, x: Tensor, y: Tensor, lr: float
) -> tuple[Tensor, Tensor]:
    """One SGD step on the batch (x, y) at learning rate `lr`: the loss and the number of wrong predictions, as
    device tensors (reading them is what synchronizes)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if forward.compiled and runtime.cudagraphs:
        # Cudagraph trees need to know where a step begins when outputs of the last one may still be referenced.
        torch.compiler.cudagraph_mark_step_begin()
    with runtime.autocast():
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
    wrong = (logits.detach().argmax(1) != y).sum()  # before backward: CUDA-graph outputs are reused memory
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), wrong


# ----------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World(0, 1, 0)


def world_from_env() -> World:
    """Rank, world size and local rank as torchrun sets them; a plain process is a world of one."""
    return World(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


class Collective:
    """The few collectives the trainer needs; no-ops in a world of one (no process group at all)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.on = world.size > 1

    def sum_(self, tensor: Tensor) -> Tensor:
        if self.on:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        if self.on:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's BN running statistics everywhere (each rank updated its own copy with its own batches)."""
        if self.on:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], int | None]]:
    """Record SIGTERM/SIGUSR1/SIGINT instead of dying; yield a probe giving the first signal received, if any.
    The previous handlers come back on exit (in-process callers: tests, notebooks)."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------- progress
class ProgressLog:
    """Plain lines at each evaluation (and for events), always; on a terminal also a live bar (tqdm) with the rate,
    ETA and the latest train and test error. Off a terminal (files, cluster logs) the lines are all there is."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.stream = total, stream or sys.stderr  # looked up now, not at import
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._train, self._test = "", ""  # the bar's latest train and test figures

    def start(self, iteration: int) -> None:
        """Show the bar from `iteration` on (a resumed run starts part-way); nothing off a terminal."""
        if self.tty and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=iteration, file=self.stream, unit="it", dynamic_ncols=True, smoothing=0.1
            )

    def line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # above the bar, which is redrawn below it
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, iteration: int, loss: float, error: float) -> None:
        if self._bar is None:
            return
        self._train = f"loss {loss:.3f} err {error:.3f}"
        self._bar.set_postfix_str(self._train + self._test, refresh=False)
        self._bar.update(iteration - self._bar.n)

    def tested(self, name: str, error: float) -> None:
        self._test = f" | {name} err {error:.3f}"
        if self._bar is not None:
            self._bar.set_postfix_str(self._train + self._test, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ------------------------------------------------------------------------------------------------ state
def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without ever unpickling code (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise DataError(f"cannot load checkpoint {path}: {str(error).splitlines()[0]}") from None


def initial_state(settings: TrainSettings) -> dict[str, Any]:
    """The resumable progress of a run (saved in checkpoints; plain Python values only)."""
    return {
        "iteration": 0,
        "warmup_done": settings.warmup is None,
        "history": [],
        "epochs": [],
        # Per-iteration losses and wrong counts since the last history row / epoch end / aligned check.
        # Summed with math.fsum at the end, so where a stop split the windows cannot change a single bit.
        "interval": {"losses": [], "wrong": 0},
        "epoch_acc": {"losses": [], "wrong": 0},
        "block": {"losses": [], "wrong": 0},
        "wall_s": 0.0,  # wall-clock seconds of every attempt so far, evaluation and compilation included
    }


def start_wall_clock(state: dict[str, Any]) -> None:
    """Start counting this attempt's wall time (a resumed run adds to what its checkpoint carries)."""
    state.setdefault("wall_s", 0.0)
    state["wall_mark"] = time.monotonic()


def add_to_tallies(state: dict[str, Any], losses: list[float], wrong: int) -> None:
    """Move checked per-iteration losses and wrong counts into every running tally."""
    for name in TALLIES:
        state[name]["losses"].extend(losses)
        state[name]["wrong"] += wrong


def take_tally(state: dict[str, Any], name: str, batch: int) -> tuple[float, float]:
    """Mean loss (math.fsum: independent of how stops split the windows) and error of a tally; reset it."""
    tally = state[name]
    state[name] = {"losses": [], "wrong": 0}
    return math.fsum(tally["losses"]) / len(tally["losses"]), tally["wrong"] / (len(tally["losses"]) * batch)


def end_warmup_if_due(state: dict[str, Any], settings: TrainSettings, block_error: float, iteration: int) -> str | None:
    """End the warm-up once the block's training error is below its threshold; return the log line if it ended."""
    if state["warmup_done"] or block_error >= settings.warmup["until_train_error"]:
        return None
    state["warmup_done"] = True
    return f"warm-up ends at iteration {iteration} (train error {block_error:.3f}); lr back to {settings.lr}"


def close_epoch(
    state: dict[str, Any], iteration: int, steps_per_epoch: int, lr: float, batch: int, rate: float
) -> None:
    """Append the finished epoch's row (train loss/error over the epoch) to the state."""
    train_loss, train_error = take_tally(state, "epoch_acc", batch)
    state["epochs"].append(
        {
            "epoch": iteration // steps_per_epoch,
            "iteration": iteration,
            "lr": lr,
            "train_loss": train_loss,
            "train_error": train_error,
            "images_per_s": round(rate * batch, 1),
        }
    )


def close_interval(
    state: dict[str, Any],
    log: ProgressLog,
    iteration: int,
    iterations: int,
    steps_per_epoch: int,
    lr: float,
    batch: int,
    rate: float,
    elapsed: float,
    test: tuple[float, float],
    test_name: str,
) -> None:
    """Append the evaluation's history row (train loss/error since the last one, and `test`) and log it."""
    train_loss, train_error = take_tally(state, "interval", batch)
    test_loss, test_error = test
    now = time.monotonic()
    state["wall_s"] += now - state["wall_mark"]
    state["wall_mark"] = now
    row = {
        "iteration": iteration,
        "epoch": round(iteration / steps_per_epoch, 4),
        "lr": lr,
        "train_loss": train_loss,
        "train_error": train_error,
        "test_loss": test_loss,
        "test_error": test_error,
        "images_per_s": round(rate * batch, 1),
        "elapsed_s": round(elapsed, 2),
        "wall_s": round(state["wall_s"], 1),
        "threads": torch.get_num_threads(),
    }
    state["history"].append(row)
    log.tested(test_name, test_error)
    log.line(
        f"iter {iteration}/{iterations} epoch {row['epoch']:.2f} lr {lr:g} train loss {train_loss:.4f} err "
        f"{train_error:.4f} | {test_name} loss {test_loss:.4f} err {test_error:.4f} | {row['images_per_s']:.0f} img/s"
    )


# ------------------------------------------------------------------------------------------------ the run
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
        settings = job.settings
        # Only rank 0 talks; the others would repeat every line.
        self.log = log or ProgressLog(settings.iterations, stream=sys.stderr if world.main else open(os.devnull, "w"))
        self.checkpoint_path = job.out / "checkpoint.pt"
        self.state = initial_state(settings)
        if world.main:
            job.out.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------------------------- resume and files
    def resume(self) -> None:
        """Continue a checkpoint of this run, if there is one (every rank reads it: DDP does not broadcast the
        optimizer state); ignore one of other settings; fail if the ranks disagree on where they are."""
        job, path, log = self.job, self.checkpoint_path, self.log
        if path.exists():
            saved = load_checkpoint(path)
            if saved.get("run_id") == job.run_id:
                self.model.load_state_dict(saved["model"])
                self.optimizer.load_state_dict(saved["optimizer"])
                if "rng_cpu" in saved:
                    torch.set_rng_state(saved["rng_cpu"])
                if self.device.type == "cuda" and "rng_cuda" in saved:
                    torch.cuda.set_rng_state(saved["rng_cuda"])
                self.state = saved["state"]
                written, now = saved.get("world_size", 1), self.world.size
                where = f", written by {written} processes, now {now}" if written > 1 or now > 1 else ""
                iteration = self.state["iteration"]
                log.line(f"resuming {job.model_name} seed {job.seed} from iteration {iteration} ({path}{where})")
            else:
                log.line(f"ignoring {path}: it belongs to different settings (run {saved.get('run_id')})")
        start_wall_clock(self.state)
        iteration = self.state["iteration"]
        agreed = self.comm.max_(torch.tensor([iteration, -iteration], dtype=torch.long, device=self.device))
        if agreed[0] != -agreed[1]:  # a rank that saw another checkpoint (no shared file system?) would diverge
            raise ReproError(
                f"ranks disagree on the resume iteration ({int(-agreed[1])}..{int(agreed[0])}): is "
                f"{job.out} on a file system shared by all nodes?"
            )

    def save_checkpoint(self) -> None:
        if not self.world.main:
            return
        payload = {
            "run_id": self.job.run_id,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "state": self.state,
            "world_size": self.world.size,
        }
        if self.device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        atomic_torch_save(payload, self.checkpoint_path)

    def write_tables(self) -> None:
        if self.world.main:
            write_csv(self.job.out / "history.csv", HISTORY_FIELDS, self.state["history"])
            write_csv(self.job.out / "epochs.csv", EPOCH_FIELDS, self.state["epochs"])

    def write_model(self) -> Path:
        """model.pt: the final weights, what rebuilds the model, and what ran (rank 0's BN statistics)."""
        job = self.job
        self.comm.broadcast_buffers(self.model)
        if self.world.main:
            final = {
                "format": 1,
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
            atomic_torch_save(final, job.out / "model.pt")
            self.write_tables()
            self.checkpoint_path.unlink(missing_ok=True)
        self.comm.barrier()
        return job.out / "model.pt"

    # ------------------------------------------------------------------------------------------ checks
    def diverged(self, losses: list[float], iteration: int) -> TrainingDiverged | None:
        bad = [i for i, value in enumerate(losses) if not math.isfinite(value)]
        if not bad:
            return None
        first = iteration - len(losses) + bad[0] + 1
        kept = (
            f"the last good checkpoint (iteration {self.state['last_checkpoint']}) is kept in {self.checkpoint_path}"
            if self.state.get("last_checkpoint")
            else "no checkpoint had been written yet"
        )
        return TrainingDiverged(
            f"loss became {losses[bad[0]]} at iteration {first} of {self.job.model_name} seed {self.job.seed}; "
            f"training stopped and {kept}. Try a smaller learning rate or a warm-up."
        )

    def compile_failed(self, steps: Steps, reason: str, iteration: int) -> None:
        """Go on eager from `iteration`: one log line, and the runtime (hence the provenance) says so."""
        steps.forward.fall_back(reason)
        self.runtime = self.runtime.fell_back(reason, iteration)
        self.log.line(f"torch.compile failed ({reason}); training continues eager from iteration {iteration}")

    def first_compiled_step(self, steps: Steps, batch: Any, lr: float, iteration: int) -> tuple[Tensor, Tensor]:
        """The first step through the compiled forward pass, which is where compilation happens: if it raises,
        undo what it may have changed (BN statistics, gradients) and take the step eagerly. All ranks then agree:
        if any fell back, all go on eager, so that what model.pt records ran everywhere."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            loss, wrong = steps.step(batch, lr)
            loss.item()  # errors of the compiled step surface here, and the compile time is measured to here
        except Exception as error:  # torch.compile raises many types (Dynamo, Inductor, CUDA-graph capture)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.compile_failed(steps, _reason(error), iteration)
            loss, wrong = steps.step(batch, lr)
        failed = torch.tensor([float(not steps.forward.compiled)], device=self.device)
        if self.comm.max_(failed).item() and steps.forward.compiled:
            self.compile_failed(steps, "compile failed in another process", iteration + 1)
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
        job, settings, log, state, device = self.job, self.job.settings, self.log, self.state, self.device
        if steps.forward.error is not None:  # torch.compile itself raised
            self.compile_failed(steps, steps.forward.error, state["iteration"])
        started = time.monotonic()
        if steps.forward.compiled:
            log.line(f"torch.compile enabled (mode {self.runtime.compile_mode}): the first steps include compilation")
        log.line(
            f"training {job.model_name} ({count_parameters(self.model):,} parameters) {describe}, device {device} "
            f"({self.runtime.note}), run {job.run_id}"
        )
        log.start(state["iteration"])
        iterations, batch, steps_per_epoch = settings.iterations, steps.batch, steps.steps_per_epoch
        checkpoint_every = settings.checkpoint_every or settings.eval_every
        # Per-step [loss, wrong] since the last check, on the device: no sync per step.
        window = torch.zeros(settings.check_every, 2, dtype=torch.float64, device=device)
        window_start = state["iteration"]
        clock, clock_iteration = time.monotonic(), state["iteration"]
        first_compiled = steps.forward.compiled
        self.model.train()

        while state["iteration"] < iterations:
            for item in steps.batches(state["iteration"]):
                iteration = state["iteration"]
                lr = settings.lr_at(iteration) if state["warmup_done"] else settings.warmup["lr"]
                if first_compiled:
                    loss, wrong = self.first_compiled_step(steps, item, lr, iteration)
                else:
                    loss, wrong = steps.step(item, lr)
                window[iteration - window_start, 0] = loss
                window[iteration - window_start, 1] = wrong
                state["iteration"] = iteration = iteration + 1
                if first_compiled:
                    first_compiled = False
                    if steps.forward.compiled:
                        log.line(f"compiled and ran the first step in {time.monotonic() - started:.1f} s")
                    clock, clock_iteration = time.monotonic(), iteration

                stop_local = self.stop()
                aligned = iteration % settings.check_every == 0
                at_eval = iteration % settings.eval_every == 0 or iteration == iterations
                at_epoch_end = iteration % steps_per_epoch == 0
                # Alone, a stop is acted on at once; several processes must agree first, at the next check.
                if not (aligned or at_eval or at_epoch_end or (stop_local and not self.comm.on)):
                    continue
                # One sync (an all-reduce with several processes): the window's global losses and wrong counts, and
                # whether any process must stop. Iteration counts are global, so every rank reaches the same checks.
                flag = torch.tensor([[float(stop_local is not None), 0.0]], dtype=torch.float64, device=device)
                payload = self.comm.sum_(torch.cat([window[: iteration - window_start], flag])).cpu()
                losses = (payload[:-1, 0] / self.world.size).tolist()
                wrong_count = int(payload[:-1, 1].sum().item())
                stop = payload[-1, 0].item() > 0
                if error := self.diverged(losses, iteration):
                    raise error
                add_to_tallies(state, losses, wrong_count)
                window_start = iteration
                elapsed = time.monotonic() - clock
                rate = (iteration - clock_iteration) / max(elapsed, 1e-9)
                if aligned:
                    block_loss, block_error = take_tally(state, "block", batch)
                    log.bar(iteration, block_loss, block_error)
                    if ended := end_warmup_if_due(state, settings, block_error, iteration):
                        log.line(ended)
                if at_epoch_end:
                    close_epoch(state, iteration, steps_per_epoch, lr, batch, rate)
                if at_eval:
                    self.comm.broadcast_buffers(self.model)
                    test = steps.evaluate()
                    close_interval(
                        state, log, iteration, iterations, steps_per_epoch, lr, batch, rate, elapsed, test,
                        steps.eval_name,
                    )  # fmt: skip
                    self.write_tables()
                    clock, clock_iteration = time.monotonic(), iteration
                if (iteration % checkpoint_every == 0 or stop) and iteration < iterations:
                    state["last_checkpoint"] = iteration
                    self.save_checkpoint()
                if stop:
                    self.comm.barrier()  # the checkpoint is complete before any process exits
                    cause = f"received {signal.Signals(stop_local).name}" if stop_local else "another process stopped"
                    raise Interrupted(
                        f"stop requested at iteration {iteration} ({cause}); checkpoint saved to "
                        f"{self.checkpoint_path}; rerun the same command to resume"
                    )
                if at_epoch_end or iteration >= iterations:
                    break
        return self.write_model()
