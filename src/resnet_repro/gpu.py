"""GPU slots: every GPU job on one machine gets devices no other job holds.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once but not which GPU each gets. Each GPU process
therefore locks slot files before CUDA starts and exports CUDA_VISIBLE_DEVICES naming the devices it got.

- The devices are the entries of a preset CUDA_VISIBLE_DEVICES (integer indices, `GPU-…` or `MIG-…` UUIDs: a
  scheduler's or the user's choice), else RESNET_REPRO_GPU_SLOTS=N (indices 0..N-1, for machines without
  nvidia-smi), else what `nvidia-smi -L` lists: each GPU by its UUID, or, on a MIG-enabled GPU, each MIG instance by
  its `MIG-…` UUID (CUDA selects a MIG instance by UUID only). An empty CUDA_VISIBLE_DEVICES means no GPUs.
- A device holds `runs_per_device` slots (opt-in packing of small runs, config `gpu_runs_per_device`): a packed
  job takes a shared lock on the device's file and an exclusive lock on one of its share files; a job that needs
  whole devices (the default, and every ImageNet job) takes the device's file exclusively, so it never shares.
- Locks are flocks: the kernel drops them when the process ends or dies, so a killed job never keeps its GPU.
- The lock folder is the user's own (mode 0700, owned by the user, checked through the open folder); lock files are
  opened without following symlinks and must be regular files of the user's: another user on the machine can
  neither block the slots nor make a job write through a file of their choosing. Under SLURM the folder is per job
  (two jobs on one node may both see their own GPU as `0`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, ReproError

SLOTS_ENV = "RESNET_REPRO_GPU_SLOTS"  # a device count (indices 0..N-1) where nvidia-smi cannot list them
LOCK_DIR_ENV = "RESNET_REPRO_GPU_LOCK_DIR"
RUNS_PER_DEVICE_ENV = "RESNET_REPRO_GPU_RUNS_PER_DEVICE"  # set by the Snakefile from gpu_runs_per_device
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"

_INTEGER = re.compile(r"\d+")
_UUID = re.compile(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)")
_SAFE = re.compile(r"[A-Za-z0-9_-]")


class GpuSlotError(ReproError):
    """The slot machinery cannot be used safely (lock folder or file), or no slot came free in time."""


class CudaUnavailableError(ReproError):
    """A job holds a GPU slot but PyTorch cannot use the device it names."""


@dataclass
class GpuSlot:
    entry: str  # the CUDA_VISIBLE_DEVICES entry: "0", "GPU-…", "MIG-…"
    share: int | None  # which of the device's packed slots; None: the whole device
    path: Path  # the lock file that makes this slot ours
    fds: list[int] = field(default_factory=list)  # open locked files; while open, the slot is held

    @property
    def name(self) -> str:
        return self.entry if self.share is None else f"{self.entry}#{self.share}"

    def keep_across_exec(self) -> None:
        """Let a command this process execs (torchrun) inherit the locks."""
        for fd in self.fds:
            os.set_inheritable(fd, True)

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


# ----------------------------------------------------------------------------------------------- devices
def _parse_visible(value: str) -> list[str]:
    """Entries of CUDA_VISIBLE_DEVICES as CUDA reads them: up to the first invalid one (so "-1" hides all)."""
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not (_INTEGER.fullmatch(entry) or entry.startswith(("GPU-", "MIG-"))):
            break
        if entry not in entries:
            entries.append(entry)
    return entries


def parse_nvidia_smi(listing: str) -> list[str]:
    """Devices of an `nvidia-smi -L` listing: a GPU by its UUID (its index where none is shown), or, where MIG
    instances are listed under it, each instance by its `MIG-…` UUID instead of the GPU."""
    devices: list[list[str]] = []  # per GPU: [its own entry, its MIG instances...]
    for line in listing.splitlines():
        stripped = line.strip()
        uuid = _UUID.search(stripped)
        if stripped.startswith("GPU "):
            index = stripped[4:].split(":", 1)[0].strip()
            devices.append([uuid.group(1) if uuid else index])
        elif stripped.startswith("MIG ") and devices and uuid:
            devices[-1].append(uuid.group(1))
    return [entry for gpu in devices for entry in (gpu[1:] or gpu[:1])]


def list_devices() -> list[str]:
    """The devices to arbitrate, without initializing CUDA (that would pin the process to all of them)."""
    visible = os.environ.get(VISIBLE_ENV)
    if visible is not None:
        return _parse_visible(visible)
    if os.environ.get("SLURM_JOB_ID"):
        return []  # a SLURM job with GPUs has CUDA_VISIBLE_DEVICES; the node's other GPUs are not its own
    if os.environ.get(SLOTS_ENV):
        count = os.environ[SLOTS_ENV].strip()
        if not _INTEGER.fullmatch(count):
            raise ConfigError(f"{SLOTS_ENV} must be a number of GPUs (indices 0..N-1), got {count!r}")
        return [str(index) for index in range(int(count))]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []  # no driver: no GPUs
    return parse_nvidia_smi(listing.stdout)


def runs_per_device_from_env() -> int:
    """Packed slots per device for this job: RESNET_REPRO_GPU_RUNS_PER_DEVICE (set by the rules), default 1."""
    value = os.environ.get(RUNS_PER_DEVICE_ENV, "").strip() or "1"
    if not _INTEGER.fullmatch(value) or int(value) < 1:
        raise ConfigError(f"{RUNS_PER_DEVICE_ENV} must be a whole number >= 1, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------- lock folder
def default_lock_dir() -> tuple[Path, str | None]:
    """RESNET_REPRO_GPU_LOCK_DIR as it is, else a folder of this user's in the temporary folder, with a subfolder
    per job under SLURM (the folder and the scope subfolder's name)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV]), None
    folder = Path(tempfile.gettempdir()) / f"resnet-repro-gpu-slots-{os.getuid()}"
    job = os.environ.get("SLURM_JOB_ID", "")
    return folder, (f"slurm-{job}" if _INTEGER.fullmatch(job) else None)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _check_own_private(fd: int, what: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise GpuSlotError(f"GPU lock folder {what} is not a folder; remove it or set {LOCK_DIR_ENV}")
    if info.st_uid != os.getuid():
        raise GpuSlotError(
            f"GPU lock folder {what} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
            f"another user may control it: remove it or set {LOCK_DIR_ENV} to a folder of your own"
        )
    if info.st_mode & 0o077:
        raise GpuSlotError(
            f"GPU lock folder {what} is open to others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"`chmod 700` it, remove it, or set {LOCK_DIR_ENV}"
        )


def _open_checked(name: str | Path, what: Path, dir_fd: int | None = None) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        reason = "is a symbolic link" if os.path.islink(what) else f"cannot be opened ({error.strerror or error})"
        raise GpuSlotError(f"GPU lock folder {what} {reason}; remove it or set {LOCK_DIR_ENV}") from None
    try:
        _check_own_private(fd, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_lock_dir(folder: Path, scope: str | None = None) -> tuple[int, Path]:
    """An fd of `folder` (of its subfolder `scope`), created with mode 0700 where missing; refused unless each is
    a real folder of this user's that nobody else may enter. Lock files are then opened relative to the fd, so
    nothing can swap the folder between the check and the use."""
    folder = folder.absolute()
    missing = []
    top = folder
    while not os.path.lexists(top) and top.parent != top:
        missing.append(top)
        top = top.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent job made it first: checked below all the same
            os.mkdir(path, 0o700)
    fd = _open_checked(folder, folder)
    if scope is None:
        return fd, folder
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(scope, 0o700, dir_fd=fd)
        return _open_checked(scope, folder / scope, dir_fd=fd), folder / scope
    finally:
        os.close(fd)


def _lock_name(entry: str, share: int | None) -> str:
    """A file name for a device entry, injective over entries: unsafe characters (MIG-GPU-…/1/0) escaped."""
    safe = "".join(ch if _SAFE.fullmatch(ch) else f"%{ord(ch):02X}" for ch in entry)
    return f"gpu-{safe}.lock" if share is None else f"gpu-{safe}.{share}.lock"


def _open_lock_file(dir_fd: int, folder: Path, name: str) -> int:
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as error:
        reason = "is a symbolic link" if os.path.islink(folder / name) else error.strerror or str(error)
        raise GpuSlotError(f"GPU lock file {folder / name} {reason}; refusing to use it") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"owned by uid {info.st_uid}"
        raise GpuSlotError(f"GPU lock file {folder / name} is {kind}; refusing to use it")
    return fd


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- slots
def _try_whole(dir_fd: int, folder: Path, entry: str) -> GpuSlot | None:
    name = _lock_name(entry, None)
    fd = _open_lock_file(dir_fd, folder, name)
    if _try_lock(fd, fcntl.LOCK_EX):
        return GpuSlot(entry, None, folder / name, [fd])
    os.close(fd)
    return None


def _try_share(dir_fd: int, folder: Path, entry: str, share: int) -> GpuSlot | None:
    device_fd = _open_lock_file(dir_fd, folder, _lock_name(entry, None))
    if not _try_lock(device_fd, fcntl.LOCK_SH):  # a whole-device job holds it
        os.close(device_fd)
        return None
    name = _lock_name(entry, share)
    fd = _open_lock_file(dir_fd, folder, name)
    if _try_lock(fd, fcntl.LOCK_EX):
        return GpuSlot(entry, share, folder / name, [fd, device_fd])
    os.close(fd)
    os.close(device_fd)
    return None


def _write_owner(slot: GpuSlot) -> None:
    """Our pid in the lock file, for people looking at who holds a GPU: through the fd we locked and checked."""
    fd = slot.fds[0]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def acquire_gpu_slot(
    timeout: float = 24 * 3600, poll: float = 0.5, lock_dir: Path | None = None, runs_per_device: int = 1
) -> GpuSlot | None:
    """Take a free GPU slot and export CUDA_VISIBLE_DEVICES to its device; None when there are no GPUs. With
    `runs_per_device` > 1 the slot is one of that many on a device (packing); jobs spread over the devices first.
    Waits while all slots are taken."""
    taken = acquire_gpu_slots(1, timeout, poll, lock_dir, runs_per_device)
    return taken[0] if taken else None


def acquire_gpu_slots(
    count: int,
    timeout: float = 24 * 3600,
    poll: float = 0.5,
    lock_dir: Path | None = None,
    runs_per_device: int = 1,
) -> list[GpuSlot]:
    """Take `count` distinct devices at once (a multi-GPU job: torchrun with one process per GPU) and export
    CUDA_VISIBLE_DEVICES listing them; [] when there are no GPUs. All or nothing: partial grabs are released
    before waiting, so two multi-GPU jobs never deadlock holding half each. Multi-GPU jobs are never packed."""
    if runs_per_device < 1 or (count > 1 and runs_per_device != 1):
        raise ValueError(f"{count} devices with {runs_per_device} runs per device: only single-device jobs pack")
    devices = list_devices()
    if not devices:
        if os.environ.get("SLURM_JOB_ID") and os.environ.get(VISIBLE_ENV) is None:
            # SLURM sets CUDA_VISIBLE_DEVICES in every job it gives GPUs: this one has none of the node's GPUs.
            os.environ[VISIBLE_ENV] = ""
            print("SLURM gave this job no GPU: running on the CPU", file=sys.stderr, flush=True)
        return []
    if count > len(devices):
        raise GpuSlotError(f"{count} GPUs requested but there are {len(devices)} ({', '.join(devices)})")
    dir_fd, folder = open_lock_dir(*((lock_dir, None) if lock_dir else default_lock_dir()))
    try:
        return _wait_for_slots(dir_fd, folder, devices, count, runs_per_device, timeout, poll)
    finally:
        os.close(dir_fd)


def _wait_for_slots(
    dir_fd: int, folder: Path, devices: list[str], count: int, runs: int, timeout: float, poll: float
) -> list[GpuSlot]:
    # Share-major order: the first share of every device before the second of any, so packed jobs spread out.
    candidates: list[Callable[[], GpuSlot | None]]
    if runs == 1:
        candidates = [lambda e=entry: _try_whole(dir_fd, folder, e) for entry in devices]
    else:
        candidates = [
            lambda e=entry, s=share: _try_share(dir_fd, folder, e, s) for share in range(runs) for entry in devices
        ]
    slots = len(devices) * runs
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        taken: list[GpuSlot] = []
        try:
            for attempt in candidates:
                slot = attempt()
                if slot is not None:
                    taken.append(slot)
                    if len(taken) == count:
                        break
        except BaseException:
            for slot in taken:
                slot.release()
            raise
        if len(taken) == count:
            for slot in taken:
                _write_owner(slot)
            os.environ[VISIBLE_ENV] = ",".join(slot.entry for slot in taken)
            return taken
        for slot in taken:
            slot.release()
        if time.monotonic() > deadline:
            raise GpuSlotError(f"no {count} free GPU slot(s) among {slots} in {folder} after {timeout:.0f} s")
        if not announced:
            wanted = "a free one" if count == 1 else f"{count} devices free at once"
            print(f"waiting for {wanted} of {slots} GPU slots ({folder})", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll)


def require_cuda(slots: list[GpuSlot]) -> None:
    """Stop with one line when this process holds GPU slots but PyTorch cannot use their devices (more slots than
    GPUs, a MIG instance named by index, a driver too old for this PyTorch, a CPU-only build): never train on the
    CPU behind a GPU slot. Call after the slots set CUDA_VISIBLE_DEVICES, before anything else touches CUDA."""
    if not slots:
        return
    import torch  # after CUDA_VISIBLE_DEVICES is set: CUDA reads it once

    visible = os.environ.get(VISIBLE_ENV, "")
    held = f"GPU slot(s) {', '.join(slot.name for slot in slots)} (CUDA_VISIBLE_DEVICES={visible})"
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == len(slots):
        return
    if torch.version.cuda is None:
        reason = f"this PyTorch ({torch.__version__}) is built without CUDA"
    elif found == 0:
        reason = f"PyTorch (CUDA {torch.version.cuda}) sees no usable device: {_cuda_reason(torch)}"
    else:
        reason = f"PyTorch sees {found} of the {len(slots)} devices"
    raise CudaUnavailableError(
        f"took {held} but {reason} (more slots than GPUs, a MIG instance named by index or a driver too old for "
        f"this CUDA end like this); fix the GPU setup, or run with --device cpu"
    )


def _cuda_reason(torch: object) -> str:
    try:
        torch.cuda.init()  # type: ignore[attr-defined]
    except Exception as error:  # the driver's own words, first line only
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return "no device"
