"""The experiment matrix (config.yaml) resolved into runs: which (dataset, model, seed) to train, with what settings.

`Plan` is the single source both front ends read: the Snakefile builds its DAG from it and `resnet_repro.stages`
turns it into DVC stages; `write_specs` writes each run's settings.json, which its jobs read (resnet_repro.runspec).
Every config mistake is found here, before any job runs, as one ConfigError naming the key. Nothing here imports
torch, so a Snakemake dry run stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .archives import ARCHIVES, source_path
from .catalog import CATALOG
from .errors import ConfigError, DataError
from .runspec import RunSpec, write_spec
from .settings import DistributedOptions, load_schedules, per_process_batch, resolve_settings
from .shell import unquotable

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")
IMAGENET = "imagenet"
DIGITS = "digits"  # scikit-learn's bundled digits: prepared from the package, no archive, no folder


def reads_image_folder(dataset: str) -> bool:
    """A dataset prepared from a local image folder (config `datasets.<name>.path`): not an official archive,
    the bundled digits or ImageNet (indexed in place, not prepared)."""
    return dataset not in ARCHIVES and dataset not in (DIGITS, IMAGENET)


@dataclass
class Plan:
    config: dict
    runs: dict[str, RunSpec] = field(default_factory=dict)
    experiments: dict[str, list[RunSpec]] = field(default_factory=dict)  # enabled experiments only
    origin: dict[str, str] = field(default_factory=dict)  # run key -> the first experiment in config.yaml defining it

    def run(self, dataset: str, model: str, seed: int | str) -> RunSpec:
        key = f"{dataset}-{model}-seed{seed}"
        if key not in self.runs:
            raise ConfigError(f"no run {dataset}/{model}/seed{seed} in config.yaml")
        return self.runs[key]

    def experiment_of(self, run: RunSpec) -> str:
        """The first experiment in config.yaml that defines `run`."""
        return self.origin[run.key]

    @property
    def datasets(self) -> list[str]:
        return sorted({run.dataset for run in self.runs.values()})

    def targets(self, experiments: list[str]) -> list[str]:
        """The metrics files of the named (enabled) experiments."""
        files: list[str] = []
        for name in experiments:
            files += [run.metrics for run in self.experiments.get(name, []) if run.metrics not in files]
        return files

    @property
    def default_experiments(self) -> list[str]:
        return [name for name in self.config.get("all", []) if name in self.experiments]


# Experiment names become stage and Snakemake rule names, log paths and folders: kept to identifier-like words.
_EXPERIMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _check_command_values(config: dict) -> None:
    """The config values that reach stage commands, checked as strings (always): usable experiment names, sources
    `fetch` can read, and sources and paths that one argument can carry."""
    for name in config["experiments"]:
        if not (isinstance(name, str) and _EXPERIMENT_NAME.fullmatch(name)):
            raise ConfigError(
                f"config: experiments: {name!r} is not a usable experiment name (a letter, then letters, digits or _)"
            )
    for dataset, entry in (config.get("datasets") or {}).items():
        for key in ("source", "path"):
            value = (entry or {}).get(key)
            if isinstance(value, str) and unquotable(value):
                raise ConfigError(f"config: datasets.{dataset}.{key}: {value!r} holds a line break or NUL")
            if isinstance(value, str) and value.startswith("-"):  # the command would read it as an option
                raise ConfigError(f"config: datasets.{dataset}.{key}: {value!r} starts with '-' (write ./{value})")
        if dataset in ARCHIVES and (entry or {}).get("source") is not None:
            try:
                source_path(entry["source"])
            except DataError as error:
                raise ConfigError(f"config: datasets.{dataset}.source: {error}") from None


def _check_local_source(datasets: dict, dataset: str) -> None:
    """A file:// or plain-path source must name an existing file (an http(s):// one is only tried by `fetch`)."""
    source = (datasets.get(dataset) or {}).get("source")
    local = source_path(source) if source is not None else None
    if local is not None and not local.is_file():
        raise ConfigError(f"config: datasets.{dataset}.source: {local} does not exist")


def _format_path(path: Any) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH) -> None:
    """Check config against the JSON schema; raise one ConfigError naming the offending key."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(e.absolute_path)))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    where = _format_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        patterns = error.schema.get("patternProperties", {})

        extra = [k for k in extra if not any(re.match(p, k) for p in patterns)] or extra
        raise ConfigError(f"config: unknown key {_format_path([*error.absolute_path, extra[0]])!r}")
    raise ConfigError(f"config: {where}: {error.message}")


def load_config(path: Path | str = "config.yaml", schema_path: Path | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    validate_config(config, schema_path or path.parent / SCHEMA_PATH)
    return config


def build_plan(config: dict, check_paths: bool = True, check_data: bool | None = None) -> Plan:
    """Resolve every enabled run; raise a ConfigError naming the key on any inconsistency.

    `check_paths`: look at the local data (the ImageNet layout, and whether local copies exist: image folders,
    file:// and path sources). `check_data=False` skips only the local copies: the Snakefile and the run-time
    commands leave a missing one to the jobs that read it (Snakemake names it as a missing input), so a dataset
    absent on this machine blocks only the targets that need it; `pipeline check` checks everything, after the
    config's own mistakes."""
    check_data = check_paths if check_data is None else check_data
    plan = Plan(config)
    schedules = load_schedules(config.get("schedules") or {})
    datasets = config.get("datasets", {})
    for index, name in enumerate(config.get("all", [])):
        if name not in config["experiments"]:
            raise ConfigError(f"config: all.{index}: unknown experiment {name!r}")
    _check_command_values(config)
    for name, experiment in config["experiments"].items():
        where = f"experiments.{name}"
        if experiment.get("enabled", True) is False:
            continue
        dataset = experiment["dataset"]
        if dataset not in datasets:
            raise ConfigError(f"config: {where}.dataset: {dataset!r} is not defined under datasets")
        if "distributed" in experiment and dataset != "imagenet":
            raise ConfigError(f"config: {where}.distributed: data-parallel training is for dataset imagenet only")
        if dataset == "imagenet":
            if not (datasets["imagenet"] or {}).get("path"):
                raise ConfigError(
                    f"config: datasets.imagenet.path: experiment {name!r} is enabled but no local ImageNet path is "
                    "set (ImageNet cannot be downloaded automatically)"
                )
            if check_paths:
                from .imagenet import validate_layout

                validate_layout(datasets["imagenet"]["path"])
        distributed = distributed_options(config, name) if dataset == IMAGENET else None
        runs = []
        for model, entry in experiment["models"].items():
            model_where = f"{where}.models.{model}"
            if model not in CATALOG:
                raise ConfigError(f"config: {model_where}: unknown model {model!r}; `resnet-repro models` lists them")
            if entry.get("enabled", True) is False:
                continue
            schedule = entry.get("schedule", experiment["schedule"])
            schedule_key = f"{model_where}.schedule" if "schedule" in entry else f"{where}.schedule"
            if schedule not in schedules:
                raise ConfigError(f"config: {schedule_key}: unknown schedule {schedule!r}; known: {sorted(schedules)}")
            overrides = {**experiment.get("settings", {}), **entry.get("settings", {})}
            try:
                settings = resolve_settings(schedule, overrides, schedules)
            except ConfigError as error:
                raise ConfigError(f"config: {model_where}: {error}") from None
            for seed in entry.get("seeds", experiment.get("seeds", [0])):
                run = RunSpec(dataset, model, seed, settings, distributed, schedule)
                existing = plan.runs.get(run.key)
                if existing is None:
                    plan.runs[run.key], plan.origin[run.key] = run, name
                elif existing.settings != settings:
                    raise ConfigError(
                        f"config: {model_where}: run {dataset}/{model}/seed{seed} is also defined by experiment "
                        f"{plan.origin[run.key]!r} with different settings; give one of them another seed"
                    )
                elif existing.distributed != distributed:  # one run, one layout (sync_bn changes its result)
                    raise ConfigError(
                        f"config: {where}.distributed: run {dataset}/{model}/seed{seed} is also defined by experiment "
                        f"{plan.origin[run.key]!r} with other distributed options; give both the same ones"
                    )
                runs.append(plan.runs[run.key])
        if dataset == IMAGENET:
            _check_imagenet(name, runs)
        plan.experiments[name] = runs
    if check_data:  # after every mistake in the config itself: those are reported first
        _check_local_data(datasets, plan.datasets)
    return plan


def _check_local_data(datasets: dict, used: list[str]) -> None:
    """The local copies that enabled experiments read exist: a file:// or path source, an image folder."""
    for dataset in used:
        if dataset in ARCHIVES:
            _check_local_source(datasets, dataset)
        elif reads_image_folder(dataset):
            local = Path(datasets[dataset]["path"])
            if not local.exists():
                raise ConfigError(f"config: datasets.{dataset}.path: {local} does not exist")


def distributed_options(config: dict, experiment: str) -> DistributedOptions:
    """An experiment's data-parallel options (config `experiments.<name>.distributed`) over the defaults."""
    return DistributedOptions(**(config["experiments"][experiment].get("distributed") or {}))


def _check_imagenet(experiment: str, runs: list[RunSpec]) -> None:
    """What else can be wrong before any job runs: a global batch that does not divide into the processes, an
    augmentation the ImageNet loader cannot apply."""
    for run in runs:
        assert run.distributed is not None
        processes = run.distributed.nodes * run.distributed.processes_per_node
        where = f"config: experiments.{experiment}.models.{run.model}"
        try:
            per_process_batch(run.settings.batch_size, processes)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error} (distributed.nodes x distributed.processes_per_node)") from None
        if run.settings.augment is not None:
            from .imagenet import Augment  # torch: only for a config that sets an augmentation

            try:
                Augment.from_settings(run.settings.augment)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None


def validated(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """`config` after schema validation (for the Snakefile, which loads the YAML itself)."""
    validate_config(config, schema_path)
    return config


def load_plan(config_path: Path | str = "config.yaml", check_data: bool = False) -> Plan:
    """The plan of a config file. Local image folders are checked only with `check_data` (see build_plan)."""
    return build_plan(load_config(config_path), check_data=check_data)


def write_specs(plan: Plan, root: Path | str = ".") -> list[Path]:
    """Every run's settings.json (under `root`), written where its content changed; return the files written."""
    files = [(run, Path(root) / run.settings_file) for run in plan.runs.values()]
    return [path for run, path in files if write_spec(run, path)]
