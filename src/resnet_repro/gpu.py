"""GPU slots for concurrent training jobs on one machine.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once but not which GPU each gets. Each training
process therefore takes an exclusive lock on one slot file (one per GPU index) before CUDA starts and sets
CUDA_VISIBLE_DEVICES to that index. The lock is an flock: the kernel drops it when the process ends or dies,
so a killed job never keeps its GPU. A CUDA_VISIBLE_DEVICES already set (by SLURM or the user) is respected.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ReproError

SLOTS_ENV = "RESNET_REPRO_GPU_SLOTS"  # number of slots; default: the GPUs nvidia-smi lists
LOCK_DIR_ENV = "RESNET_REPRO_GPU_LOCK_DIR"


@dataclass
class GpuSlot:
    index: int
    path: Path
    handle: object  # the open locked file; keeping a reference keeps the lock

    def release(self) -> None:
        self.handle.close()


def count_gpus() -> int:
    """GPUs on this machine, without initializing CUDA (that would pin the process to all of them)."""
    if os.environ.get(SLOTS_ENV):
        return int(os.environ[SLOTS_ENV])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"resnet-repro-gpu-slots-{os.getuid()}")


def acquire_gpu_slot(timeout: float = 24 * 3600, poll: float = 0.5, lock_dir: Path | None = None) -> GpuSlot | None:
    """Take a free GPU slot and export CUDA_VISIBLE_DEVICES; None when there is nothing to arbitrate (no GPUs,
    or a scheduler already chose the devices). Waits while all slots are taken."""
    taken = acquire_gpu_slots(1, timeout, poll, lock_dir)
    return taken[0] if taken else None


def acquire_gpu_slots(
    count: int, timeout: float = 24 * 3600, poll: float = 0.5, lock_dir: Path | None = None
) -> list[GpuSlot]:
    """Take `count` free GPU slots at once (a multi-GPU job: torchrun with one process per GPU) and export
    CUDA_VISIBLE_DEVICES listing them; [] when there is nothing to arbitrate. All or nothing: partial grabs are
    released before waiting, so two multi-GPU jobs never deadlock holding half each."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return []
    slots = count_gpus()
    if slots <= 0:
        return []
    if count > slots:
        raise ReproError(f"{count} GPUs requested but this machine has {slots}")
    folder = lock_dir or default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        taken: list[GpuSlot] = []
        for index in range(slots):
            handle = open(folder / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            taken.append(GpuSlot(index, folder / f"gpu{index}.lock", handle))
            if len(taken) == count:
                for slot in taken:
                    slot.handle.seek(0)
                    slot.handle.truncate()
                    slot.handle.write(f"{os.getpid()}\n")
                    slot.handle.flush()
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot.index) for slot in taken)
                return taken
        for slot in taken:
            slot.release()
        if time.monotonic() > deadline:
            raise ReproError(f"no {count} free GPU slot(s) among {slots} in {folder} after {timeout:.0f} s")
        if not announced:
            wanted = "a free one" if count == 1 else f"{count} free at once"
            print(f"waiting for {wanted} of {slots} GPU slots ({folder})", file=sys.stderr)
            announced = True
        time.sleep(poll)
