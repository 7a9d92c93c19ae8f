"""A change reruns only what it changes: each stage of the generated dvc.yaml depends on exactly the modules its
command runs, so that editing the ImageNet code, the download code, the renderer, the GPU-slot code or one
subcommand's module leaves every CIFAR training and evaluation stage as it is, and editing the model definitions or
the training step makes exactly the stages that run them stale. Shown on every stage of the shipped config (with
ImageNet enabled), and by real DVC and Snakemake processes in a workspace after a real run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_pipeline import committed_run, planned_jobs, sh

from resnet_repro.plan import build_plan, load_config
from resnet_repro.sources import module_file, package_modules, repo_path
from resnet_repro.stages import dvc_stages

REPO = Path(__file__).resolve().parents[1]

EVERY = "every"  # every stage: the dispatcher and what all stages share
# Stage kinds (a stage's name up to its run: train-cifar10-..., train-imagenet-..., render-demo, ...).
TRAINING = {"train", "train-imagenet"}
EVALUATION = {"evaluate", "evaluate-imagenet", "responses"}
RENDERING = {"render", "summary"}
RUNS_MODELS = TRAINING | EVALUATION
IMAGENET = {"index", "train-imagenet", "evaluate-imagenet"}

# What editing each module makes stale, by stage kind: the decision for every module of the package (a new module
# must be added here). Reading: the ImageNet, download, rendering, GPU-slot and CLI-dispatch code on one side, the
# code that trains and scores a CIFAR run on the other.
STALE_KINDS: dict[str, set[str] | str] = {
    "resnet_repro": EVERY,  # the package's version, recorded in every evaluation's provenance
    "cli": EVERY,  # the dispatcher runs every stage's command
    "commands": EVERY,
    "errors": EVERY,
    "paths": EVERY,
    "runfiles": EVERY,
    # the code of one subcommand reruns the stages running that subcommand
    "commands.fetch": {"fetch"},
    "commands.prepare": {"prepare"},
    "commands.plan": {"plan"},
    "commands.train": {"train"},
    "commands.evaluate": {"evaluate"},
    "commands.responses": {"responses"},
    "commands.render": {"render"},
    "commands.summary": {"summary"},
    "commands.index_imagenet": {"index"},
    "commands.train_imagenet": {"train-imagenet"},
    "commands.launch": {"train-imagenet"},
    "commands.evaluate_imagenet": {"evaluate-imagenet"},
    "commands.imagenet_val_layout": set(),  # by hand, before the pipeline
    "commands.models": set(),
    "commands.pipeline": set(),
    "commands.options": {"train", "evaluate", "evaluate-imagenet", "responses"},  # --device and the GPU slot
    "commands.run_options": TRAINING,
    # download and preparation
    "archives": {"fetch", "prepare", "plan", *RENDERING},  # the official archives' names and sources
    "fetch": {"fetch"},
    "extract": {"prepare", "plan", *RENDERING, *IMAGENET},  # archives read safely (also the ImageNet devkit)
    "prepare": {"prepare"},
    "prepared": {"prepare", "train", "evaluate", "responses"},  # the prepared format, written and read
    # ImageNet
    "imagenet": {"plan", *RENDERING, *IMAGENET},  # its layout is checked when planning
    "distributed": {"train-imagenet"},
    "launch": {"train-imagenet"},
    "evaluate_imagenet": {"evaluate-imagenet"},
    # planning, placement and the workflow's own code
    "plan": {"plan", *RENDERING},
    "shell": {"plan", *RENDERING},
    "runspec": {"plan", *TRAINING, *RENDERING},
    "settings": {"plan", *RUNS_MODELS, *RENDERING},
    "catalog": {"plan", *RUNS_MODELS, *RENDERING},
    "gpu": set(),  # where a job runs, never what it computes
    "resources": set(),
    "stages": set(),
    "sources": set(),
    # the models and the training step
    "models": RUNS_MODELS,
    "modelfile": RUNS_MODELS,
    "runtime": RUNS_MODELS,
    "device_data": {"train", "evaluate", "responses"},
    "step": TRAINING,
    "core": TRAINING,
    "checkpoint": TRAINING,
    "state": TRAINING,
    "world": TRAINING,
    "progress": TRAINING,
    "train": {"train"},
    # scoring
    "evaluation": {"evaluate", "evaluate-imagenet"},
    "evaluate": {"evaluate"},
    "analysis": {"responses"},
}
RENDERER = {name: RENDERING for name in package_modules() if name.startswith("resnet_repro.render")}


def kind(stage: str) -> str:
    if stage.startswith(("train-imagenet-", "evaluate-imagenet-")):
        return stage.rsplit("-", 2)[0]
    return re.split(r"-", stage)[0]


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    """Every stage of the shipped config with the ImageNet experiments enabled (their data is not read here)."""
    config = load_config(REPO / "config.yaml")
    config["datasets"]["imagenet"]["path"] = "/data/imagenet"
    for name in ("imagenet", "imagenet_table3"):
        config["experiments"][name]["enabled"] = True
    return dvc_stages(build_plan(config, check_paths=False))


def stale_after_editing(stages: dict[str, dict], module: str) -> set[str]:
    """The stages DVC finds changed when `module`'s file changes: those listing it among their deps."""
    return {name for name, stage in stages.items() if repo_path(module) in stage["deps"]}


def test_every_module_has_its_decision() -> None:
    short = {name.removeprefix("resnet_repro.") if name != "resnet_repro" else name for name in package_modules()}
    assert short == set(STALE_KINDS) | {name.removeprefix("resnet_repro.") for name in RENDERER}


@pytest.mark.parametrize("module", package_modules())
def test_editing_a_module_makes_exactly_the_stages_that_run_it_stale(stages: dict[str, dict], module: str) -> None:
    short = module.removeprefix("resnet_repro.") if module != "resnet_repro" else module
    expected = RENDERER.get(module) or STALE_KINDS[short]
    stale = stale_after_editing(stages, module)
    if expected == EVERY:
        assert stale == set(stages)
    else:
        assert {kind(name) for name in stale} == expected
        assert stale == {name for name in stages if kind(name) in expected}  # all of a kind: one code per kind


def test_what_the_issue_names_leaves_cifar_training_and_evaluation_alone(stages: dict[str, dict]) -> None:
    cifar = {name for name in stages if kind(name) in {"train", "evaluate"}}
    assert len(cifar) == 2 * len({name for name in stages if kind(name) == "train"}) > 0  # CIFAR and digits runs
    untouched = [
        "imagenet", "distributed", "launch", "evaluate_imagenet", "fetch", "extract", "archives", "prepare", "gpu",
        "render.tables", "render.claims", "render.figures", "commands.fetch", "commands.render", "commands.launch",
        "commands.train_imagenet", "commands.pipeline", "commands.models",
    ]  # fmt: skip
    for module in untouched:
        assert not stale_after_editing(stages, f"resnet_repro.{module}") & cifar, module
    # the model definitions: every stage that builds a model; the training step: every training stage
    assert stale_after_editing(stages, "resnet_repro.models") == {n for n in stages if kind(n) in RUNS_MODELS}
    assert stale_after_editing(stages, "resnet_repro.step") == {n for n in stages if kind(n) in TRAINING}


# ------------------------------------------------------------------------------------ real DVC and Snakemake
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny workspace after `snakemake all`, its results committed."""
    return committed_run(tmp_path_factory.mktemp("stale") / "ws")


def edited(workspace: Path, module: str) -> Path:
    path = workspace / repo_path(module)
    path.write_text(path.read_text() + "\n# an edit that changes nothing\n")
    return path


def revert(workspace: Path) -> None:
    sh("git", "checkout", "--", "src", cwd=workspace)


@pytest.mark.slow
def test_dvc_status_after_editing_each_module_is_what_dvc_yaml_says(finished: Path) -> None:
    """Every module edited in turn in a real workspace: `dvc status` names exactly the stages whose deps list its
    file (the rule the tests above check over the full config)."""
    stages = yaml.safe_load((finished / "dvc.yaml").read_text())["stages"]
    try:
        for module in package_modules():
            assert module_file(module) is not None
            edited(finished, module)
            status = json.loads(sh("dvc", "status", "--json", cwd=finished).stdout)
            assert set(status) == stale_after_editing(stages, module), module
            revert(finished)
    finally:
        revert(finished)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["resnet_repro.render.tables", "resnet_repro.imagenet", "resnet_repro.gpu"])
def test_editing_rendering_or_imagenet_code_plans_no_training_or_evaluation(finished: Path, module: str) -> None:
    edited(finished, module)
    try:
        jobs = planned_jobs(finished)
        status = set(json.loads(sh("dvc", "status", "--json", cwd=finished).stdout))
    finally:
        revert(finished)
    assert not {"train", "evaluate", "responses"} & set(jobs), jobs
    assert not {name for name in status if kind(name) in RUNS_MODELS}, status
    if module == "resnet_repro.render.tables":
        assert jobs == {"render_tiny": 1, "render_summary": 1, "plan": 1, "all": 1}
        assert status == {"render-tiny", "summary"}
    if module == "resnet_repro.imagenet":  # its layout checks run when planning: the cheap plan stage, nothing more
        assert status == {"plan", "render-tiny", "summary"}
    if module == "resnet_repro.gpu":
        assert jobs == {} and status == set()


@pytest.mark.slow
def test_editing_the_training_step_reruns_the_training_and_what_reads_it(finished: Path) -> None:
    edited(finished, "resnet_repro.step")
    try:
        status = set(json.loads(sh("dvc", "status", "--json", cwd=finished).stdout))
        jobs = planned_jobs(finished)
    finally:
        revert(finished)
    assert status == {"train-digits-plain8-seed0", "train-digits-resnet8-seed0"}
    rendering = {"render_tiny": 1, "render_summary": 1, "plan": 1, "all": 1}
    assert jobs == {"train": 2, "evaluate": 2, "responses": 2, **rendering}
