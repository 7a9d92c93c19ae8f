"""Named schedules as data: a schedule extends a base (`base:`, optionally `scale:`) instead of repeating it, and
resolving them gives exactly the settings they gave before they could (captured from main at cf5a823)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from resnet_repro.errors import ConfigError
from resnet_repro.plan import build_plan
from resnet_repro.settings import (
    PAPER_SCHEDULE,
    SCHEDULES_FILE,
    TrainSettings,
    load_schedules,
    resolve_settings,
)

BEFORE = json.loads((Path(__file__).parent / "settings_at_cf5a823.json").read_text())
# Changed on purpose since cf5a823 (issue 27): the FC nets train in fp32 on every device (their initial logits differ
# by less than bf16 resolves), and the review's own regime (no augmentation, fp32) has schedules and runs of its own.
CHANGED = {"review_fc": {"precision": "fp32"}}
NO_AUGMENTATION = {"augment": {"pad": 0, "flip": False}}
NEW = {
    "review_cifar_noaug": ("review_cifar", NO_AUGMENTATION | {"precision": "fp32"}),
    "review_fc_noaug": ("review_fc", NO_AUGMENTATION),
}
CHANGED_RUNS = {"fc_vs_resnet/fc20/seed0": "review_fc", "fc_vs_resnet/fc56/seed0": "review_fc"}
# Runs added since: the review's own regime (issue 27) and the results of record's third seed and FC nets (issue 29).
NEW_EXPERIMENTS = ("review_fc_vs_resnet", "review_cifar100", "cifar10_short", "cifar10_fc")


def digest(settings: TrainSettings) -> str:
    """How settings_at_cf5a823.json names a run's settings: sha256 of to_dict() as sorted JSON, 16 hex digits."""
    return hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def test_every_named_schedule_resolves_to_the_settings_it_had_before_bases() -> None:
    assert set(load_schedules()) == set(BEFORE["schedules"]) | set(NEW)
    for name, values in BEFORE["schedules"].items():
        assert resolve_settings(name).to_dict() == values | CHANGED.get(name, {}), name
    for name, (base, changes) in NEW.items():
        assert resolve_settings(name).to_dict() == resolve_settings(base).to_dict() | changes, name


def test_every_planned_run_keeps_its_settings() -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    plan = build_plan(config, check_paths=False)
    runs = {f"{name}/{run.model}/seed{run.seed}": run for name, runs in plan.experiments.items() for run in runs}
    now = {key: digest(run.settings) for key, run in runs.items()}
    kept = {key: value for key, value in BEFORE["runs"].items() if key not in CHANGED_RUNS}
    assert {key: now[key] for key in kept} == kept
    for key, schedule in CHANGED_RUNS.items():
        assert runs[key].settings == resolve_settings(schedule) and now[key] != BEFORE["runs"][key]
    added = set(now) - set(BEFORE["runs"])
    assert {key.split("/")[0] for key in added} == set(NEW_EXPERIMENTS)
    for key in added:  # a new run without overrides of its own trains on its experiment's schedule, as resolved
        experiment = config["experiments"][key.split("/")[0]]
        if not experiment["models"][runs[key].model]:
            assert runs[key].settings == resolve_settings(experiment["schedule"]), key


def test_train_settings_defaults_are_the_papers_schedule_as_written_once() -> None:
    assert TrainSettings().to_dict() == BEFORE["defaults"] == resolve_settings(PAPER_SCHEDULE).to_dict()
    written = yaml.safe_load(SCHEDULES_FILE.read_text())
    # The variants state only what they change: no schedule repeats a value it inherits from its base.
    for name, values in written.items():
        if "base" in values:
            base = load_schedules()[values["base"]]
            repeated = {k: v for k, v in values.items() if k in base and base[k] == v}
            assert not repeated, f"{name} repeats {repeated} of {values['base']}"
    assert written["cifar_paper_warmup"] == {"base": "cifar_paper", "warmup": {"lr": 0.01, "until_train_error": 0.8}}


def test_the_plan_stage_tracks_every_schedule_and_the_trainings_their_resolved_values() -> None:
    """A schedule's values reach DVC twice: the plan stage tracks all of schedules.yaml and config.yaml's schedules
    (so a changed base reruns it), and each training stage the values its settings.json resolved them to."""
    from resnet_repro.stages import REPO_SCHEDULES, dvc_stages

    plan = build_plan(yaml.safe_load((REPO / "config.yaml").read_text()), check_paths=False)
    stages = dvc_stages(plan)
    assert stages["plan"]["params"] == [{"config.yaml": ["experiments", "schedules"]}, {REPO_SCHEDULES: None}]
    run = plan.run("cifar10_jpeg", "resnet20", 0)
    assert stages[f"train-{run.key}"]["params"] == [{run.settings_file: ["dataset", "model", "seed", "settings"]}]


def test_bases_chain_and_scale_exactly() -> None:
    extra = {
        "half": {"base": "cifar_paper_warmup", "scale": 2, "eval_every": 500},
        "quarter": {"base": "half", "scale": 2},
    }
    schedules = load_schedules(extra)
    assert schedules["half"]["warmup"] == {"lr": 0.01, "until_train_error": 0.8}
    assert (schedules["half"]["iterations"], schedules["half"]["milestones"]) == (32000, [16000, 24000])
    quarter = resolve_settings("quarter", schedules=schedules)
    assert (quarter.iterations, quarter.milestones, quarter.eval_every) == (16000, (8000, 12000), 500)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"a": {"base": "b"}, "b": {"base": "a"}}, "schedule 'a': its bases loop (a -> b -> a)"),
        ({"a": {"base": "nowhere"}}, "schedule 'a': base 'nowhere' is not a schedule; known: "),
        ({"a": {"scale": 2, "iterations": 10}}, "schedule 'a': scale needs a base schedule to scale"),
        ({"a": {"base": "cifar_paper", "scale": 0}}, "schedule 'a': scale must be a positive integer (got 0)"),
        ({"a": {"base": "cifar_paper", "scale": 7}}, "schedule 'a': scale 7 does not divide 'cifar_paper'"),
    ],
)
def test_a_bad_base_is_one_clear_error(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_schedules(extra)
    assert message in str(error.value)
