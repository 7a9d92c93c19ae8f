"""One SGD step as its runtime says: the forward pass (compiled, or eager after a fallback), the guard around the first
compiled steps, and the update.

`Forward` owns the runtime a run's steps run as: when compiled steps fail it goes on eager and its runtime says so,
so the step, the run and model.pt's provenance all read the one record. The first compiled steps can still fail
(compilation in the first call; with CUDA graphs, warm-up, recording and the first replay in the next ones):
`CompileGuard` undoes a failed one (BN statistics, gradients) and takes it again eagerly. With several processes it
stops the run instead: the other ranks may be inside a collective that the failed step never reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ReproError
from .progress import ProgressLog
from .runtime import Runtime
from .settings import TrainSettings
from .world import World


class CompileFailed(ReproError):
    """torch.compile failed in a run of several processes, where falling back to eager is not safe."""


def error_summary(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def make_optimizer(model: nn.Module, settings: TrainSettings, runtime: Runtime) -> torch.optim.Optimizer:
    """The paper's SGD with momentum and weight decay, fused where the runtime says so."""
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        **({"fused": True} if runtime.fused_sgd else {}),
    )


class Forward:
    """A module's training forward pass and the runtime it runs as: compiled when the runtime says so, eager after
    `fall_back`. A compile that raises at once (e.g. an unknown RESNET_REPRO_COMPILE_MODE) leaves it eager, with the
    reason in `error`, until the guard records the fallback."""

    def __init__(self, module: nn.Module, runtime: Runtime) -> None:
        self.module, self.runtime = module, runtime
        self.call: Callable[[Tensor], Tensor] = module
        self.error: str | None = None
        if runtime.compile:
            try:
                # dynamic=False: the training batch has one shape; never trade speed for shape-generic kernels.
                self.call = torch.compile(module, mode=runtime.compile_mode, dynamic=False)
            except Exception as error:  # torch raises several types; the run goes on eager
                self.error = error_summary(error)

    @property
    def compiled(self) -> bool:
        return self.call is not self.module

    def __call__(self, x: Tensor) -> Tensor:
        return self.call(x)

    def fall_back(self, reason: str, iteration: int) -> None:
        """Eager from `iteration` on; the runtime (hence the provenance) says why."""
        self.call, self.error = self.module, reason
        self.runtime = self.runtime.fell_back(reason, iteration)


def train_step(
    forward: Forward, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, lr: float
) -> tuple[Tensor, Tensor]:
    """One SGD step on the batch (x, y) at learning rate `lr`: the loss and the number of wrong predictions, as
    device tensors (reading them is what synchronizes)."""
    runtime = forward.runtime
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


class CompileGuard:
    """The first compiled steps of a run, each undone and retaken eagerly if it fails (see the module's docstring)."""

    def __init__(
        self, forward: Forward, model: nn.Module, optimizer: torch.optim.Optimizer, log: ProgressLog, world: World
    ) -> None:
        self.forward, self.model, self.optimizer, self.log, self.world = forward, model, optimizer, log, world
        self.left = forward.runtime.guarded_steps if forward.compiled else 0
        self.started = time.monotonic()

    def begin(self, iteration: int, started: float) -> None:
        """Before the run's (or the resumed run's) first step, at `iteration`: a compile that raised at once is a
        fallback from here. `started`: the time the compile time is counted from."""
        self.started = started
        if self.forward.error is not None and self.forward.runtime.compile:
            self.fail(self.forward.error, iteration)
        if self.forward.compiled:
            mode = self.forward.runtime.compile_mode
            self.log.line(f"torch.compile enabled (mode {mode}): the first steps include compilation")

    def step(self, take: Callable[[], tuple[Tensor, Tensor]], iteration: int) -> tuple[Tensor, Tensor, bool]:
        """`take()` (one step at `iteration`), guarded while compiled steps may still fail; and whether this was the
        last guarded step and compiled (from the next one on, throughput excludes the compile time)."""
        if not self.left or not self.forward.compiled:
            return (*take(), False)
        self.left -= 1
        buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            loss, wrong = take()
            loss.item()  # errors of the compiled step surface here, and the compile time is measured to here
        except Exception as error:  # torch.compile raises many types (Dynamo, Inductor, CUDA-graph capture)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.fail(error_summary(error), iteration)
            return (*take(), False)
        if self.left == 0:
            self.log.line(f"compiled and ran the first steps in {time.monotonic() - self.started:.1f} s")
        return loss, wrong, self.left == 0

    def fail(self, reason: str, iteration: int) -> None:
        """Go on eager from `iteration`, saying so once; with several processes, stop instead."""
        if self.world.size > 1:  # the failing step (or a rank's peer, failing) may have left collectives out of order
            raise CompileFailed(
                f"the first compiled steps failed on rank {self.world.rank} at iteration {iteration} ({reason}); "
                f"a run of {self.world.size} processes cannot fall back to eager safely: rerun with "
                "`--set compile=off` (config: `compile: off`)"
            )
        self.forward.fall_back(reason, iteration)
        self.left = 0
        self.log.line(f"torch.compile failed ({reason}); training continues eager from iteration {iteration}")
