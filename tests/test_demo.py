"""The offline demo end to end, as the README runs it: every stage on the bundled digits, through Snakemake,
accepted by DVC, rendered into figures, tables and the HTML report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_pipeline import dvc_stages_run, make_workspace, planned_jobs, sh, snakemake


def test_setup_stops_first_without_disk_space(tmp_path: Path) -> None:
    """Creating .venv takes about 6 GiB (torch's CUDA build): with less free, one line, before pip starts."""
    scripts = tmp_path / "workflow" / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(REPO / "workflow/scripts/setup_env.sh", scripts)
    proc = subprocess.run(
        ["bash", str(scripts / "setup_env.sh")],
        env={**os.environ, "MIN_FREE_GIB": "1000000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert re.fullmatch(
        r"error: creating \.venv needs about 1000000 GiB free on \S+; only \d+ GiB are", proc.stderr.strip()
    )
    assert not (tmp_path / ".venv").exists()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    workspace = make_workspace(tmp_path / "ws", config)
    snakemake(workspace, "demo")
    models = config["experiments"]["demo"]["models"]
    for model in models:
        metrics = json.loads((workspace / f"results/digits/{model}/seed0/metrics.json").read_text())
        assert metrics["test_error"] < 0.5, (model, metrics["test_error"])  # chance: 0.9
    figures = sorted(p.name for p in (workspace / "results/demo/figures").iterdir())
    assert "curves.png" in figures and "fig7.png" in figures
    verdict = (workspace / "results/demo/tables/verdict.csv").read_text()
    assert "reproduced" in verdict or "not reproduced" in verdict

    assert planned_jobs(workspace, "demo") == {}
    repro = sh("dvc", "repro", "render-demo", cwd=workspace).stdout
    assert dvc_stages_run(repro) == [], repro

    snakemake(workspace, "demo", "--report", "results/demo/report.html")
    report = (workspace / "results/demo/report.html").read_text(errors="replace")
    assert "curves.png" in report and "fig7" in report
