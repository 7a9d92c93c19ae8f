"""The pipeline's bar, on tiny data in a temporary git repository: both front ends (Snakemake and `dvc repro`)
build the DAG, a second run does nothing, a changed setting reruns exactly its run, each front end accepts
the other's outputs, push/pull round-trips, and a killed training job resumes from its checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, kill_at_teardown, run_in_own_group

pytestmark = pytest.mark.slow

# What a workspace needs from the repository (the package itself is installed in the test environment).
WORKSPACE_FILES = [
    "Snakefile",
    "config.yaml",
    "workflow",
    "src/resnet_repro",  # the stages depend on the code they run
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]

TINY_CONFIG = {
    "all": ["tiny"],
    "datasets": {"digits": {}},
    "schedules": {
        "tiny": {
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.0001,
            "batch_size": 64,
            "iterations": 20,
            "milestones": [15],
            "gamma": 0.1,
            "eval_every": 10,
        },
    },
    "experiments": {
        "tiny": {"dataset": "digits", "schedule": "tiny", "seeds": [0], "models": {"plain8": {}, "resnet8": {}}},
    },
}


def sh(*args: str, cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    # in a process group of its own: whatever it started dies with it (also at the timeout)
    result = run_in_own_group(list(args), cwd=cwd, env=cli_env(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_workspace(path: Path, config: dict = TINY_CONFIG) -> Path:
    """A git repository holding the workflow files and a tiny config.yaml."""
    path.mkdir(parents=True)
    for name in WORKSPACE_FILES:
        source, target = REPO / name, path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sh("git", "init", "-q", cwd=path)
    sh("git", "config", "user.email", "test@example.invalid", cwd=path)
    sh("git", "config", "user.name", "test", cwd=path)
    sh("resnet-repro", "pipeline", "sync", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "workspace", cwd=path)
    return path


def committed_run(path: Path, config: dict = TINY_CONFIG) -> Path:
    """A workspace after `snakemake all`, its results committed."""
    workspace = make_workspace(path, config)
    snakemake(workspace, "all")
    sh("git", "add", "-A", cwd=workspace)
    sh("git", "commit", "-qm", "results", cwd=workspace)
    return workspace


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("snakemake", *args, "--cores", "2", cwd=cwd, check=check)


def planned_jobs(cwd: Path, target: str = "all") -> dict[str, int]:
    """Jobs a dry run would execute, by rule (empty when there is nothing to do)."""
    out = snakemake(cwd, target, "-n", "--quiet", "rules").stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def dvc_stages_run(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


def run_files(workspace: Path) -> dict[str, int]:
    return {
        str(p.relative_to(workspace)): p.stat().st_mtime_ns for p in (workspace / "results").rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace after one full `snakemake all`."""
    workspace = make_workspace(tmp_path_factory.mktemp("pipeline") / "ws")
    snakemake(workspace, "all")
    return workspace


def test_snakemake_builds_everything_and_a_second_run_does_nothing(built: Path) -> None:
    for model in ("plain8", "resnet8"):
        folder = built / "results" / "digits" / model / "seed0"
        assert {p.name for p in folder.iterdir()} >= {"model.pt", "history.csv", "epochs.csv", "metrics.json"}
        assert not (folder / "checkpoint.pt").exists()
    before = run_files(built)
    assert planned_jobs(built) == {}
    again = snakemake(built, "all")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert run_files(built) == before


def test_dvc_accepts_snakemake_outputs(built: Path) -> None:
    status = sh("dvc", "status", cwd=built).stdout
    assert "Data and pipelines are up to date" in status, status
    repro = sh("dvc", "repro", cwd=built).stdout
    assert dvc_stages_run(repro) == [], repro


def test_changed_learning_rate_reruns_exactly_that_run(built: Path) -> None:
    config = yaml.safe_load((built / "config.yaml").read_text())
    config["experiments"]["tiny"]["models"]["resnet8"] = {"settings": {"lr": 0.05}}
    (built / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plain_before = (built / "results/digits/plain8/seed0/model.pt").stat().st_mtime_ns
    resnet_before = (built / "results/digits/resnet8/seed0/model.pt").read_bytes()
    # That run's training and evaluation, and the renderings that read it: nothing of plain8. Then DVC records the
    # plan (resnet8's settings.json, rewritten as Snakemake parsed the config).
    expected = {"train": 1, "evaluate": 1, "responses": 1, "render_tiny": 1, "render_summary": 1, "plan": 1, "all": 1}
    assert planned_jobs(built) == expected
    snakemake(built, "all")
    assert (built / "results/digits/plain8/seed0/model.pt").stat().st_mtime_ns == plain_before
    assert (built / "results/digits/resnet8/seed0/model.pt").read_bytes() != resnet_before
    assert planned_jobs(built) == {}
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=built).stdout

    # The same through DVC alone: change it back and only that run's stages are reproduced.
    config["experiments"]["tiny"]["models"]["resnet8"] = {"settings": {"lr": 0.02}}
    (built / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    repro = sh("dvc", "repro", cwd=built).stdout
    assert dvc_stages_run(repro) == sorted(
        [
            "plan",  # the changed setting resolved into resnet8's settings.json (the only one rewritten)
            "train-digits-resnet8-seed0",
            "evaluate-digits-resnet8-seed0",
            "responses-digits-resnet8-seed0",
            "render-tiny",
            "summary",
        ]
    ), repro


def test_dvc_front_end_builds_and_snakemake_accepts_it(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws")
    repro = sh("dvc", "repro", cwd=workspace).stdout
    assert "train-digits-resnet8-seed0" in dvc_stages_run(repro)
    assert sh("dvc", "repro", cwd=workspace).stdout.count("Running stage") == 0
    # Nothing to compute: only Snakemake's flag that DVC recorded the plan is missing (its one cheap job, which finds
    # the plan stage done), then nothing at all.
    assert planned_jobs(workspace) == {"plan": 1, "all": 1}
    plan_log = snakemake(workspace, "all")
    assert (workspace / "results/plan/all.done").exists(), plan_log.stderr[-2000:]
    assert "Stage 'plan' didn't change, skipping" in (workspace / "logs/plan/all.log").read_text()
    assert planned_jobs(workspace) == {}
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=workspace).stdout


def test_push_clone_pull_needs_nothing(built: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "-d", "local", str(remote), cwd=built)
    sh("git", "add", "-A", cwd=built)
    sh("git", "commit", "-qm", "results", cwd=built)
    sh("dvc", "push", cwd=built)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(built), str(clone), cwd=tmp_path)
    sh("dvc", "pull", cwd=clone)
    assert (clone / "results/digits/resnet8/seed0/model.pt").read_bytes() == (
        built / "results/digits/resnet8/seed0/model.pt"
    ).read_bytes()
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone).stdout
    # `dvc pull` checks files out in no particular order, so their times say nothing about which is newer.
    # The one resynchronising step (README): mark the pulled outputs as current for Snakemake.
    snakemake(clone, "all", "--touch")
    assert planned_jobs(clone) == {}
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone).stdout


def test_killed_training_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    config["schedules"]["tiny"].update(iterations=400, milestones=[300], eval_every=40, checkpoint_every=20)
    config["experiments"]["tiny"]["models"] = {"resnet14": {}}
    workspace = make_workspace(tmp_path / "ws", config)
    process = subprocess.Popen(
        ["snakemake", "all", "--cores", "2"],
        cwd=workspace,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_at_teardown(process)  # also if no checkpoint appears
    checkpoint = workspace / "results/digits/resnet14/seed0/checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checkpoint.exists(), "no checkpoint appeared"
    os.killpg(process.pid, signal.SIGKILL)  # the whole job dies at once: no chance to save anything more
    process.wait(timeout=60)
    assert not (workspace / "results/digits/resnet14/seed0/model.pt").exists()
    # After a hard kill: release Snakemake's lock, then the usual command resumes (README, "Interrupted runs").
    snakemake(workspace, "--unlock")
    snakemake(workspace, "all", "--rerun-incomplete")
    log = (workspace / "logs/train/digits/resnet14/seed0.log").read_text()
    assert "resuming resnet14 seed 0 from iteration" in log, log
    assert (workspace / "results/digits/resnet14/seed0/metrics.json").exists()
