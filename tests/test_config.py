"""config.yaml is checked before any job starts: each mistake is one message naming the key."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import CIFAR10_JPEG, REPO, cli_env, run_cli

from resnet_repro.errors import ConfigError
from resnet_repro.plan import build_plan, load_config, validate_config
from resnet_repro.stages import dvc_yaml_text

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
if not CIFAR10_JPEG.exists():  # a clone without ../shared/data: the experiments on it have nothing to read
    for name in [name for name, spec in BASE["experiments"].items() if spec["dataset"] == "cifar10_jpeg"]:
        del BASE["experiments"][name]
        if name in BASE["all"]:
            BASE["all"].remove(name)
    del BASE["datasets"]["cifar10_jpeg"]


def _broken(edit) -> dict:
    config = copy.deepcopy(BASE)
    edit(config)
    return config


CASES = {
    "unknown model": (
        lambda c: c["experiments"]["demo"]["models"].update(resnet9={}),
        "experiments.demo.models.resnet9: unknown model 'resnet9'",
    ),
    "typo in a key": (lambda c: c["experiments"]["demo"].update(seedz=[1]), "unknown key 'experiments.demo.seedz'"),
    "typo in a setting": (
        lambda c: c["experiments"]["demo"]["models"]["resnet8"].update(settings={"lrr": 0.1}),
        "unknown key 'experiments.demo.models.resnet8.settings.lrr'",
    ),
    "negative learning rate": (
        lambda c: c["experiments"]["demo"]["models"]["resnet8"].update(settings={"lr": -0.1}),
        "experiments.demo.models.resnet8.settings.lr",
    ),
    "missing dataset path": (
        lambda c: (
            c["datasets"].update(mine={"path": "/nonexistent/images"})
            or c["experiments"].update(mine={"dataset": "mine", "schedule": "demo", "models": {"resnet8": {}}})
        ),
        "datasets.mine.path: /nonexistent/images does not exist",
    ),
    "imagenet without a path": (lambda c: c["experiments"]["imagenet"].update(enabled=True), "datasets.imagenet.path"),
    "unknown schedule": (
        lambda c: c["experiments"]["demo"].update(schedule="fast"),
        "experiments.demo.schedule: unknown schedule 'fast'",
    ),
    "unknown experiment in all": (
        lambda c: c["all"].append("cifar10_dpeth"),
        f"all.{len(BASE['all'])}: unknown experiment",
    ),
    "wrong type": (lambda c: c["experiments"]["demo"].update(seeds="0"), "experiments.demo.seeds"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_names_its_key(case: str) -> None:
    edit, message = CASES[case]
    config = _broken(edit)
    with pytest.raises(ConfigError) as caught:
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
        build_plan(config)
    assert message in str(caught.value), str(caught.value)


def test_the_shipped_config_is_valid_and_dvc_yaml_is_in_sync() -> None:
    config = load_config(REPO / "config.yaml")
    plan = build_plan(config, check_data=CIFAR10_JPEG.exists())
    assert {"degradation", "cifar10_depth", "fc_vs_resnet", "cifar100", "demo"} <= set(plan.experiments)
    assert len(plan.experiments["cifar10_depth"]) == 13  # 8 single-seed models + ResNet-110 x 5 seeds
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml_text(plan), "dvc.yaml is stale: resnet-repro pipeline sync"


def _workspace_with(tmp_path: Path, config: dict) -> Path:
    for name in ("Snakefile", "workflow", "containers/VERSION", "src/resnet_repro"):
        source, target = REPO / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            import shutil

            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.write_bytes(source.read_bytes())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.parametrize("case", ["typo in a key", "negative learning rate", "unknown model"])
def test_snakemake_and_cli_stop_before_any_job(case: str, tmp_path: Path) -> None:
    edit, message = CASES[case]
    workspace = _workspace_with(tmp_path, _broken(edit))
    result = subprocess.run(
        ["snakemake", "-n", "--cores", "1"], cwd=workspace, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (workspace / "dvc.yaml").exists()
    check = run_cli("pipeline", "check", cwd=workspace, check=False)
    assert check.returncode == 2 and check.stderr.count("\n") == 1 and message in check.stderr


def test_snakemake_lint_reports_nothing() -> None:
    result = subprocess.run(
        ["snakemake", "--lint"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_the_schemas_settings_are_exactly_the_trainers_settings() -> None:
    """One list of settings: a key added to TrainSettings without the schema (or the reverse) fails here, not as a
    config.yaml that validates and then cannot be planned."""
    import dataclasses

    from resnet_repro.settings import TrainSettings

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    schema_keys = set(schema["$defs"]["settings"]["properties"])
    assert schema_keys == {field.name for field in dataclasses.fields(TrainSettings)}


def test_training_threads_spread_the_cores_over_an_experiments_runs() -> None:
    from resnet_repro.resources import train_threads

    config = copy.deepcopy(BASE)
    plan = build_plan(config, check_data=False)
    degradation = plan.experiments["degradation"][0]  # 2 runs
    depth = next(run for run in plan.experiments["cifar10_depth"] if plan.experiment_of(run) == "cifar10_depth")  # 13
    assert train_threads(plan, degradation, 2) == 1 and train_threads(plan, depth, 2) == 1
    assert train_threads(plan, degradation, 16) == 8 and train_threads(plan, depth, 16) == 1
    assert train_threads(plan, depth, 64) == 4
    assert train_threads(plan, depth, None) == 2  # a cluster executor: no local core count
    config["train_threads"] = 3
    plan = build_plan(config, check_data=False)
    assert train_threads(plan, depth, 2) == 2 and train_threads(plan, depth, 16) == 3
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="train_threads"):
            validate_config({**config, "train_threads": bad})
