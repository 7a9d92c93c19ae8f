"""The offline demo end to end, as the README runs it: every stage on the bundled digits, through Snakemake,
accepted by DVC, rendered into figures, tables and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_pipeline import dvc_stages_run, make_workspace, planned_jobs, sh, snakemake

pytestmark = pytest.mark.slow


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
