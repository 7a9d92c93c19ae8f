"""What a run's steps run as on its device: precision, memory layout, compile and fused SGD, chosen once.

`choose_runtime` decides it from a run's settings and its device (and `evaluation_runtime` for scoring a trained
run as it was trained); `configure_backends` sets the process-wide switches it needs. The steps themselves, and the
fallback to eager when compiled steps fail, are resnet_repro.step's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError, DataError
from .settings import TrainSettings

# torch.compile's mode per device type. On CUDA, "reduce-overhead" replays each compiled step as a CUDA graph:
# a CIFAR ResNet step at batch 128 is a few hundred small kernels, so kernel launches, not math, bound it there.
# The environment variable RESNET_REPRO_COMPILE_MODE overrides it with any mode torch.compile knows (e.g.
# "max-autotune", which uses CUDA graphs too, or "max-autotune-no-cudagraphs"; `mode_uses_cudagraphs` asks torch
# which do); speed only, so it is not part of a run's identity. A mode torch does not know makes torch.compile raise
# at once, and the run goes on eager saying so.
COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": "default"}
COMPILE_MODE_ENV = "RESNET_REPRO_COMPILE_MODE"
# `compile: auto` compiles runs of at least this many iterations: compilation (a minute or more) must pay for itself.
CUDA_COMPILE_MIN_ITERATIONS = 2000
# Measured on the 2-core reference CPU (AVX512-BF16, bf16 channels-last, `bench_train.py --compile`): compiling took
# 53 s (ResNet-20) and 49 s (ResNet-56) and made a step 15% and 10% faster, so it pays back after 2,146 and 731
# iterations; auto compiles at twice the larger. The short experiment (2,000 iterations a run) stays eager.
CPU_COMPILE_MIN_ITERATIONS = 5000
COMPILE_MIN_ITERATIONS = {"cuda": CUDA_COMPILE_MIN_ITERATIONS, "cpu": CPU_COMPILE_MIN_ITERATIONS}
# Compiled steps that can still fail, counted from the first: compilation happens in the first call; CUDA-graph
# trees (every mode for which `mode_uses_cudagraphs`) run that call as a warm-up, record the graphs on the second
# and first replay them on the third. A failure in any of them is undone and the step retaken eagerly
# (resnet_repro.core).
GUARDED_STEPS = {"cudagraphs": 3, "other": 1}
# bf16 runs natively (tensor cores) from compute capability 8.0 (Ampere) on; older GPUs emulate it, slower than fp32.
CUDA_NATIVE_BF16 = (8, 0)
# A CPU's native bf16 units, by torch's check for each.
BF16_UNITS = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}


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
        return self.compile and self.device.type == "cuda" and mode_uses_cudagraphs(self.compile_mode)

    @property
    def guarded_steps(self) -> int:
        """How many compiled steps, from the first, may still fail (and are retaken eagerly if they do)."""
        if not self.compile:
            return 0
        return GUARDED_STEPS["cudagraphs" if self.cudagraphs else "other"]

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
            "processor": processor_name(self.device),
        }


@functools.cache
def mode_uses_cudagraphs(mode: str) -> bool:
    """Whether torch.compile's `mode` replays CUDA graphs, from torch's own table of its modes' options
    (reduce-overhead and max-autotune do; default and max-autotune-no-cudagraphs do not). False for a mode torch
    does not know: torch.compile refuses it before any step."""
    from torch._inductor import list_mode_options

    try:
        return bool(list_mode_options(mode).get("triton.cudagraphs", False))
    except RuntimeError:  # "Unrecognized mode=..."
        return False


def processor_name(device: torch.device) -> str:
    """The processor `device` is, for provenance: a GPU's name, or the CPU's model with the widest vector
    instructions torch uses on it and its bf16 units (a run's speed, and its precision under `auto`, depend on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass  # not Linux: platform's name
    units = [torch.backends.cpu.get_cpu_capability()]
    units += [unit for unit, check in BF16_UNITS.items() if getattr(torch.cpu, check, lambda: False)()]
    return f"{model} ({', '.join(units)})"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 convolutions are then about twice as fast as fp32 on CPU."""
    return any(getattr(torch.cpu, check, lambda: False)() for check in BF16_UNITS.values())


def has_fast_bf16(device: torch.device, cuda_capability: tuple[int, int] | None = None) -> bool:
    """Whether `device` runs bf16 natively: a CPU with AMX or AVX512-BF16, a GPU of compute capability 8.0 or newer.
    `cuda_capability` stands in for the device's own (tests on machines without a GPU)."""
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    if device.type == "cuda":
        if cuda_capability is None and not torch.cuda.is_available():
            return False  # nothing trains there; only a runtime described for another machine asks
        capability = cuda_capability or torch.cuda.get_device_capability(device)
        return tuple(capability) >= CUDA_NATIVE_BF16
    return False


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
    settings: TrainSettings,
    device: torch.device,
    compile_modes: dict[str, str] = COMPILE_MODES,
    *,
    sync_bn: bool = False,
    cuda_capability: tuple[int, int] | None = None,
) -> Runtime:
    """What a run's steps run as on `device`. `sync_bn`: the model holds SyncBatchNorm layers, which break a
    compiled graph at every layer (pytorch#161302), so `compile: auto` stays eager and `compile: on` is refused."""
    if settings.precision == "auto":
        bf16 = has_fast_bf16(device, cuda_capability)
        note = "bf16 autocast (device has fast bf16)" if bf16 else "fp32 (no fast bf16 on this device)"
    else:
        bf16 = settings.precision == "bf16"
        note = f"{settings.precision} (requested)"
    channels_last = bf16 if settings.channels_last == "auto" else settings.channels_last == "on"
    if sync_bn and settings.compile == "on":
        raise ConfigError("compile: on cannot be combined with distributed.sync_bn (SyncBatchNorm breaks the graph)")
    if settings.compile == "auto":
        threshold = COMPILE_MIN_ITERATIONS.get(device.type)
        compile_on = threshold is not None and settings.iterations >= threshold and not sync_bn
    else:
        compile_on = settings.compile == "on"
    mode = os.environ.get(COMPILE_MODE_ENV) or compile_modes.get(device.type, "default")
    note += f", {'channels-last' if channels_last else 'NCHW'}, {f'compiled ({mode})' if compile_on else 'eager'}"
    # One fused kernel for all parameters on CUDA; CPU keeps the default (bitwise-stable) implementation.
    return Runtime(device, bf16, channels_last, compile_on, note, mode, fused_sgd=device.type == "cuda")


def evaluation_runtime(trained: dict[str, Any], device: torch.device) -> Runtime:
    """The runtime to evaluate a trained run with on `device`: the precision and layout it was trained with (its
    model.pt provenance, `Runtime.record`), whatever the evaluating machine would choose, so that a run's metrics do
    not depend on where it is evaluated. Never compiled: evaluation is one pass."""
    bf16, channels_last = trained["precision"] == "bf16", bool(trained["channels_last"])
    note = f"{trained['precision']} (as trained), {'channels-last' if channels_last else 'NCHW'}, eager"
    return Runtime(device, bf16, channels_last, False, note)


def configure_backends(runtime: Runtime) -> None:
    """Process-wide CUDA switches: cudnn.benchmark, and TF32 only where the run accepts reduced precision (bf16);
    an fp32 run computes its convolutions and matmuls in IEEE fp32, as its provenance says."""
    if runtime.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithm once
    # Both precision APIs, the legacy one first. Reading a legacy switch (allow_tf32,
    # torch.get_float32_matmul_precision) raises when the per-backend fp32_precision ones were set alone
    # (pytorch#166387), and inductor's max-autotune and torch.backends.cudnn.flags() read them. Setting the legacy
    # switches sets the matching new ones too, except a cuDNN convolution's "ieee" (left "none", inherited), so the
    # new ones are then set to the same values: every read-back, old or new, says what runs.
    tf32 = runtime.bf16
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    math = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = math
    torch.backends.cudnn.conv.fp32_precision = math
