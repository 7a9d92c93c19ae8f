"""One resolved run (dataset, model, seed, settings, data-parallel layout) and settings.json, the file it is read from.

The plan resolves every run of config.yaml once and writes it to the run's settings.json (`resnet-repro plan`, a
pipeline stage of its own); a training job reads that file and nothing else of the configuration, so it runs no
planner, no schema validation and no other experiment's code. DVC tracks the file's values as the training stage's
params: `dvc params diff` shows the settings a run really had. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .paths import DETAILS_FILE, METRICS_FILE, RESPONSES_FILE, SETTINGS_FILE, TRAINING_FILES, prepared_dir, run_dir
from .runfiles import atomic_write_bytes, open_input
from .settings import DistributedOptions, TrainSettings, settings_hash

# settings.json's layout; a file of another format is refused in one line.
SPEC_FORMAT = 1
# The values of settings.json that decide what a run computes: a training stage's params. A data-parallel run's
# process layout (nodes, processes, device, loader workers) only decides how fast: changing it retrains nothing.
# SyncBatchNorm does change the result.
RESULT_KEYS = ("dataset", "model", "seed", "settings")
DISTRIBUTED_RESULT_KEYS = ("distributed.sync_bn",)


@dataclass(frozen=True)
class RunSpec:
    """One run: what is trained, on which data, with which seed and settings, and (ImageNet) how it is spread over
    processes. Its files live in `folder`."""

    dataset: str
    model: str
    seed: int
    settings: TrainSettings
    distributed: DistributedOptions | None = None  # the data-parallel layout (ImageNet runs)
    schedule: str | None = None  # the named schedule its settings start from (for the reader; not a result key)

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.model}-seed{self.seed}"

    @property
    def folder(self) -> str:
        return run_dir(self.dataset, self.model, self.seed)

    @property
    def prepared(self) -> str:
        return prepared_dir(self.dataset)

    @property
    def settings_file(self) -> str:
        return f"{self.folder}/{SETTINGS_FILE}"

    def files(self) -> dict[str, str]:
        """What training writes, by kind: model, history, epochs."""
        return {name.split(".")[0]: f"{self.folder}/{name}" for name in TRAINING_FILES}

    @property
    def metrics(self) -> str:
        return f"{self.folder}/{METRICS_FILE}"

    @property
    def details(self) -> str:
        return f"{self.folder}/{DETAILS_FILE}"

    @property
    def responses(self) -> str:
        """Fig. 7's layer responses of this run's model."""
        return f"{self.folder}/{RESPONSES_FILE}"

    def identity(self, data_sha256: str) -> str:
        """The run's identity on data `data_sha256` (checkpoints, provenance): the hash of what it computes, plus
        SyncBatchNorm, which changes the result; not the process layout, so a checkpoint resumes on other GPUs."""
        run_id = settings_hash(self.model, data_sha256, self.seed, self.settings)
        return f"{run_id}-syncbn" if self.distributed is not None and self.distributed.sync_bn else run_id

    def result_keys(self) -> list[str]:
        """The keys of settings.json whose values decide the result (a training stage's DVC params)."""
        return [*RESULT_KEYS, *(DISTRIBUTED_RESULT_KEYS if self.distributed is not None else ())]

    def result_json(self) -> str:
        """The values of `result_keys` as one JSON text: what must not change for a finished run to stay done (the
        Snakemake rules' rerun trigger, as the params are DVC's)."""
        values, result = self.to_dict(), {}
        for key in self.result_keys():
            value = values
            for part in key.split("."):  # DVC's dotted keys into nested values
                value = value[part]
            result[key] = value
        return json.dumps(result, sort_keys=True)

    def with_layout(self, **changes: Any) -> RunSpec:
        """This run with some of its data-parallel options changed (command-line overrides of one launch)."""
        return replace(self, distributed=replace(self.distributed or DistributedOptions(), **changes))

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "format": SPEC_FORMAT,
            "dataset": self.dataset,
            "model": self.model,
            "seed": self.seed,
            "settings": self.settings.to_dict(),
        }
        if self.distributed is not None:
            values["distributed"] = self.distributed.to_dict()
        if self.schedule is not None:
            values["schedule"] = self.schedule
        return values

    def to_json(self) -> str:
        """settings.json's text: sorted keys, so equal runs give equal bytes."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: Any, where: str) -> RunSpec:
        """The run `values` describe (settings.json's layout); a ConfigError naming `where` when they do not."""
        if not isinstance(values, dict) or values.get("format") != SPEC_FORMAT:
            raise ConfigError(f"{where}: not a settings.json of format {SPEC_FORMAT} (`resnet-repro plan` writes them)")
        missing = [key for key in RESULT_KEYS if key not in values]
        if missing:
            raise ConfigError(f"{where}: no {', '.join(missing)}")
        if not isinstance(values["seed"], int) or isinstance(values["seed"], bool):
            raise ConfigError(f"{where}: seed must be an integer (got {values['seed']!r})")
        distributed = values.get("distributed")
        if distributed is not None:
            known = {f.name for f in fields(DistributedOptions)}
            if not isinstance(distributed, dict) or set(distributed) - known:
                raise ConfigError(f"{where}: distributed takes {', '.join(sorted(known))} (got {distributed!r})")
        options = None if distributed is None else DistributedOptions(**distributed)
        try:
            settings = TrainSettings.from_dict(values["settings"], where="settings")
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        schedule = values.get("schedule")
        return cls(str(values["dataset"]), str(values["model"]), values["seed"], settings, options, schedule)


def read_spec(path: Path | str) -> RunSpec:
    """The run a settings.json describes; a missing, unreadable or malformed file is one line."""
    path = Path(path)
    with open_input(path, "settings file") as handle:
        try:
            values = json.loads(handle.read())
        except ValueError as error:
            raise DataError(f"{path}: not valid JSON ({error}); write it again with `resnet-repro plan`") from None
    return RunSpec.from_dict(values, str(path))


def write_spec(spec: RunSpec, path: Path | str) -> bool:
    """Write `spec` to `path` if its content differs (an unchanged file keeps its time: nothing downstream looks
    stale); return whether it was written."""
    path = Path(path)
    text = spec.to_json()
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_bytes(path, text.encode())
    return True
