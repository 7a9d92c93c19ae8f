"""The results of record committed to git (the short CIFAR-10 experiment, README's first section): every table
agrees with the metrics and histories it came from, the verdict is what the committed runs give, and they render
again from the committed files alone, without retraining."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from resnet_repro.plan import build_plan
from resnet_repro.render.experiments import SHORT, judge_experiment
from resnet_repro.render.outputs import response_runs
from resnet_repro.render.references import load_references
from resnet_repro.render.report import render_experiment
from resnet_repro.render.results import ExperimentResults, collect

EXPERIMENT = SHORT
RECORD = REPO / "results" / EXPERIMENT


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def plan():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return build_plan(config, check_paths=False)


@pytest.fixture(scope="module")
def results(plan) -> ExperimentResults:
    return collect(plan, EXPERIMENT, REPO)


def test_every_run_of_record_is_committed(plan) -> None:
    runs = plan.experiments[EXPERIMENT]
    assert {run.model for run in runs} >= {"plain20", "plain56", "resnet20", "resnet56"}
    for run in runs:
        for name in ("metrics.json", "history.csv", "epochs.csv"):
            assert (REPO / run.folder / name).is_file(), f"{run.folder}/{name} is not committed"
    seeds = {}
    for run in runs:
        seeds.setdefault(run.model, []).append(run.seed)
    assert all(len(s) >= 2 for s in seeds.values()), seeds  # every claim is decided by several seeds
    for run in response_runs(plan, EXPERIMENT):
        assert (REPO / run.responses).is_file()


def test_results_table_matches_the_metrics(results) -> None:
    rows = {r["model"]: r for r in read_csv(RECORD / "tables/results.csv")}
    assert set(rows) == set(results.models)
    for model, group in results.models.items():
        errors = [100 * run.metrics["test_error"] for run in group.runs]
        mean = math.fsum(errors) / len(errors)
        std = math.sqrt(math.fsum((e - mean) ** 2 for e in errors) / (len(errors) - 1))
        row = rows[model]
        assert float(row["error_mean"]) == pytest.approx(mean, abs=1e-6)
        assert float(row["error_std"]) == pytest.approx(std, abs=1e-6)
        assert "error_best" not in row  # a best of seeds only where the paper prints one (Table 6, ResNet-110)
        train = [100 * run.metrics["train_error"] for run in group.runs]
        assert float(row["train_error_mean"]) == pytest.approx(math.fsum(train) / len(train), abs=1e-6)
        assert int(row["runs"]) == len(group.runs) == len(group.seeds)
        # The metrics agree with the last evaluation in each run's history (the evaluate step scores the saved
        # model again, with its own batches under bf16: a few of the 10,000 images may flip).
        for run in group.runs:
            assert run.history["test_error"][-1] == pytest.approx(run.metrics["test_error"], abs=2e-3)


def test_verdict_of_record_is_what_the_runs_give(plan, results) -> None:
    committed = read_csv(RECORD / "tables/verdict.csv")
    judged = judge_experiment(plan, results, load_references())
    assert [r["claim"] for r in committed] == [v.claim for v in judged]
    for row, verdict in zip(committed, judged, strict=True):
        assert row["verdict"] == verdict.verdict, row["claim"]
        assert float(row["margin"]) == pytest.approx(verdict.margin, abs=1e-4)
        assert float(row["noise"]) == pytest.approx(verdict.noise, abs=1e-4)
        assert row["seeds"] == verdict.seeds
        assert float(row["df"]) == pytest.approx(verdict.df, abs=1e-2)
        assert float(row["critical"]) == pytest.approx(verdict.critical, abs=1e-4)
        assert float(row["p_value"]) == pytest.approx(verdict.p_value, rel=1e-3)
        assert float(row["threshold"]) == pytest.approx(verdict.threshold, rel=1e-5)
    # Degradation holds beyond Welch's noise even on 2 seeds a side (df about 2: t near 4.3, not 2). ResNet-56 over
    # plain-56 (margin +24 points, seeds 8 points apart) is within that noise on 2 seeds (issue 23).
    by_claim = {r["claim"]: r for r in committed}
    row = by_claim["plain-56 has higher training error than plain-20"]
    assert row["verdict"] == "reproduced" and float(row["margin"]) > float(row["noise"]) > 0, row
    for row in committed:  # Welch's df lies between min(n) - 1 and n₁ + n₂ - 2: at most 2, so t(0.975) >= 4.30
        if row["seeds"] == "2 vs 2":
            assert 1 <= float(row["df"]) <= 2 and float(row["critical"]) >= 4.30, row
    # Holm over the six claims: the k-th smallest p-value is tested at 0.05 / (7 - k). Test-error degradation
    # (p about 0.0097, second smallest) passes at 0.05/5 = 0.01 where Bonferroni's 0.05/6 would fail it.
    by_p = sorted(committed, key=lambda r: float(r["p_value"]))
    assert [float(r["threshold"]) for r in by_p] == pytest.approx([0.05 / (6 - k) for k in range(6)], rel=1e-5)
    degradation = by_claim["plain-56 has higher test error than plain-20"]
    assert by_p[1] is degradation and 0.05 / 6 < float(degradation["p_value"]) <= 0.01
    assert degradation["verdict"] == "reproduced"


def test_provenance_of_every_run(results) -> None:
    rows = read_csv(RECORD / "tables/runs.csv")
    assert len(rows) == sum(len(g.runs) for g in results.models.values())
    by_run = {(r["model"], int(r["seed"])): r for r in rows}
    for group in results.models.values():
        for run in group.runs:
            prov = run.metrics["provenance"]
            assert len(prov["git_commit"]) == 40 and prov["torch_version"] and prov["train_device"]
            row = by_run[(group.model, run.seed)]
            assert float(row["wall_min"]) == pytest.approx(run.history["wall_s"][-1] / 60, abs=0.01)
            assert int(row["threads"]) == int(run.history["threads"][-1]) >= 1
            assert row["commit"] == prov["git_commit"][:12]


def test_results_render_again_from_the_committed_files(plan, tmp_path: Path) -> None:
    """No weights, no data: the figures and tables come back from the committed metrics and histories."""
    written = render_experiment(plan, EXPERIMENT, tmp_path, REPO)
    assert {p.name for p in written} == {p.name for p in (RECORD / "tables").iterdir()} | {
        p.name for p in (RECORD / "figures").iterdir()
    }
    for table in (RECORD / "tables").iterdir():
        assert (tmp_path / "tables" / table.name).read_text() == table.read_text(), table.name
    details = json.loads((REPO / plan.experiments[EXPERIMENT][0].details).read_text())
    assert details["test_images"] == 10_000 and details["train_images"] == 50_000


# Where each committed table is shown: the README opens with the results and the verdict, docs/results.md has the
# per-run times. Each is shown once, so a rerun of the record is resynced in one place per table.
SHOWN_IN = {"results": "README.md", "verdict": "README.md", "runs": "docs/results.md"}


def table_blocks(text: str) -> list[list[str]]:
    """The Markdown tables of a page: each a run of consecutive lines starting with `|`."""
    blocks: list[list[str]] = []
    previous = False
    for line in text.splitlines():
        row = line.startswith("|")
        if row and not previous:
            blocks.append([])
        if row:
            blocks[-1].append(line)
        previous = row
    return blocks


def test_docs_show_the_committed_tables() -> None:
    """The README opens with these results: its tables (and the runs table of docs/results.md) are the committed
    ones, row for row, with no row more or less."""
    assert "results/cifar10_short/figures/fig6.png" in (REPO / "README.md").read_text()
    for name, page in SHOWN_IN.items():
        committed = table_blocks((RECORD / "tables" / f"{name}.md").read_text())
        assert len(committed) == 1, name
        header = committed[0][0]
        shown = [block for block in table_blocks((REPO / page).read_text()) if block[0] == header]
        assert len(shown) == 1, f"{page} shows tables/{name}.md {len(shown)} times (its header: {header})"
        assert shown[0] == committed[0], f"{page}'s copy of tables/{name}.md differs from the committed table"
