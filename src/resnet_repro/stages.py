"""Runs turned into jobs: the DVC stages (commands, dependencies, outputs), job resources and container images.

`dvc.yaml` is generated from these stages (`resnet-repro pipeline sync`), and every Snakemake rule runs its stage
through DVC, so both front ends run the same commands on the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .catalog import CATALOG
from .data import ARCHIVES
from .errors import ConfigError
from .paths import DATA_DIR, prepared_dir, raw_archive
from .plan import DIGITS, IMAGENET, Plan, Run, reads_image_folder
from .render.outputs import render_stages
from .runfiles import atomic_write_bytes
from .settings import schedule_keys
from .shell import command
from .sources import command_sources

DVC_HEADER = (
    "# GENERATED from config.yaml by `resnet-repro pipeline sync` (every Snakemake run refreshes it).\n"
    "# Do not edit: change config.yaml instead. After adding or removing runs, sync before `dvc repro`.\n"
)
# The package's schedules as DVC sees them: the file in this repository, wherever the package is installed.
REPO_SCHEDULES = "src/resnet_repro/schedules.yaml"


# Rough milliseconds per iteration on one current datacenter GPU at the schedule's batch size, by model family;
# SLURM wall times are 2x the estimate plus 15 minutes. The catalogue depth scales the 6n+2 CIFAR nets and the
# ImageNet ResNets linearly: 4 ms per layer at batch 256 is about what an A100 in TF32 is commonly quoted at
# (ResNet-18 ~3000 images/s, ResNet-50 ~1200, ResNet-152 ~450; not measured here).
MS_PER_ITERATION = {"cifar_layer": 0.25, "cifar_resnet": 12.0, "vgg": 10.0, "fc": 1.0, "imagenet_layer": 4.0}

# sbatch flags of every training job (the train rule and ImageNet's): SIGTERM 5 minutes before the time limit, so
# the trainer checkpoints and a retry resumes; append keeps the log of every attempt in one file.
SLURM_TRAIN_EXTRA = "--signal=TERM@300 --open-mode=append"


def train_resources(run: Run) -> dict[str, int]:
    """Per-job resources of a training job: one GPU, memory and a wall time that scales with the work."""
    entry = CATALOG[run.model]
    if entry.kind == "fc":
        per_iteration = MS_PER_ITERATION["fc"]
    elif entry.kind == "vgg":
        per_iteration = MS_PER_ITERATION["vgg"]
    elif entry.family == "imagenet":
        assert entry.depth, f"catalogue entry {run.model} has no depth"
        per_iteration = MS_PER_ITERATION["imagenet_layer"] * entry.depth
    elif entry.args.get("widths") == (16, 32, 64) and entry.depth:
        per_iteration = MS_PER_ITERATION["cifar_layer"] * entry.depth
    else:
        per_iteration = MS_PER_ITERATION["cifar_resnet"]
    minutes = 2 * per_iteration * run.settings.iterations / 60000 + 15
    deep = (entry.depth or 0) > 200  # ResNet-1202's activations at batch 128 outgrow 8 GB
    memory = 32000 if entry.family == "imagenet" else 16000 if deep else 8000
    return {"gpu": 1, "runtime": int(minutes), "mem_mb": memory}


DEFAULT_TRAIN_THREADS = 2  # where the cores are not known (a cluster executor): a CPU training job's share


def train_threads(plan: Plan, run: Run, cores: int | None) -> int:
    """Threads of `run`'s training job when Snakemake has `cores`: config `train_threads`, or with `auto` the cores
    spread evenly over the runs of its experiment, at least one each. On this project's 2-core reference machine,
    two 1-thread jobs side by side finish the short experiment sooner than one 2-thread job at a time (README,
    "Speed"); with many cores each job gets its share."""
    value = plan.config.get("train_threads", "auto")
    if not isinstance(cores, int) or cores < 1:
        return DEFAULT_TRAIN_THREADS if value == "auto" else value
    if value != "auto":
        return min(value, cores)
    return max(1, cores // len(plan.experiments.get(run.experiment) or [run]))


IMAGE_VERSION_FILE = Path("containers/VERSION")
IMAGE_PREFIX_ENV = "RESNET_REPRO_IMAGE_PREFIX"  # e.g. docker://ghcr.io/you/ once the images are pushed


def container_image(kind: str, root: Path = Path(".")) -> str:
    """The pinned image of `kind` ('train' or 'render') for Snakemake's container: directive."""
    version_file = root / IMAGE_VERSION_FILE
    version = version_file.read_text().strip() if version_file.is_file() else "unknown"
    prefix = os.environ.get(IMAGE_PREFIX_ENV, "docker://localhost/")
    return f"{prefix}resnet-repro-{kind}:{version}"


def imagenet_resources(run: Run) -> dict[str, Any]:
    """Resources of an ImageNet training job: all its GPUs (locally `--resources gpu=N` counts them), CPUs for the
    loader workers, and for several nodes the SLURM task layout (one srun task per node, each a torchrun agent).
    Keys that do not apply are None (Snakemake drops them)."""
    options = run.distributed
    assert options is not None, f"{run.key} is not a data-parallel run"
    nodes, per_node = options.nodes, options.processes_per_node
    base = train_resources(run)
    gpus = 0 if options.device == "cpu" else nodes * per_node
    multi = nodes > 1
    return {
        "gpu": gpus,
        "runtime": int(base["runtime"] / max(1, gpus)) + 15 if gpus else base["runtime"],
        "mem_mb": 12000 * per_node,  # per node: a process, its CUDA context and its workers' prefetched batches
        "cpus_per_task": per_node * (options.workers + 1),
        "nodes": nodes if multi else None,
        # The job step plugin runs an "mpi" job's command without wrapping it in `srun -n1`: launch runs srun itself.
        "mpi": "srun" if multi else None,
        "tasks": nodes if multi else None,
        "tasks_per_gpu": 0 if multi else None,  # else the plugin turns `tasks` into --ntasks-per-gpu
        # SLURM gives each of the N nodes at least one of the N tasks: one torchrun agent per node.
        "slurm_extra": SLURM_TRAIN_EXTRA,
    }


def training_resources(run: Run) -> dict[str, Any]:
    """What a run's training job asks for: the data-parallel layout's (ImageNet) or one GPU's."""
    return imagenet_resources(run) if run.distributed is not None else train_resources(run)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def experiment_needs(plan: Plan, experiment: str) -> str:
    """One line on what an enabled experiment's training jobs ask the scheduler for: GPUs and nodes per job, memory
    per node, the longest wall-time limit and the GPU-hours of all the limits together (limits, 2x the estimate:
    an upper bound, not a prediction)."""
    jobs = [(run, training_resources(run)) for run in plan.experiments[experiment]]
    if not jobs:
        return "no training jobs (every model disabled)"
    longest_run, longest = max(jobs, key=lambda job: job[1]["runtime"])
    gpus = max(resources["gpu"] for _, resources in jobs)
    nodes = max(resources.get("nodes") or 1 for _, resources in jobs)
    memory = max(resources["mem_mb"] for _, resources in jobs)
    gpu_hours = sum(resources["gpu"] * resources["runtime"] / 60 for _, resources in jobs)
    return (
        f"{_count(len(jobs), 'training job')} of up to {_count(gpus, 'GPU')} on {_count(nodes, 'node')}, "
        f"{memory / 1000:g} GB memory per node, wall time up to {longest['runtime'] / 60:.1f} h "
        f"({longest_run.model}); {gpu_hours:,.1f} GPU-hours requested in all"
    )


def archive_file(dataset: str) -> str:
    """Where `fetch` puts the official archive of `dataset`."""
    return raw_archive(ARCHIVES[dataset].filename)


def archive_dataset(archive: str) -> str:
    """The dataset whose official archive is named `archive`."""
    for name, spec in ARCHIVES.items():
        if spec.filename == archive:
            return name
    raise ConfigError(f"no dataset has the archive {archive!r}")


def prepare_inputs(dataset: str, config: dict | None = None) -> list[str]:
    """What the prepare step reads: the official archive, or a local image folder's path (outside the DAG)."""
    if dataset in ARCHIVES:
        return [archive_file(dataset)]
    local = ((config or {}).get("datasets", {}).get(dataset) or {}).get("path")
    return [local] if local and reads_image_folder(dataset) else []


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
                "cmd": command("resnet-repro", "index-imagenet", "--path", path, "--out", prepared_dir(IMAGENET)),
                "params": [{"config.yaml": ["datasets.imagenet.path"]}],
                "outs": [prepared_dir(IMAGENET)],
            }
        elif dataset in ARCHIVES:
            source = (datasets_conf.get(dataset) or {}).get("source", ARCHIVES[dataset].url)
            stages[f"fetch-{dataset}"] = {
                "cmd": command("resnet-repro", "fetch", dataset, "--source", source, "--out", archive_file(dataset)),
                "outs": [archive_file(dataset)],
            }
            stages[f"prepare-{dataset}"] = {
                "cmd": command(
                    "resnet-repro", "prepare", dataset, "--raw", archive_file(dataset), "--out", prepared_dir(dataset)
                ),
                "deps": [archive_file(dataset)],
                "outs": [prepared_dir(dataset)],
            }
        elif dataset == DIGITS:
            stages[f"prepare-{DIGITS}"] = {
                "cmd": command("resnet-repro", "prepare", DIGITS, "--out", prepared_dir(dataset)),
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
            "outs": [run.details],
        }
    stages.update(render_stages(plan))
    for name, stage in stages.items():  # the code each command runs is a dependency: changing it makes it stale
        deps = [*stage.get("deps", []), *command_sources(stage["cmd"])]
        stages[name] = {"cmd": stage["cmd"], "deps": deps} | {k: v for k, v in stage.items() if k != "deps"}
    return stages


def _error_curves(runs: list[Run], title: str) -> dict[str, Any]:
    """A DVC plot of training and test error against iteration, one line per run and series."""
    return {
        "title": title,
        "template": "linear",
        "x": "iteration",
        "y": {run.files()["history"]: ["train_error", "test_error"] for run in runs},
        "y_label": "error",
    }


def dvc_plots(plan: Plan) -> list[dict[str, Any]]:
    """The curves `dvc plots show` draws and `dvc plots diff <rev>` overlays: each run's history, then each
    experiment's runs together."""
    plots = [
        {f"error-{run.key}": _error_curves([run], f"{run.model}, seed {run.seed} ({run.dataset})")}
        for run in plan.runs.values()
    ]
    plots += [
        {f"error-{name}": _error_curves(runs, f"{name}: every run")} for name, runs in plan.experiments.items() if runs
    ]
    return plots


def dvc_yaml_text(plan: Plan) -> str:
    stages = {
        name: {**stage, "outs": _dvc_outs(stage["outs"])} if "outs" in stage else stage
        for name, stage in dvc_stages(plan).items()
    }
    return DVC_HEADER + yaml.safe_dump({"stages": stages, "plots": dvc_plots(plan)}, sort_keys=False, width=1000)


def sync_dvc_yaml(plan: Plan, path: Path | str = "dvc.yaml") -> bool:
    """Write dvc.yaml if its content differs; return whether it changed."""
    path = Path(path)
    text = dvc_yaml_text(plan)
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_bytes(path, text.encode())
    return True
