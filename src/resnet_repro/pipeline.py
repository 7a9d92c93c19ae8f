"""The experiment matrix (config.yaml) turned into a plan of stages, shared by both front ends.

`Plan` knows every run, its resolved settings, its files and the command of each stage. The Snakefile builds
its DAG from it; `dvc.yaml` is generated from it (`resnet-repro pipeline sync`). Nothing here imports torch, so
a Snakemake dry run stays fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .catalog import CATALOG
from .data import ARCHIVES, source_path
from .errors import ConfigError, DataError
from .settings import TrainSettings, load_schedules, resolve_settings, schedule_keys

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")
DVC_HEADER = (
    "# GENERATED from config.yaml by `resnet-repro pipeline sync` (every Snakemake run refreshes it).\n"
    "# Do not edit: change config.yaml instead. After adding or removing runs, sync before `dvc repro`.\n"
)
DATA_DIR = "data"
RESULTS_DIR = "results"
RUN_FILES = ("model.pt", "history.csv", "epochs.csv")
# The package's schedules as DVC sees them: the file in this repository, wherever the package is installed.
REPO_SCHEDULES = "src/resnet_repro/schedules.yaml"


@dataclass(frozen=True)
class Run:
    """One training run: (dataset, model, seed) with its resolved settings."""

    dataset: str
    model: str
    seed: int
    experiment: str  # the first experiment in config.yaml that defines it (whose keys DVC tracks)
    schedule: str
    settings: TrainSettings
    param_keys: tuple[str, ...]  # config.yaml keys whose values determine the settings

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.model}-seed{self.seed}"

    @property
    def folder(self) -> str:
        return f"{RESULTS_DIR}/{self.dataset}/{self.model}/seed{self.seed}"

    @property
    def prepared(self) -> str:
        return prepared_dir(self.dataset)

    def files(self) -> dict[str, str]:
        return {name.split(".")[0]: f"{self.folder}/{name}" for name in RUN_FILES}

    @property
    def metrics(self) -> str:
        return f"{self.folder}/metrics.json"

    @property
    def settings_json(self) -> str:
        return json.dumps(self.settings.to_dict(), sort_keys=True)


@dataclass
class Plan:
    config: dict
    runs: dict[str, Run] = field(default_factory=dict)
    experiments: dict[str, list[Run]] = field(default_factory=dict)  # enabled experiments only

    def run(self, dataset: str, model: str, seed: int | str) -> Run:
        key = f"{dataset}-{model}-seed{seed}"
        if key not in self.runs:
            raise ConfigError(f"no run {dataset}/{model}/seed{seed} in config.yaml")
        return self.runs[key]

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


# Rough milliseconds per iteration on one current datacenter GPU at the schedule's batch size, by model family;
# SLURM wall times are 2x the estimate plus 15 minutes (a model depth scales the CIFAR nets linearly).
MS_PER_ITERATION = {"cifar_layer": 0.25, "cifar_resnet": 12.0, "vgg": 10.0, "fc": 1.0, "imagenet": 120.0}


def train_resources(run: Run) -> dict[str, int]:
    """Per-job resources of a training job: one GPU, memory and a wall time that scales with the work."""
    entry = CATALOG[run.model]
    if entry.kind == "fc":
        per_iteration = MS_PER_ITERATION["fc"]
    elif entry.kind == "vgg":
        per_iteration = MS_PER_ITERATION["vgg"]
    elif entry.family == "imagenet":
        per_iteration = MS_PER_ITERATION["imagenet"]
    elif entry.args.get("widths") == (16, 32, 64):
        depth = int("".join(ch for ch in run.model if ch.isdigit()))
        per_iteration = MS_PER_ITERATION["cifar_layer"] * depth
    else:
        per_iteration = MS_PER_ITERATION["cifar_resnet"]
    minutes = 2 * per_iteration * run.settings.iterations / 60000 + 15
    memory = 32000 if entry.family == "imagenet" else 16000 if run.model == "resnet1202" else 8000
    return {"gpu": 1, "runtime": int(minutes), "mem_mb": memory}


IMAGE_VERSION_FILE = Path("containers/VERSION")
IMAGE_PREFIX_ENV = "RESNET_REPRO_IMAGE_PREFIX"  # e.g. docker://ghcr.io/you/ once the images are pushed


def container_image(kind: str, root: Path = Path(".")) -> str:
    """The pinned image of `kind` ('train' or 'render') for Snakemake's container: directive."""
    import os

    version_file = root / IMAGE_VERSION_FILE
    version = version_file.read_text().strip() if version_file.is_file() else "unknown"
    prefix = os.environ.get(IMAGE_PREFIX_ENV, "docker://localhost/")
    return f"{prefix}resnet-repro-{kind}:{version}"


def prepared_dir(dataset: str) -> str:
    return f"{DATA_DIR}/prepared/{dataset}"


def raw_archive(dataset: str) -> str:
    return f"{DATA_DIR}/raw/{ARCHIVES[dataset].filename}"


# ------------------------------------------------------------------------------------------- stage commands
# Experiment names become stage and Snakemake rule names, log paths and folders: kept to identifier-like words.
_EXPERIMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _unquotable(value: str) -> bool:
    r"""Whether no stage command can carry `value` as one argument: DVC runs a `cmd` string line by line
    (str.splitlines, which also splits at \v, \f, \x1c-\x1e, \x85, \u2028, \u2029), and no argv holds a NUL."""
    return "\0" in value or len(f"x{value}x".splitlines()) > 1


# Words left unquoted: shlex.quote's safe characters, plus `~` inside a word (as in the official CIFAR URLs), but
# neither a leading `=` (zsh expands `=cmd`) nor `~` in a word with `=` (bash expands `x=~/y` in arguments).
_PLAIN_WORD = re.compile(r"[\w@%+:,./-][\w@%+=:,./~-]*", re.ASCII)


def _shell_word(text: str) -> str:
    """`text` as one word of sh, bash or zsh: unchanged when plain, else single-quoted (as shlex.quote does)."""
    if _PLAIN_WORD.fullmatch(text) and not ("~" in text and "=" in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def command(*argv: str | int | Path) -> str:
    """The DVC stage command that runs exactly `argv`: the one place where values are quoted. Each part becomes one
    shell word (`_shell_word`; shlex.split gives `argv` back), and `${` is escaped as `\\${`, which DVC's templating
    turns back into `${` instead of substituting a parameter."""
    words = []
    for part in argv:
        if isinstance(part, bool) or not isinstance(part, (str, int, Path)):
            raise TypeError(f"command part {part!r}: expected str, int or Path")
        word = str(part)
        if _unquotable(word):
            raise ValueError(f"command part {word!r}: a line break or NUL cannot be part of a stage command")
        words.append(_shell_word(word))
    return " ".join(words).replace("${", "\\${")


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
            if isinstance(value, str) and _unquotable(value):
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
        import re

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
    extra_schedules = config.get("schedules") or {}
    schedules = load_schedules(extra_schedules)
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
            _check_imagenet(config, name, check_paths)
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
                settings = resolve_settings(schedule, overrides, extra_schedules)
            except ConfigError as error:
                raise ConfigError(f"config: {model_where}: {error}") from None
            keys = [
                key
                for key, present in (
                    (f"{where}.settings", "settings" in experiment),
                    (f"{model_where}.settings", "settings" in entry),
                )
                if present
            ]
            for seed in entry.get("seeds", experiment.get("seeds", [0])):
                run = Run(dataset, model, seed, name, schedule, settings, tuple(keys))
                existing = plan.runs.get(run.key)
                if existing is None:
                    plan.runs[run.key] = run
                elif existing.settings != settings:
                    raise ConfigError(
                        f"config: {model_where}: run {dataset}/{model}/seed{seed} is also defined by experiment "
                        f"{existing.experiment!r} with different settings; give one of them another seed"
                    )
                runs.append(plan.runs[run.key])
        plan.experiments[name] = runs
    if check_data:  # after every mistake in the config itself: those are reported first
        _check_local_data(datasets, plan.datasets)
    return plan


def _check_local_data(datasets: dict, used: list[str]) -> None:
    """The local copies that enabled experiments read exist: a file:// or path source, an image folder."""
    for dataset in used:
        if dataset in ARCHIVES:
            _check_local_source(datasets, dataset)
        elif dataset not in ("digits", IMAGENET):
            local = Path(datasets[dataset]["path"])
            if not local.exists():
                raise ConfigError(f"config: datasets.{dataset}.path: {local} does not exist")


# ------------------------------------------------------------------------------------------------ ImageNet
IMAGENET = "imagenet"
DISTRIBUTED_DEFAULTS: dict[str, Any] = {
    "nodes": 1,  # torchrun agents, one per node (one srun task each); > 1 needs SLURM
    "processes_per_node": 1,  # training processes per agent: one per GPU (gloo processes on CPU)
    "device": "auto",  # auto: CUDA with NCCL where present, else CPU with gloo
    "workers": 4,  # DataLoader workers (JPEG decoding) per process
    "sync_bn": False,  # SyncBatchNorm: BN over the global batch (results independent of the process count)
}


def distributed_options(config: dict, experiment: str) -> dict[str, Any]:
    """An experiment's data-parallel options (config `experiments.<name>.distributed`) with the defaults."""
    return {**DISTRIBUTED_DEFAULTS, **(config["experiments"][experiment].get("distributed") or {})}


def _check_imagenet(config: dict, experiment: str, check_paths: bool) -> None:
    """What can be wrong before any job runs: the folder layout, and whether the batch divides into processes."""
    options = distributed_options(config, experiment)
    processes = options["nodes"] * options["processes_per_node"]
    entry = config["experiments"][experiment]
    if check_paths:
        from .imagenet import validate_layout

        validate_layout(config["datasets"]["imagenet"]["path"])
    schedules = load_schedules(config.get("schedules") or {})
    for model, model_entry in entry["models"].items():
        schedule = model_entry.get("schedule", entry["schedule"])
        values = {**schedules.get(schedule, {}), **entry.get("settings", {}), **model_entry.get("settings", {})}
        batch = values.get("batch_size", TrainSettings.batch_size)
        if batch % processes:
            raise ConfigError(
                f"config: experiments.{experiment}.models.{model}: the global batch {batch} does not divide into "
                f"{processes} processes (distributed.nodes x distributed.processes_per_node)"
            )
        if "augment" in values:
            from .imagenet import Augment

            try:
                Augment.from_settings(values["augment"])
            except ConfigError as error:
                raise ConfigError(f"config: experiments.{experiment}.models.{model}: {error}") from None


def imagenet_resources(run: Run, config: dict) -> dict[str, Any]:
    """Resources of an ImageNet training job: all its GPUs (locally `--resources gpu=N` counts them), CPUs for the
    loader workers, and for several nodes the SLURM task layout (one srun task per node, each a torchrun agent).
    Keys that do not apply are None (Snakemake drops them)."""
    options = distributed_options(config, run.experiment)
    nodes, per_node = options["nodes"], options["processes_per_node"]
    base = train_resources(run)
    gpus = 0 if options["device"] == "cpu" else nodes * per_node
    multi = nodes > 1
    return {
        "gpu": gpus,
        "runtime": int(base["runtime"] / max(1, gpus)) + 15 if gpus else base["runtime"],
        "mem_mb": 12000 * per_node,  # per node: a process, its CUDA context and its workers' prefetched batches
        "cpus_per_task": per_node * (options["workers"] + 1),
        "nodes": nodes if multi else None,
        # The job step plugin runs an "mpi" job's command without wrapping it in `srun -n1`: launch runs srun itself.
        "mpi": "srun" if multi else None,
        "tasks": nodes if multi else None,
        "tasks_per_gpu": 0 if multi else None,  # else the plugin turns `tasks` into --ntasks-per-gpu
        # SLURM gives each of the N nodes at least one of the N tasks: one torchrun agent per node.
        "slurm_extra": "--signal=TERM@300 --open-mode=append",
    }


def imagenet_index_dir() -> str:
    return prepared_dir(IMAGENET)


def validated(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """`config` after schema validation (for the Snakefile, which loads the YAML itself)."""
    validate_config(config, schema_path)
    return config


def archive_dataset(archive: str) -> str:
    """The dataset whose official archive is named `archive`."""
    for name, spec in ARCHIVES.items():
        if spec.filename == archive:
            return name
    raise ConfigError(f"no dataset has the archive {archive!r}")


def prepare_inputs(dataset: str, config: dict | None = None) -> list[str]:
    """What the prepare step reads: the official archive, or a local image folder's path (outside the DAG)."""
    if dataset in ARCHIVES:
        return [raw_archive(dataset)]
    local = ((config or {}).get("datasets", {}).get(dataset) or {}).get("path")
    return [local] if local and dataset not in ("digits", IMAGENET) else []


def load_plan(config_path: Path | str = "config.yaml", check_data: bool = False) -> Plan:
    """The plan of a config file. Local image folders are checked only with `check_data` (see build_plan)."""
    return build_plan(load_config(config_path), check_data=check_data)


def run_settings(config_path: Path | str, experiment: str, model: str) -> TrainSettings:
    """The resolved settings of `model` in `experiment` (what `train --config --experiment` uses)."""
    plan = load_plan(config_path)
    if experiment not in plan.experiments:
        raise ConfigError(f"experiment {experiment!r} is not an enabled experiment of {config_path}")
    for run in plan.experiments[experiment]:
        if run.model == model:
            return run.settings
    raise ConfigError(f"model {model!r} is not an enabled model of experiment {experiment!r} in {config_path}")


# ----------------------------------------------------------------------------------------------- dvc.yaml
def _schedule_param(run: Run, config: dict) -> dict[str, list[str]]:
    if run.schedule in (config.get("schedules") or {}):
        return {"config.yaml": [f"schedules.{run.schedule}"]}
    return {REPO_SCHEDULES: schedule_keys(run.schedule)}


def in_git(path: str) -> bool:
    """Whether a stage output is committed to git rather than stored in DVC's cache: the small results (histories,
    metrics, layer responses, figures, tables) are, as DVC's examples keep theirs, so a clone shows them and
    `dvc metrics diff` compares commits without a pull; data and weights (*.pt) go to the cache."""
    return not (path.startswith(f"{DATA_DIR}/") or path.endswith(".pt"))


def _dvc_outs(paths: list[str]) -> list[Any]:
    return [{path: {"cache": False}} if in_git(path) else path for path in paths]


def stage_names(run: Run) -> dict[str, str]:
    return {"train": f"train-{run.key}", "evaluate": f"evaluate-{run.key}"}


def dvc_stages(plan: Plan) -> dict[str, dict]:
    """The DVC stages of every enabled run, with the commands the Snakemake rules also run (through DVC)."""
    stages: dict[str, dict] = {}
    datasets_conf = plan.config["datasets"]
    for dataset in plan.datasets:
        path = (datasets_conf.get(dataset) or {}).get("path")  # ImageNet's copy, or a local image folder
        if dataset == IMAGENET:
            # The copy lives outside the repository (not a DVC dependency); its path is a parameter, and the index
            # records the copy's identity (a fingerprint of its file names and sizes).
            stages["index-imagenet"] = {
                "cmd": command("resnet-repro", "index-imagenet", "--path", path, "--out", imagenet_index_dir()),
                "params": [{"config.yaml": ["datasets.imagenet.path"]}],
                "outs": [imagenet_index_dir()],
            }
        elif dataset in ARCHIVES:
            source = (datasets_conf.get(dataset) or {}).get("source", ARCHIVES[dataset].url)
            stages[f"fetch-{dataset}"] = {
                "cmd": command("resnet-repro", "fetch", dataset, "--source", source, "--out", raw_archive(dataset)),
                "outs": [raw_archive(dataset)],
            }
            stages[f"prepare-{dataset}"] = {
                "cmd": command(
                    "resnet-repro", "prepare", dataset, "--raw", raw_archive(dataset), "--out", prepared_dir(dataset)
                ),
                "deps": [raw_archive(dataset)],
                "outs": [prepared_dir(dataset)],
            }
        elif dataset == "digits":
            stages["prepare-digits"] = {
                "cmd": command("resnet-repro", "prepare", "digits", "--out", prepared_dir(dataset)),
                "outs": [prepared_dir(dataset)],
            }
        else:
            stages[f"prepare-{dataset}"] = {
                "cmd": command("resnet-repro", "prepare", "imagefolder", "--raw", path, "--out", prepared_dir(dataset)),
                "outs": [prepared_dir(dataset)],
            }
    for run in plan.runs.values():
        names = stage_names(run)
        params: list[Any] = [_schedule_param(run, plan.config)]
        keys = list(run.param_keys)
        distributed = plan.config["experiments"][run.experiment].get("distributed") or {}
        if run.dataset == IMAGENET and "sync_bn" in distributed:
            keys.append(f"experiments.{run.experiment}.distributed.sync_bn")  # changes the result; the rest is speed
        if keys:
            params.insert(0, {"config.yaml": keys})
        experiment = ("--config", "config.yaml", "--experiment", run.experiment)
        train = (*experiment, "--model", run.model, "--seed", run.seed, "--data", run.prepared, "--out", run.folder)
        if run.dataset == IMAGENET:
            # The process layout is read from config.yaml at run time, not written into the command: changing the
            # number of GPUs must not make DVC retrain a finished run.
            cmd = command("resnet-repro", "launch", *experiment, "--", "train-imagenet", *train)
        else:
            cmd = command("resnet-repro", "train", *train)
        stages[names["train"]] = {
            "cmd": cmd,
            "deps": [run.prepared],
            "params": params,
            "outs": list(run.files().values()),
        }
        stages[names["evaluate"]] = {
            "cmd": command("resnet-repro", "evaluate", "--run", run.folder, "--data", run.prepared),
            "deps": [run.files()["model"], run.files()["history"], run.files()["epochs"], run.prepared],
            "metrics": [{run.metrics: {"cache": not in_git(run.metrics)}}],
        }
    from .render.outputs import render_stages  # render imports this module

    stages.update(render_stages(plan))
    return stages


def dvc_yaml_text(plan: Plan) -> str:
    stages = {
        name: {**stage, "outs": _dvc_outs(stage["outs"])} if "outs" in stage else stage
        for name, stage in dvc_stages(plan).items()
    }
    return DVC_HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=1000)


def sync_dvc_yaml(plan: Plan, path: Path | str = "dvc.yaml") -> bool:
    """Write dvc.yaml if its content differs; return whether it changed."""
    path = Path(path)
    text = dvc_yaml_text(plan)
    if path.is_file() and path.read_text() == text:
        return False
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return True
