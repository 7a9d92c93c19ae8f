"""Training settings: the named schedules shipped with the package, and their validation.

A run is fully described by (model, dataset, seed, TrainSettings); `settings_hash` of that tuple is the run's
identity in checkpoints and provenance. DistributedOptions: how a data-parallel run is spread over processes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SCHEDULES_FILE = Path(str(resources.files("resnet_repro") / "schedules.yaml"))


@functools.cache
def _package_schedules() -> dict[str, dict]:
    """schedules.yaml as written, read once per process (callers copy before changing it)."""
    return yaml.safe_load(SCHEDULES_FILE.read_text())


PAPER_SCHEDULE = "cifar_paper"  # TrainSettings' defaults: the paper's CIFAR protocol, as schedules.yaml states it


def _paper(key: str) -> Any:
    """A value of the paper's schedule: the one place it is written is schedules.yaml."""
    value = _package_schedules()[PAPER_SCHEDULE][key]
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a training run. The schedule's defaults are the paper's CIFAR protocol (section 4.2): the
    values of `PAPER_SCHEDULE` in schedules.yaml."""

    lr: float = _paper("lr")
    momentum: float = _paper("momentum")
    weight_decay: float = _paper("weight_decay")
    batch_size: int = _paper("batch_size")
    iterations: int = _paper("iterations")
    milestones: tuple[int, ...] = _paper("milestones")
    gamma: float = _paper("gamma")
    # {"lr": 0.01, "until_train_error": 0.8}: the ResNet-110 warm-up; None for none.
    warmup: dict | None = None
    eval_every: int = _paper("eval_every")
    checkpoint_every: int | None = None  # default: every evaluation
    check_every: int = 50  # NaN and warm-up checks (each costs one device sync)
    split: str = "test"  # "test": 50k/10k as reported; "val": the paper's 45k/5k split
    normalize: str = "pixel_mean"  # the paper's per-pixel mean subtraction; or "channel" (mean/std per channel)
    augment: dict | None = None  # {"pad": 4, "flip": True}; None: the dataset's defaults
    precision: str = "auto"  # auto: bf16 autocast where the device has fast bf16, else fp32; or fp32 / bf16
    channels_last: str = "auto"  # auto: with bf16; or "on" / "off"
    # auto: on for runs of at least COMPILE_MIN_ITERATIONS[device type] iterations (CUDA_COMPILE_MIN_ITERATIONS,
    # CPU_COMPILE_MIN_ITERATIONS: the runtime choice, runtime.py); or "on" / "off"
    compile: str = "auto"
    model_options: dict = field(default_factory=dict)  # e.g. {"width": 512} for fc20/fc56

    def __post_init__(self) -> None:
        for key in ("lr", "momentum", "weight_decay", "gamma"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"setting {key!r} must be a number (got {value!r})")
        if not all(isinstance(m, int) and not isinstance(m, bool) for m in self.milestones):
            raise ConfigError(
                f"setting 'milestones' must be a list of iteration numbers (got {list(self.milestones)!r})"
            )
        checks = [
            ("lr", self.lr > 0, "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size > 0, "must be a positive integer"),
            ("iterations", isinstance(self.iterations, int) and self.iterations > 0, "must be a positive integer"),
            ("gamma", 0 < self.gamma <= 1, "must be in (0, 1]"),
            ("eval_every", isinstance(self.eval_every, int) and self.eval_every > 0, "must be a positive integer"),
            ("check_every", isinstance(self.check_every, int) and self.check_every > 0, "must be a positive integer"),
            ("split", self.split in ("test", "val"), "must be 'test' or 'val'"),
            ("normalize", self.normalize in ("pixel_mean", "channel"), "must be 'pixel_mean' or 'channel'"),
            ("precision", self.precision in ("auto", "fp32", "bf16"), "must be auto, fp32 or bf16"),
            ("channels_last", self.channels_last in ("auto", "on", "off"), "must be auto, on or off"),
            ("compile", self.compile in ("auto", "on", "off"), "must be auto, on or off"),
            ("milestones", list(self.milestones) == sorted(self.milestones), "must be increasing"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"setting {key!r} {rule} (got {getattr(self, key)!r})")
        if self.warmup is not None:
            unknown = set(self.warmup) - {"lr", "until_train_error"}
            if unknown or not {"lr", "until_train_error"} <= set(self.warmup):
                raise ConfigError("setting 'warmup' needs exactly the keys 'lr' and 'until_train_error'")
            if self.warmup["lr"] <= 0:
                raise ConfigError(f"setting 'warmup.lr' must be > 0 (got {self.warmup['lr']!r})")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings") -> TrainSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        values = dict(values)
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        for key in ("channels_last", "compile"):  # YAML 1.1 reads a bare on/off as a boolean
            if isinstance(values.get(key), bool):
                values[key] = "on" if values[key] else "off"
        for key in ("lr", "momentum", "weight_decay", "gamma"):
            if key in values and isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"{where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def lr_at(self, iteration: int) -> float:
        """The step learning rate at `iteration` (before any warm-up override)."""
        passed = sum(1 for m in self.milestones if iteration >= m)
        return round(self.lr * self.gamma**passed, 12)  # 0.1 * 0.1 prints as 0.01, not 0.010000000000000002


@dataclass(frozen=True)
class DistributedOptions:
    """How a data-parallel (ImageNet) run is spread over processes: config `experiments.<name>.distributed`, and the
    one set of defaults for the launcher, the trainer and the CLI."""

    nodes: int = 1  # torchrun agents, one per node (one srun task each); > 1 needs SLURM
    processes_per_node: int = 1  # training processes per agent: one per GPU (gloo processes on CPU)
    device: str = "auto"  # auto: CUDA with NCCL where present, else CPU with gloo
    workers: int = 4  # DataLoader workers (JPEG decoding) per process
    sync_bn: bool = False  # SyncBatchNorm: BN over the global batch (results independent of the process count)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of a data-parallel run's global batch; a ConfigError when it does not divide."""
    if batch_size % processes:
        raise ConfigError(
            f"the global batch {batch_size} does not divide into {processes} processes; pick a batch size that is "
            "a multiple of the number of processes"
        )
    return batch_size // processes


# A multi-node run's rendezvous port without --port: base + SLURM job id % span, so that concurrent jobs differ and
# all stay below Linux's ephemeral range (32768 and up).
RENDEZVOUS_PORT_BASE = 20000
RENDEZVOUS_PORT_SPAN = 10000


def rendezvous_port(explicit: int | None, slurm_job_id: str | None) -> int:
    """The rendezvous port: `explicit` (launch --port) where given, else the one derived from the SLURM job id."""
    if explicit:
        return explicit
    return RENDEZVOUS_PORT_BASE + int(slurm_job_id or 0) % RENDEZVOUS_PORT_SPAN


def load_schedules(extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """The package's named schedules, extended or overridden by `extra` (config.yaml's `schedules:`), with every
    schedule that extends a base (`base`, optionally `scale`) resolved into plain values."""
    schedules = {**copy.deepcopy(_package_schedules()), **(extra or {})}
    return {name: _resolve_base(name, schedules) for name in schedules}


def _base_chain(name: str, schedules: dict[str, dict]) -> list[str]:
    """`name`, the schedule it extends, that one's base, ...: the schedules whose values make up `name`."""
    chain = [name]
    while (base := (schedules.get(chain[-1]) or {}).get("base")) is not None:
        if base in chain:
            raise ConfigError(f"schedule {name!r}: its bases loop ({' -> '.join([*chain, base])})")
        if base not in schedules:
            raise ConfigError(
                f"schedule {chain[-1]!r}: base {base!r} is not a schedule; known: {', '.join(sorted(schedules))}"
            )
        chain.append(base)
    return chain


def _resolve_base(name: str, schedules: dict[str, dict]) -> dict:
    """`{base: S, scale: k, ...}`: schedule S (resolved first), its iterations and milestones divided by k
    (exactly) where `scale` is given, then the entry's own values. A variant states only what it changes, and one
    stated factor keeps a short schedule the same protocol as its source."""
    values = schedules[name]
    if "base" not in values:
        if "scale" in values:
            raise ConfigError(f"schedule {name!r}: scale needs a base schedule to scale")
        return values
    _base_chain(name, schedules)  # a loop or a missing base: one clear line
    own = dict(values)
    source = own.pop("base")
    base = _resolve_base(source, schedules)
    if "scale" not in own:
        return {**base, **own}
    factor = own.pop("scale")
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"schedule {name!r}: scale must be a positive integer (got {factor!r})")
    lengths = [base["iterations"], *base.get("milestones", [])]
    if any(n % factor for n in lengths):
        raise ConfigError(f"schedule {name!r}: scale {factor} does not divide {source!r}'s iterations {lengths}")
    scaled = {
        "iterations": base["iterations"] // factor,
        "milestones": [m // factor for m in base.get("milestones", [])],
    }
    return {**base, **scaled, **own}


def resolve_settings(
    schedule: str, overrides: dict | None = None, schedules: dict[str, dict] | None = None
) -> TrainSettings:
    """Schedule `schedule` of `schedules` (default: the package's, see load_schedules) with `overrides` on top: the
    one place where a run's settings are merged."""
    schedules = load_schedules() if schedules is None else schedules
    if schedule not in schedules:
        raise ConfigError(f"unknown schedule {schedule!r}; known: {', '.join(sorted(schedules))}")
    values = {**schedules[schedule], **(overrides or {})}
    return TrainSettings.from_dict(values, where=f"schedule {schedule!r}")


def settings_hash(model: str, dataset_sha256: str, seed: int, settings: TrainSettings) -> str:
    """A short, stable identity of a run's full configuration."""
    blob = json.dumps(
        {"model": model, "data": dataset_sha256, "seed": seed, "settings": settings.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
