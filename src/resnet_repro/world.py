"""The process world of a run: its rank among torchrun's processes, the few collectives it needs, and stop signals."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


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

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (a list of one in a world of one)."""
        if not self.on:
            return [value]
        gathered: list[Any] = [None] * self.world.size
        dist.all_gather_object(gathered, value)
        return gathered

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
