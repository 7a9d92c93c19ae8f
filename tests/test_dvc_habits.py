"""What DVC and Snakemake users expect, in a real workspace after a real (tiny) run: `dvc metrics show` fits a
terminal, `dvc plots show` draws every run's curves, `dvc exp run -S` retrains only the run it changes, and a
change in the code makes exactly the stages that run that code stale, in both front ends."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from test_pipeline import TINY_CONFIG, committed_run, dvc_stages_run, planned_jobs, sh, snakemake

pytestmark = pytest.mark.slow

CONFIG = copy.deepcopy(TINY_CONFIG)
CONFIG["experiments"]["tiny"]["models"]["resnet8"] = {"settings": {"lr": 0.1}}  # a value to sweep
RUNS = ["digits-plain8-seed0", "digits-resnet8-seed0"]
# After the jobs of `all`, DVC records the plan (a cheap job, the Snakefile's `plan` rule).
TRAINING = {"train": 2, "evaluate": 2, "responses": 2, "render_tiny": 1, "render_summary": 1, "plan": 1, "all": 1}
RENDERING = {"render_tiny": 1, "render_summary": 1, "plan": 1, "all": 1}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace after `snakemake all`, its results committed."""
    return committed_run(tmp_path_factory.mktemp("habits") / "ws", CONFIG)


@pytest.fixture
def workspace(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished workspace (times kept) that a test may change."""
    copy_ = tmp_path / "ws"
    shutil.copytree(finished, copy_, symlinks=True)
    return copy_


def stale_stages(workspace: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    return set(json.loads(sh("dvc", "status", "--json", cwd=workspace).stdout))


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit that changes nothing\n")


def test_dvc_metrics_show_fits_a_terminal(finished: Path) -> None:
    shown = sh("dvc", "metrics", "show", "--md", cwd=finished)
    header = next(line for line in shown.stdout.splitlines() if line.startswith("|"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert len(columns) <= 15, columns
    assert {"test_error", "train_error", "test_loss", "train_loss", "parameters"} <= set(columns), columns
    assert "failed to load" not in shown.stdout + shown.stderr
    # every run is one row
    assert all(
        any(f"results/digits/{run.split('-')[1]}/seed0" in line for line in shown.stdout.splitlines()) for run in RUNS
    )


def test_dvc_plots_show_writes_every_runs_curves(finished: Path, tmp_path: Path) -> None:
    sh("dvc", "plots", "show", "--out", str(tmp_path / "plots"), cwd=finished)
    page = (tmp_path / "plots" / "index.html").read_text()
    for run in RUNS:
        assert f"vegaEmbed('#error-{run}'" in page  # the run's own plot
        # and its lines in the experiment's plot of all runs
        assert "vegaEmbed('#error-tiny'" in page and f"{run.split('-')[1]}/seed0/history.csv::test_error" in page
    history = (finished / "results/digits/resnet8/seed0/history.csv").read_text().splitlines()
    last_test_error = history[-1].split(",")[history[0].split(",").index("test_error")]
    assert last_test_error in page  # the data itself, not only the definitions


def test_dvc_exp_run_retrains_only_the_run_it_changes(workspace: Path) -> None:
    plain_model = (workspace / "results/digits/plain8/seed0/model.pt").read_bytes()
    resnet_model = (workspace / "results/digits/resnet8/seed0/model.pt").read_bytes()
    run = sh("dvc", "exp", "run", "-S", "config.yaml:experiments.tiny.models.resnet8.settings.lr=0.05", cwd=workspace)
    assert dvc_stages_run(run.stdout) == [
        "evaluate-digits-resnet8-seed0",
        "plan",  # config.yaml's runs changed: settings.json resolved again (only resnet8's is rewritten)
        "render-tiny",
        "responses-digits-resnet8-seed0",
        "summary",
        "train-digits-resnet8-seed0",
    ], run.stdout
    assert (workspace / "results/digits/plain8/seed0/model.pt").read_bytes() == plain_model
    assert (workspace / "results/digits/resnet8/seed0/model.pt").read_bytes() != resnet_model
    shown = sh("dvc", "exp", "show", "--only-changed", "--md", cwd=workspace).stdout
    header = next(line for line in shown.splitlines() if line.startswith("|"))
    assert "experiments.tiny.models.resnet8.settings.lr" in header and "test_error" in header, shown
    assert "0.05" in shown


def test_editing_the_models_makes_training_and_what_follows_stale(workspace: Path) -> None:
    edit(workspace / "src/resnet_repro/models.py")
    # DVC lists the stages whose own code changed: training and the steps that load a model
    assert stale_stages(workspace) == {
        *(f"{step}-{run}" for step in ("train", "evaluate", "responses") for run in RUNS)
    }
    # Snakemake plans them and everything downstream; fetching and preparing stay done
    assert planned_jobs(workspace) == TRAINING


def test_editing_the_rendering_code_makes_only_renderings_stale(workspace: Path) -> None:
    renderer = workspace / "src/resnet_repro/render"
    edit(next(renderer.glob("tables.py")) if renderer.is_dir() else workspace / "src/resnet_repro/render.py")
    assert stale_stages(workspace) == {"render-tiny", "summary"}
    assert planned_jobs(workspace) == RENDERING


def test_an_accepted_change_reruns_nothing(workspace: Path) -> None:
    edit(workspace / "src/resnet_repro/models.py")
    assert planned_jobs(workspace) == TRAINING
    # The README's command for a change that does not alter results: record it as done in both front ends.
    sh("dvc", "commit", "--force", cwd=workspace)
    snakemake(workspace, "all", "--touch")
    assert stale_stages(workspace) == set()
    assert planned_jobs(workspace) == {}
    assert dvc_stages_run(sh("dvc", "repro", cwd=workspace).stdout) == []
