"""The results of record committed to git (README's first section: the short CIFAR-10 experiment and the review's FC
nets, 3 seeds each): every committed run is whole and was made by the training and evaluation code of this commit,
every table agrees with the metrics and histories it came from, the verdicts are what the committed runs give, and
all of it renders again from the committed files alone, without retraining. The record is made run by run, across
sessions (issue 29): these tests hold at every step, and one says how far it has come."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env

from resnet_repro.paths import HISTORY_FILE, SUMMARY_DIR
from resnet_repro.plan import build_plan
from resnet_repro.render.experiments import FC_RECORD, RECORD, SHORT, judge_experiment
from resnet_repro.render.outputs import response_runs
from resnet_repro.render.references import load_references
from resnet_repro.render.report import render_experiment
from resnet_repro.render.results import ExperimentResults, collect
from resnet_repro.runspec import RunSpec

# What issue 29 asks the record to hold: these nets, 3 seeds each, on the JPEG copy of CIFAR-10.
RECORD_MODELS = {SHORT: ("plain20", "plain56", "resnet20", "resnet56"), FC_RECORD: ("fc20", "fc56")}
RECORD_SCHEDULES = {SHORT: "cifar_short", FC_RECORD: "review_fc"}
SEEDS = (0, 1, 2)
# A run's small files, committed once it finished (its weights stay in DVC's cache).
RUN_FILES = ("metrics.json", "details.json", "history.csv", "epochs.csv")


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def folder(experiment: str) -> Path:
    return REPO / "results" / experiment


@pytest.fixture(scope="module")
def plan():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return build_plan(config, check_paths=False)


@pytest.fixture(scope="module")
def results(plan) -> dict[str, ExperimentResults]:
    return {name: collect(plan, name, REPO) for name in RECORD}


def committed_files() -> set[str]:
    """The files under results/ that git tracks (runs under way in this checkout have files that are not)."""
    listed = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def committed_runs(plan) -> list[tuple[str, RunSpec]]:
    """The record's runs that have finished and been committed: those with a metrics.json in git."""
    tracked = committed_files()
    return [(name, run) for name in RECORD for run in plan.experiments[name] if run.metrics in tracked]


def test_the_record_is_planned_as_issue_29_asks(plan) -> None:
    assert set(RECORD) <= set(plan.config["all"])  # `snakemake all` makes it
    for name in RECORD:
        runs = plan.experiments[name]
        assert {(r.model, r.seed) for r in runs} == {(m, s) for m in RECORD_MODELS[name] for s in SEEDS}, name
        assert {(r.dataset, r.schedule) for r in runs} == {("cifar10_jpeg", RECORD_SCHEDULES[name])}, name
    # the FC nets in fp32, whatever the machine (see schedules.yaml, review_fc)
    assert {r.settings.precision for r in plan.experiments[FC_RECORD]} == {"fp32"}


def test_every_committed_run_is_whole(plan) -> None:
    """Never a partial run: a run's files are all there or none is, and its history reaches its last iteration."""
    fig7 = {run.folder for name in RECORD for run in response_runs(plan, name)}
    tracked = committed_files()
    for name in RECORD:
        for run in plan.experiments[name]:
            expected = [*RUN_FILES, *(["responses.json"] if run.folder in fig7 else [])]
            present = [f for f in expected if f"{run.folder}/{f}" in tracked]
            assert present in ([], expected), f"{run.folder}: only {present} of {expected}"
            if present:
                history = read_csv(REPO / run.folder / HISTORY_FILE)
                assert int(history[-1]["iteration"]) == run.settings.iterations, run.folder


def stage_code(stages: dict, stage: str) -> list[str]:
    return [dep for dep in stages[stage]["deps"] if dep.startswith("src/")]


def test_each_committed_run_was_made_by_this_commits_stage_code(plan) -> None:
    """Its provenance names a commit whose training and evaluation code (the stages' code dependencies in dvc.yaml)
    is this checkout's, byte for byte; and it names the processor, precision and threads it ran with."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for _, run in committed_runs(plan):
        provenance = json.loads((REPO / run.details).read_text())["provenance"]
        commit = provenance["git_commit"]
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True)
        assert known.returncode == 0, f"{run.folder}: commit {commit} is not in this clone's history"
        stem = f"{run.dataset}-{run.model}-seed{run.seed}"
        code = sorted({*stage_code(stages, f"train-{stem}"), *stage_code(stages, f"evaluate-{stem}")})
        changed = subprocess.run(
            ["git", "diff", "--name-only", commit, "--", *code], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        assert not changed, f"{run.folder} was made by {commit[:12]}, whose {changed} differ from this checkout's"
        assert provenance["train_processor"] and provenance["train_precision"] in ("fp32", "bf16"), run.folder
        assert int(read_csv(REPO / run.folder / HISTORY_FILE)[-1]["threads"]) >= 1


def test_dvc_sees_each_committed_run_as_made_by_this_code(plan) -> None:
    """`dvc status` on a committed run's stages reports, at most, weights or prepared data that are not here (as
    in a fresh clone): never a changed command, parameter or code file."""
    stems = [f"{run.dataset}-{run.model}-seed{run.seed}" for _, run in committed_runs(plan)]
    if not stems:
        return
    targets = [f"{kind}-{stem}" for stem in stems for kind in ("train", "evaluate")]
    # cli_env: the venv's dvc, which CI does not put on PATH
    result = subprocess.run(
        ["dvc", "status", "--json", *targets],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            assert isinstance(change, dict), f"{stage}: {change}"  # "changed command" is a bare string
            for kind, paths in change.items():
                assert kind in ("changed deps", "changed outs"), f"{stage}: {kind}"
                for path, state in paths.items():
                    missing = state in ("deleted", "not in cache")
                    assert missing and not path.startswith("src/"), f"{stage}: {path} {state}"


def test_the_record_is_complete(plan) -> None:
    """Every run issue 29 names is committed."""
    done = {run.folder for _, run in committed_runs(plan)}
    missing = [run.folder for name in RECORD for run in plan.experiments[name] if run.folder not in done]
    assert not missing, f"{len(missing)} runs of record still to make: {missing}"


def test_results_table_matches_the_metrics(results) -> None:
    rows = {r["model"]: r for r in read_csv(folder(SHORT) / "tables/results.csv")}
    assert set(rows) == set(results[SHORT].models)
    for model, group in results[SHORT].models.items():
        row = rows[model]
        assert int(row["runs"]) == len(group.runs)
        assert "error_best" not in row  # a best of seeds only where the paper prints one (Table 6, ResNet-110)
        if not group.runs:
            continue
        errors = [100 * run.metrics["test_error"] for run in group.runs]
        mean = math.fsum(errors) / len(errors)
        assert float(row["error_mean"]) == pytest.approx(mean, abs=1e-6)
        if len(errors) > 1:
            std = math.sqrt(math.fsum((e - mean) ** 2 for e in errors) / (len(errors) - 1))
            assert float(row["error_std"]) == pytest.approx(std, abs=1e-6)
        train = [100 * run.metrics["train_error"] for run in group.runs]
        assert float(row["train_error_mean"]) == pytest.approx(math.fsum(train) / len(train), abs=1e-6)
        # The metrics agree with the last evaluation in each run's history (the evaluate step scores the saved
        # model again, with its own batches under bf16: a few of the 10,000 images may flip).
        for run in group.runs:
            assert run.history["test_error"][-1] == pytest.approx(run.metrics["test_error"], abs=2e-3)


def test_fc_table_matches_the_metrics(results) -> None:
    rows = {(r["model"], r["source"]): r for r in read_csv(folder(FC_RECORD) / "tables/fc_table.csv")}
    refs = {r["model"]: r for r in load_references()["review_fc"]["rows"]}
    for model, group in results[FC_RECORD].models.items():
        review = rows[(model, "review")]
        assert float(review["val_accuracy"]) == refs[model]["val_accuracy"]
        if not group.runs:
            assert (model, "ours: not run") in rows
            continue
        ours = rows[(model, "ours")]
        assert int(ours["runs"]) == len(group.runs)
        accuracy = math.fsum(run.metrics["top1_accuracy"] for run in group.runs) / len(group.runs)
        assert float(ours["val_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
        train = math.fsum(1 - run.metrics["train_error"] for run in group.runs) / len(group.runs)
        assert float(ours["train_accuracy"]) == pytest.approx(train, abs=1e-6)


@pytest.mark.parametrize("experiment", RECORD)
def test_verdict_of_record_is_what_the_runs_give(plan, results, experiment: str) -> None:
    committed = read_csv(folder(experiment) / "tables/verdict.csv")
    judged = judge_experiment(plan, results[experiment], load_references())
    assert [r["claim"] for r in committed] == [v.claim for v in judged]
    for row, verdict in zip(committed, judged, strict=True):
        assert row["verdict"] == verdict.verdict, row["claim"]
        assert row["seeds"] == verdict.seeds
        for key in ("margin", "noise", "df", "critical", "p_value", "threshold"):
            value = getattr(verdict, key)
            if value is None:
                assert row[key] == "", (row["claim"], key)
            else:
                assert float(row[key]) == pytest.approx(value, rel=1e-3, abs=1e-4), (row["claim"], key)


@pytest.mark.parametrize("experiment", RECORD)
def test_every_judged_claim_shows_its_df_and_critical_value(experiment: str) -> None:
    """A claim judged on runs (not "not run") shows the degrees of freedom and the critical value it was tested
    with; over several seeds a side, Welch's df lies between the fewer seeds less one and all seeds less two."""
    for row in read_csv(folder(experiment) / "tables/verdict.csv"):
        if row["verdict"] in ("not run", "undetermined"):
            continue
        df, critical = float(row["df"]), float(row["critical"])
        assert critical > 1.9 and 0 < float(row["threshold"]) <= 0.05, row
        seeds = [int(n) for n in row["seeds"].split(" vs ")]
        if min(seeds) > 1:
            low, high = (min(seeds) - 1, sum(seeds) - 2) if len(seeds) == 2 else (seeds[0] - 1, seeds[0] - 1)
            assert low - 1e-6 <= df <= high + 1e-6, row


@pytest.mark.parametrize("experiment", RECORD)
def test_provenance_of_every_run(results, experiment: str) -> None:
    rows = read_csv(folder(experiment) / "tables/runs.csv")
    group_runs = [(g.model, run) for g in results[experiment].models.values() for run in g.runs]
    assert len(rows) == len(group_runs)
    by_run = {(r["model"], int(r["seed"])): r for r in rows}
    for model, run in group_runs:
        prov = run.metrics["provenance"]
        row = by_run[(model, run.seed)]
        assert float(row["wall_min"]) == pytest.approx(run.history["wall_s"][-1] / 60, abs=0.01)
        assert int(row["threads"]) == int(run.history["threads"][-1]) >= 1
        assert row["commit"] == prov["git_commit"][:12] and row["processor"] == prov["train_processor"]


@pytest.mark.parametrize("experiment", RECORD)
def test_results_render_again_from_the_committed_files(plan, tmp_path: Path, experiment: str) -> None:
    """No weights, no data: the figures and tables come back from the committed metrics and histories."""
    record = folder(experiment)
    written = render_experiment(plan, experiment, tmp_path, REPO)
    assert {p.name for p in written} == {p.name for p in (record / "tables").iterdir()} | {
        p.name for p in (record / "figures").iterdir()
    }
    for table in (record / "tables").iterdir():
        assert (tmp_path / "tables" / table.name).read_text() == table.read_text(), table.name
    for _, run in committed_runs(plan):
        details = json.loads((REPO / run.details).read_text())
        assert details["test_images"] == 10_000 and details["train_images"] == 50_000


# Where each committed table is shown: the README opens with the results and the verdicts of every claim,
# docs/results.md has the per-run provenance and times. Each is shown once, so a rerun is resynced in one place.
SHOWN_IN = {
    f"results/{SHORT}/tables/results.md": "README.md",
    f"results/{FC_RECORD}/tables/fc_table.md": "README.md",
    f"{SUMMARY_DIR}/tables/verdict.md": "README.md",
    f"results/{SHORT}/tables/runs.md": "docs/results.md",
    f"results/{FC_RECORD}/tables/runs.md": "docs/results.md",
}


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


@pytest.mark.parametrize("table", SHOWN_IN)
def test_docs_show_the_committed_tables(table: str) -> None:
    """The README opens with these results: its tables (and the runs tables of docs/results.md) are the committed
    ones, row for row, with no row more or less."""
    assert f"results/{SHORT}/figures/fig6.png" in (REPO / "README.md").read_text()
    committed = table_blocks((REPO / table).read_text())
    assert len(committed) == 1, table
    page = SHOWN_IN[table]
    shown = [block for block in table_blocks((REPO / page).read_text()) if block == committed[0]]
    assert len(shown) == 1, f"{page} shows {table} {len(shown)} times, not once"


def test_the_summary_verdict_is_the_records(plan, results) -> None:
    """The README's verdict table (the summary over `all`) holds exactly the record's claims, as judged."""
    summary = read_csv(REPO / SUMMARY_DIR / "tables/verdict.csv")
    refs = load_references()
    judged = [v for name in RECORD for v in judge_experiment(plan, results[name], refs)]
    assert [(r["experiment"], r["claim"], r["verdict"]) for r in summary] == [
        (v.experiment, v.claim, v.verdict) for v in judged
    ]
