"""Runs turned into DVC stages (commands, dependencies, params, outputs) and the container images that run them.

`dvc.yaml` is generated from these stages (`resnet-repro pipeline sync`), and every Snakemake rule runs its stage
through DVC, so both front ends run the same commands on the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .archives import ARCHIVES
from .errors import ConfigError
from .paths import DATA_DIR, SETTINGS_FILE, prepared_dir, raw_archive
from .plan import DIGITS, IMAGENET, Plan, reads_image_folder
from .render.outputs import render_stages
from .runfiles import atomic_write_bytes
from .runspec import RunSpec
from .shell import command
from .sources import command_sources

DVC_HEADER = (
    "# GENERATED from config.yaml by `resnet-repro pipeline sync` (every Snakemake run refreshes it).\n"
    "# Do not edit: change config.yaml instead. After adding or removing runs, sync before `dvc repro`.\n"
)
# The package's schedules as DVC sees them: the file in this repository, wherever the package is installed.
REPO_SCHEDULES = "src/resnet_repro/schedules.yaml"
# The stage that resolves config.yaml into every run's settings.json, and the config keys its result depends on
# (`all`, threads and GPU packing only choose what runs where).
PLAN_STAGE = "plan"
PLAN_CONFIG_KEYS = ("experiments", "schedules")


IMAGE_VERSION_FILE = Path("containers/VERSION")
IMAGE_PREFIX_ENV = "RESNET_REPRO_IMAGE_PREFIX"  # e.g. docker://ghcr.io/you/ once the images are pushed


def container_image(kind: str, root: Path = Path(".")) -> str:
    """The pinned image of `kind` ('train' or 'render') for Snakemake's container: directive."""
    version_file = root / IMAGE_VERSION_FILE
    version = version_file.read_text().strip() if version_file.is_file() else "unknown"
    prefix = os.environ.get(IMAGE_PREFIX_ENV, "docker://localhost/")
    return f"{prefix}resnet-repro-{kind}:{version}"


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


def in_git(path: str) -> bool:
    """Whether a stage output is committed to git rather than stored in DVC's cache: the small results (histories,
    metrics, layer responses, figures, tables) are, as DVC's examples keep theirs, so a clone shows them and
    `dvc metrics diff` compares commits without a pull; data and weights (*.pt) go to the cache."""
    return not (path.startswith(f"{DATA_DIR}/") or path.endswith(".pt"))


def _dvc_outs(paths: list[str]) -> list[Any]:
    """DVC's outs: the small ones kept out of the cache; the settings files also kept while their stage runs, so
    that `plan` rewrites only those that change (an unchanged one keeps its time)."""
    return [
        {path: {"cache": False, "persist": True} if path.endswith(f"/{SETTINGS_FILE}") else {"cache": False}}
        if in_git(path)
        else path
        for path in paths
    ]


def plan_stage(plan: Plan) -> dict[str, Any]:
    """Every run resolved into its settings.json: reruns when config.yaml's runs or the schedules change (cheap),
    and what it writes is what decides whether a training stage is stale."""
    return {
        "cmd": command("resnet-repro", PLAN_STAGE, "--config", "config.yaml"),
        "params": [{"config.yaml": [key for key in PLAN_CONFIG_KEYS if key in plan.config]}, {REPO_SCHEDULES: None}],
        "outs": [run.settings_file for run in plan.runs.values()],
    }


def stage_names(run: RunSpec) -> dict[str, str]:
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
    stages[PLAN_STAGE] = plan_stage(plan)
    for run in plan.runs.values():
        names = stage_names(run)
        train = ("--settings", run.settings_file, "--data", run.prepared, "--out", run.folder)
        if run.dataset == IMAGENET:
            # The process layout is read from settings.json at run time, not written into the command, and is not
            # among the params: changing the number of GPUs must not make DVC retrain a finished run.
            cmd = command("resnet-repro", "launch", "--settings", run.settings_file, "--", "train-imagenet", *train)
            evaluate = "evaluate-imagenet"
        else:
            cmd = command("resnet-repro", "train", *train)
            evaluate = "evaluate"
        stages[names["train"]] = {
            "cmd": cmd,
            "deps": [run.prepared],
            "params": [{run.settings_file: run.result_keys()}],
            "outs": list(run.files().values()),
        }
        stages[names["evaluate"]] = {
            "cmd": command("resnet-repro", evaluate, "--run", run.folder, "--data", run.prepared),
            "deps": [run.files()["model"], run.files()["history"], run.files()["epochs"], run.prepared],
            "metrics": [{run.metrics: {"cache": not in_git(run.metrics)}}],
            "outs": [run.details],
        }
    stages.update(render_stages(plan))
    for name, stage in stages.items():  # the code each command runs is a dependency: changing it makes it stale
        deps = [*stage.get("deps", []), *command_sources(stage["cmd"])]
        stages[name] = {"cmd": stage["cmd"], "deps": deps} | {k: v for k, v in stage.items() if k != "deps"}
    return stages


def _error_curves(runs: list[RunSpec], title: str) -> dict[str, Any]:
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
