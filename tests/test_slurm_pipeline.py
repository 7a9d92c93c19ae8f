"""The real pipeline through a real (local, single-node) SLURM cluster: every job a SLURM job with results
identical to a local run, and a requeued training job resuming from its checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_pipeline import make_workspace, snakemake
from test_slurm import (
    run_snakemake_on_slurm,
    scontrol_show_job,
    slurm_cluster,  # noqa: F401 - fixture
    start_snakemake_on_slurm,
    submitted_job_ids,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def demo_config(iterations: int = 20, models: tuple[str, ...] = ("plain8", "resnet8"), **extra: int) -> dict:
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    config["all"] = ["demo"]
    config["schedules"] = {
        "quick": {
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.0001,
            "batch_size": 64,
            "iterations": iterations,
            "milestones": [iterations // 2],
            "gamma": 0.1,
            "eval_every": 20,
            **extra,
        }
    }
    config["experiments"] = {
        "demo": {"dataset": "digits", "schedule": "quick", "seeds": [0], "models": {m: {} for m in models}}
    }
    return config


def _comparable(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    metrics["provenance"].pop("git_commit")  # two workspaces, two commits
    return metrics


def test_demo_workflow_runs_as_slurm_jobs_with_local_results(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    config = demo_config()
    on_slurm = make_workspace(tmp_path / "slurm", config)
    local = make_workspace(tmp_path / "local", config)
    _, log = run_snakemake_on_slurm(on_slurm, ["demo"], timeout=600)  # fails the test itself on error
    ids = submitted_job_ids(log)
    # prepare, 2 x (train, evaluate, responses), render: every job went through sbatch.
    assert len(ids) == len(set(ids)) == 8, log[-3000:]
    snakemake(local, "demo")
    for model in ("plain8", "resnet8"):
        folder = f"results/digits/{model}/seed0"
        assert (on_slurm / folder / "model.pt").read_bytes() == (local / folder / "model.pt").read_bytes()
        assert _comparable(on_slurm / folder / "metrics.json") == _comparable(local / folder / "metrics.json")
    assert (on_slurm / "results/demo/tables/results.csv").read_text() == (
        local / "results/demo/tables/results.csv"
    ).read_text()


def test_requeued_training_job_resumes_and_matches_an_uninterrupted_run(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    config = demo_config(iterations=200, models=("resnet8",), checkpoint_every=10)
    workspace = make_workspace(tmp_path / "ws", config)
    reference = make_workspace(tmp_path / "reference", config)
    process = start_snakemake_on_slurm(workspace, ["results/digits/resnet8/seed0/model.pt"], timeout=900)
    checkpoint = workspace / "results/digits/resnet8/seed0/checkpoint.pt"
    try:
        wait_for(checkpoint.exists, 300, "the training job's first checkpoint")
        job_id = submitted_job_ids((workspace / "snakemake_slurm.log").read_text())[-1]
        subprocess.run(["scontrol", "requeue", job_id], check=True)

        def released() -> bool:  # SLURM holds a requeued job ~2 minutes; start it now
            job = scontrol_show_job(job_id)
            if job["JobState"] == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                return True
            return job.get("Restarts") == "1"

        wait_for(released, 60, "the requeued job")
        rc = process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.send_signal(2)
            process.wait(timeout=60)
    log = (workspace / "snakemake_slurm.log").read_text()
    assert rc == 0, log[-5000:]
    train_log = (workspace / "logs/train/digits/resnet8/seed0.log").read_text()
    assert re.search(r"resuming resnet8 seed 0 from iteration \d+", train_log), train_log[-3000:]
    snakemake(reference, "results/digits/resnet8/seed0/model.pt")
    model = "results/digits/resnet8/seed0/model.pt"
    assert (workspace / model).read_bytes() == (reference / model).read_bytes()
