"""The trainer: the whole dataset on the device, whole-batch augmentation, a plain SGD loop.

Files in the run folder:
    checkpoint.pt  resume state, rewritten atomically every `checkpoint_every` iterations and on SIGTERM/SIGUSR1/
                   SIGINT; removed when the run completes
    model.pt       the final weights and what is needed to rebuild the model (the run's result)
    history.csv    one row per evaluation: iteration, epoch, lr, train loss/error since the last row, test
                   loss/error, images/s
    epochs.csv     one row per completed epoch: train loss/error over the epoch
Everything that must be bitwise reproducible (model.pt, the losses and errors) is independent of timing.

Speed: the whole prepared dataset lives on the training device and batches are augmented there (StepRunner); bf16
autocast and channels-last where the device has fast bf16 (CUDA; CPUs with AMX or AVX512-BF16); on CUDA also
cudnn.benchmark, a fused SGD step and, for runs of >= 2000 iterations, torch.compile with CUDA graphs.
Reproducibility: on CPU the default path is bitwise reproducible for a given thread count (tests/test_speed.py).
On CUDA, cudnn.benchmark's algorithm choice and atomic adds in some backward kernels make two runs agree to noise,
not to the bit; `precision: fp32` does not change that, and `compile: off` only removes compile's own choices.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import PreparedData, load_prepared
from .errors import DataError, Interrupted, TrainingDiverged
from .models import build_model, count_parameters
from .runfiles import EPOCH_FIELDS, HISTORY_FIELDS, atomic_torch_save, write_csv
from .settings import TrainSettings, settings_hash

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
TALLIES = ("interval", "epoch_acc", "block")  # since the last history row / epoch end / aligned check


# ------------------------------------------------------------------------------------------- device choices
# torch.compile's mode per device type. On CUDA, "reduce-overhead" replays each compiled step as a CUDA graph:
# a CIFAR ResNet step at batch 128 is a few hundred small kernels, so kernel launches, not math, bound it there.
# The environment variable RESNET_REPRO_COMPILE_MODE overrides it (e.g. "max-autotune-no-cudagraphs"); speed only,
# so it is not part of a run's identity.
COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": "default"}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile: bool
    note: str  # why these were chosen, for the log and provenance
    compile_mode: str = "default"

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 convolutions are then about twice as fast as fp32 on CPU."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda requested but CUDA is not available")
    return device


def choose_runtime(settings: TrainSettings, device: torch.device) -> Runtime:
    fast_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    if settings.precision == "auto":
        bf16 = fast_bf16
        note = "bf16 autocast (device has fast bf16)" if bf16 else "fp32 (no fast bf16 on this device)"
    else:
        bf16 = settings.precision == "bf16"
        note = f"{settings.precision} (requested)"
    channels_last = bf16 if settings.channels_last == "auto" else settings.channels_last == "on"
    compile_on = (
        device.type == "cuda" and settings.iterations >= 2000
        if settings.compile == "auto"
        else settings.compile == "on"
    )
    mode = os.environ.get("RESNET_REPRO_COMPILE_MODE") or COMPILE_MODES.get(device.type, "default")
    note += f", {'channels-last' if channels_last else 'NCHW'}, {f'compiled ({mode})' if compile_on else 'eager'}"
    return Runtime(device, bf16, channels_last, compile_on, note, mode)


def configure_backends(runtime: Runtime) -> None:
    """Process-wide switches that speed up CUDA without changing results beyond bf16/TF32 rounding."""
    if runtime.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithm once
    if runtime.bf16:
        # The fast path already accepts reduced precision; TF32 for the fp32 matmuls left outside autocast.
        torch.set_float32_matmul_precision("high")


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
        augment = {**data.meta.get("augment", {"pad": 4, "flip": True}), **(settings.augment or {})}
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


# ------------------------------------------------------------------------------------------------ files
def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without ever unpickling code (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise DataError(f"cannot load checkpoint {path}: {str(error).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------- progress
class ProgressLog:
    """A one-line bar with ETA on a terminal; plain lines at each evaluation otherwise (cluster logs)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.stream = total, stream or sys.stderr  # looked up now, not at import
        self.tty = self.stream.isatty()
        self.last_draw = 0.0

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, iteration: int, rate: float, loss: float) -> None:
        now = time.monotonic()
        if not self.tty or now - self.last_draw < 0.5:
            return
        self.last_draw = now
        eta = (self.total - iteration) / max(rate, 1e-9)
        filled = int(30 * iteration / self.total)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {iteration}/{self.total} loss {loss:.3f} "
            f"{rate:.1f} it/s ETA {format_seconds(eta)}"
        )
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        # One fused kernel for all parameters on CUDA; CPU keeps the default (bitwise-stable) implementation.
        **({"fused": True} if device.type == "cuda" else {}),
    )
    return model, optimizer, device_data, runtime


class StepRunner:
    """The trainer's optimizer step: the batch of `iteration` from the epoch's (seed, epoch) randomness, assembled
    on the device, then forward, backward and update. Nothing here waits for the device."""

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
        self.forward: Callable[[Tensor], Tensor] = model
        # Cudagraph trees need to know where a step begins when outputs of the last one may still be referenced.
        on_cuda = runtime.device.type == "cuda"
        self.cudagraphs = runtime.compile and on_cuda and "reduce-overhead" in runtime.compile_mode
        if runtime.compile:
            # dynamic=False: the training batch has one shape; never trade speed for shape-generic kernels.
            self.forward = torch.compile(model, mode=runtime.compile_mode, dynamic=False)

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

    def step(self, iteration: int, lr: float) -> tuple[Tensor, Tensor]:
        """Train on the batch of `iteration` at learning rate `lr`; return its loss and the number of wrong
        predictions, as device tensors (reading them is what synchronizes)."""
        x, y = self.batch_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.runtime.autocast():
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        wrong = (logits.detach().argmax(1) != y).sum()  # before backward: CUDA-graph outputs are reused memory
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), wrong

    def run(self, start: int, count: int, lr_at: Callable[[int], float]) -> Tensor:
        """`count` steps from iteration `start` (for benchmarks): their losses, on the device, unsynchronized."""
        losses = torch.empty(count, device=self.data.device)
        for offset in range(count):
            losses[offset] = self.step(start + offset, lr_at(start + offset))[0]
        return losses


def _stop_requested() -> Callable[[], int | None]:
    """Install handlers that record a stop request; return a probe giving the signal number, if any."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return lambda: received[0] if received else None


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
    log.line(
        f"iter {iteration}/{iterations} epoch {row['epoch']:.2f} lr {lr:g} train loss {train_loss:.4f} err "
        f"{train_error:.4f} | {test_name} loss {test_loss:.4f} err {test_error:.4f} | {row['images_per_s']:.0f} img/s"
    )


def train(spec: RunSpec, log: ProgressLog | None = None) -> Path:
    """Train one run to completion (resuming a matching checkpoint) and return the path of model.pt."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        return _train(spec, log)
    finally:  # in-process callers (tests, notebooks) get their own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(spec: RunSpec, log: ProgressLog | None) -> Path:
    settings, out = spec.settings, Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.device)
    data = load_prepared(spec.data_dir, settings.split)
    run_id = settings_hash(spec.model, data.meta["sha256"], spec.seed, settings)
    log = log or ProgressLog(settings.iterations)
    stop_signal = _stop_requested()
    model, optimizer, device_data, runtime = build_training(spec.model, settings, data, device, spec.seed)
    size = int(data.meta["image_size"])

    state = initial_state(settings)
    checkpoint_path = out / "checkpoint.pt"
    if checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        if saved.get("run_id") == run_id:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in saved:
                torch.cuda.set_rng_state(saved["rng_cuda"])
            state = saved["state"]
            log.line(f"resuming {spec.model} seed {spec.seed} from iteration {state['iteration']} ({checkpoint_path})")
        else:
            log.line(f"ignoring {checkpoint_path}: it belongs to different settings (run {saved.get('run_id')})")
    start_wall_clock(state)

    def save_checkpoint() -> None:
        payload = {
            "run_id": run_id,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "state": state,
        }
        if device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        atomic_torch_save(payload, checkpoint_path)

    n = len(device_data.train_y)
    batch = min(settings.batch_size, n)
    stepper = StepRunner(model, optimizer, device_data, runtime, spec.seed, batch)
    if runtime.compile:
        started = time.monotonic()
        log.line(f"torch.compile enabled (mode {runtime.compile_mode}): the first steps include compilation")
    log.line(
        f"training {spec.model} ({count_parameters(model):,} parameters) on {data.meta['name']} "
        f"[{len(device_data.train_y)} train / {len(device_data.test_y)} {settings.split}], seed {spec.seed}, "
        f"{settings.iterations} iterations, device {device} ({runtime.note}), run {run_id}"
    )

    steps_per_epoch = stepper.steps_per_epoch
    checkpoint_every = settings.checkpoint_every or settings.eval_every
    window = torch.zeros(settings.check_every, device=device)  # per-iteration losses since the last check
    window_wrong = torch.zeros(settings.check_every, dtype=torch.long, device=device)
    window_start = state["iteration"]
    clock = time.monotonic()
    clock_iteration = state["iteration"]
    compile_reported = not runtime.compile
    model.train()

    def flush_window(upto: int) -> None:
        """Sync once: fail on a non-finite loss (naming its iteration), move the window into the tallies."""
        nonlocal window_start
        count = upto - window_start
        if count <= 0:
            return
        losses = window[:count].double().cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            first = window_start + int(bad[0]) + 1
            kept = (
                f"the last good checkpoint (iteration {state['last_checkpoint']}) is kept in {checkpoint_path}"
                if state.get("last_checkpoint")
                else "no checkpoint had been written yet"
            )
            raise TrainingDiverged(
                f"loss became {losses[int(bad[0])].item()} at iteration {first} of {spec.model} seed {spec.seed}; "
                f"training stopped and {kept}. Try a smaller learning rate or a warm-up."
            )
        values = losses.tolist()
        wrong = int(window_wrong[:count].sum())
        add_to_tallies(state, values, wrong)
        window_start = upto

    while state["iteration"] < settings.iterations:
        iteration = state["iteration"]
        lr = settings.lr_at(iteration) if state["warmup_done"] else settings.warmup["lr"]
        loss, wrong = stepper.step(iteration, lr)
        window[iteration - window_start] = loss
        window_wrong[iteration - window_start] = wrong
        state["iteration"] = iteration = iteration + 1

        if not compile_reported:
            compile_reported = True
            loss.item()
            log.line(f"compiled and ran the first step in {time.monotonic() - started:.1f} s")
            clock, clock_iteration = time.monotonic(), iteration

        stop = stop_signal()
        aligned = iteration % settings.check_every == 0
        at_eval = iteration % settings.eval_every == 0 or iteration == settings.iterations
        at_epoch_end = iteration % steps_per_epoch == 0
        if not (aligned or at_eval or at_epoch_end or stop):
            continue
        flush_window(iteration)
        elapsed = time.monotonic() - clock
        rate = (iteration - clock_iteration) / max(elapsed, 1e-9)
        if aligned:
            block_loss, block_error = take_tally(state, "block", batch)
            log.bar(iteration, rate, block_loss)
            if ended := end_warmup_if_due(state, settings, block_error, iteration):
                log.line(ended)
        if at_epoch_end:
            close_epoch(state, iteration, steps_per_epoch, lr, batch, rate)
        if at_eval:
            logits_test, labels = evaluate_arrays(model, device_data, runtime)
            test_loss = F.cross_entropy(logits_test, labels).item()
            test_error = (logits_test.argmax(1) != labels).float().mean().item()
            close_interval(
                state,
                log,
                iteration,
                settings.iterations,
                steps_per_epoch,
                lr,
                batch,
                rate,
                elapsed,
                (test_loss, test_error),
                settings.split,
            )
            write_csv(out / "history.csv", HISTORY_FIELDS, state["history"])
            write_csv(out / "epochs.csv", EPOCH_FIELDS, state["epochs"])
            clock, clock_iteration = time.monotonic(), iteration
        if (iteration % checkpoint_every == 0 or stop) and iteration < settings.iterations:
            state["last_checkpoint"] = iteration
            save_checkpoint()
        if stop:
            raise Interrupted(
                f"received {signal.Signals(stop).name} at iteration {iteration}; checkpoint saved to "
                f"{checkpoint_path}; rerun the same command to resume"
            )

    final = {
        "format": 1,
        "model_name": spec.model,
        "num_classes": data.num_classes,
        "in_channels": int(data.meta["channels"]),
        "image_size": size,
        "model_options": settings.model_options,
        "seed": spec.seed,
        "run_id": run_id,
        "settings": settings.to_dict(),
        "dataset": {"name": data.meta["name"], "sha256": data.meta["sha256"]},
        "runtime": {"device": str(device), "note": runtime.note},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(final, out / "model.pt")
    write_csv(out / "history.csv", HISTORY_FIELDS, state["history"])
    write_csv(out / "epochs.csv", EPOCH_FIELDS, state["epochs"])
    checkpoint_path.unlink(missing_ok=True)
    return out / "model.pt"
