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


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a training run. Defaults are the paper's CIFAR protocol (section 4.2)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    iterations: int = 64000
    milestones: tuple[int, ...] = (32000, 48000)
    gamma: float = 0.1
    # {"lr": 0.01, "until_train_error": 0.8}: the ResNet-110 warm-up; None for none.
    warmup: dict | None = None
    eval_every: int = 1000
    checkpoint_every: int | None = None  # default: every evaluation
    check_every: int = 50  # NaN and warm-up checks (each costs one device sync)
    split: str = "test"  # "test": 50k/10k as reported; "val": the paper's 45k/5k split
    normalize: str = "pixel_mean"  # the paper's per-pixel mean subtraction; or "channel" (mean/std per channel)
    augment: dict | None = None  # {"pad": 4, "flip": True}; None: the dataset's defaults
    precision: str = "auto"  # auto: bf16 autocast where the device has fast bf16, else fp32; or fp32 / bf16
    channels_last: str = "auto"  # auto: with bf16; or "on" / "off"
    # auto: on for runs of >= 2000 iterations on CUDA, >= core.CPU_COMPILE_MIN_ITERATIONS on CPU; or "on" / "off"
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


@functools.cache
def _package_schedules() -> dict[str, dict]:
    """schedules.yaml as written, read once per process (callers copy before changing it)."""
    return yaml.safe_load(SCHEDULES_FILE.read_text())


def load_schedules(extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """The package's named schedules, extended or overridden by `extra` (config.yaml's `schedules:`), with every
    scaled schedule (`scaled_from`, `scale`) expanded into plain values."""
    schedules = {**copy.deepcopy(_package_schedules()), **(extra or {})}
    return {name: _expand_scaled(name, values, schedules) for name, values in schedules.items()}


def schedule_keys(name: str) -> list[str]:
    """The keys of the package's schedules.yaml whose values make up schedule `name` (itself, and the schedule it
    is scaled from): what a DVC stage tracks as its params."""
    source = (_package_schedules().get(name) or {}).get("scaled_from")
    return [name, source] if source else [name]


def _expand_scaled(name: str, values: dict, schedules: dict[str, dict]) -> dict:
    """`{scaled_from: S, scale: k, ...}`: schedule S with its iterations and milestones divided by k (exactly), then
    the entry's own values. One stated factor keeps a short schedule the same protocol as its source."""
    if "scaled_from" not in values:
        return values
    own = dict(values)
    source, factor = own.pop("scaled_from"), own.pop("scale", None)
    base = schedules.get(source)
    if base is None or "scaled_from" in base:
        raise ConfigError(f"schedule {name!r}: scaled_from {source!r} must name a plain schedule")
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
