"""The real pipeline through a real (local, single-node) SLURM cluster: every job a SLURM job with results
identical to a local run, with a requeued training job resuming from its checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_imagenet import imagenet_config, tiny_imagenet  # noqa: F401 - fixture
from test_pipeline import make_workspace, snakemake
from test_slurm import (
    run_snakemake_on_slurm,
    scontrol_show_job,
    slurm_cluster,  # noqa: F401 - fixture
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
    """A run's metrics and details, less what differs between two workspaces."""
    metrics = json.loads(metrics_path.read_text()) | json.loads(metrics_path.with_name("details.json").read_text())
    metrics["provenance"].pop("git_commit")  # two workspaces, two commits
    return metrics


def train_job_of(model: str, log: str) -> str:
    """The SLURM job id of `model`'s training job among those Snakemake submitted."""
    for job_id in submitted_job_ids(log):
        if scontrol_show_job(job_id).get("Comment", "") == f"rule_train_wildcards_digits_{model}_0":
            return job_id
    raise AssertionError(f"no training job of {model} in:\n{log[-3000:]}")


def test_demo_on_slurm_with_a_requeued_training_job_matches_a_local_run(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    """Every step of the demo workflow a SLURM job, and one training job requeued mid-run (what preemption does):
    it resumes from its checkpoint, and every result is byte for byte that of an uninterrupted local run."""
    config = demo_config(iterations=200, checkpoint_every=10)
    on_slurm = make_workspace(tmp_path / "slurm", config)
    local = make_workspace(tmp_path / "local", config)

    def requeue_resnet8(_: subprocess.Popen) -> None:
        wait_for((on_slurm / "results/digits/resnet8/seed0/checkpoint.pt").exists, 300, "resnet8's first checkpoint")
        job_id = train_job_of("resnet8", (on_slurm / "snakemake_slurm.log").read_text())
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        # SLURM holds a requeued job for one credential lifetime (cred_expire, 10 s on the test cluster)
        wait_for(lambda: scontrol_show_job(job_id).get("Restarts") == "1", 60, "the requeued job")

    _, log = run_snakemake_on_slurm(on_slurm, ["demo"], timeout=600, while_running=requeue_resnet8)
    ids = submitted_job_ids(log)
    # prepare, 2 x (train, evaluate, responses), render: every job went through sbatch; the requeued one kept its id.
    assert len(ids) == len(set(ids)) == 8, log[-3000:]
    train_log = (on_slurm / "logs/train/digits/resnet8/seed0.log").read_text()
    assert re.search(r"resuming resnet8 seed 0 from iteration \d+", train_log), train_log[-3000:]

    snakemake(local, "demo")
    for model in ("plain8", "resnet8"):
        folder = f"results/digits/{model}/seed0"
        assert (on_slurm / folder / "model.pt").read_bytes() == (local / folder / "model.pt").read_bytes()
        assert _comparable(on_slurm / folder / "metrics.json") == _comparable(local / folder / "metrics.json")
    assert (on_slurm / "results/demo/tables/results.csv").read_text() == (
        local / "results/demo/tables/results.csv"
    ).read_text()


# ---------------------------------------------------------------------------------------------- ImageNet
def test_two_task_slurm_job_trains_data_parallel(slurm_cluster, tiny_imagenet: Path, tmp_path: Path) -> None:  # noqa: F811
    """One SLURM job with 2 tasks: `launch` sruns a torchrun agent per task, c10d rendezvous, gloo on CPU."""
    config = imagenet_config(tiny_imagenet, nodes=2, per_node=1, workers=0)
    workspace = make_workspace(tmp_path / "ws", config)
    target = "results/imagenet/resnet18/seed0/metrics.json"
    _, log = run_snakemake_on_slurm(workspace, [target], timeout=400)
    ids = submitted_job_ids(log)
    assert len(ids) == 3, log[-3000:]  # index, train, evaluate
    train_id = next(i for i in ids if scontrol_show_job(i).get("Comment", "").startswith("rule_train_imagenet"))
    assert scontrol_show_job(train_id)["NumTasks"] == "2"
    train_log = (workspace / "logs/train/imagenet/resnet18/seed0.log").read_text()
    assert "launch: srun --ntasks=2 --kill-on-bad-exit=1" in train_log, train_log[-3000:]
    assert "--rdzv-backend c10d" in train_log and "global batch 16 = 2 x 8" in train_log
    details = workspace / target.replace("metrics.json", "details.json")
    assert json.loads(details.read_text())["provenance"]["train_world_size"] == 2
