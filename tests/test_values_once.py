"""Values the planning layer, the command line and the workflow share, each defined once in a torch-free module:
the SLURM flags of training jobs, the rendezvous port, the batch-per-process check, which datasets are image
folders, and the run files a finished run must hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from resnet_repro.archives import ARCHIVES
from resnet_repro.cli import build_parser
from resnet_repro.errors import ConfigError, DataError
from resnet_repro.plan import DIGITS, IMAGENET, reads_image_folder
from resnet_repro.render.results import load_run
from resnet_repro.resources import SLURM_TRAIN_EXTRA
from resnet_repro.runfiles import write_evaluation
from resnet_repro.settings import (
    PAPER_SCHEDULE,
    RENDEZVOUS_PORT_BASE,
    RENDEZVOUS_PORT_SPAN,
    load_schedules,
    per_process_batch,
    rendezvous_port,
)
from resnet_repro.stages import prepare_inputs


def test_training_jobs_get_the_slurm_flags_from_one_place() -> None:
    """The train rule and ImageNet's training resources name resources.SLURM_TRAIN_EXTRA, not the flags."""
    assert SLURM_TRAIN_EXTRA == "--signal=TERM@300 --open-mode=append"
    rules = {path.name: path.read_text() for path in (REPO / "workflow").rglob("*.smk")}
    assert "slurm_extra=_resources.SLURM_TRAIN_EXTRA" in rules["train.smk"]
    for name, text in rules.items():
        assert "--signal=TERM" not in text, name
    package = (REPO / "src/resnet_repro").rglob("*.py")
    assert sum(path.read_text().count("--signal=TERM") for path in package) == 1


def test_the_rendezvous_port_comes_from_the_job_id_or_the_command_line() -> None:
    assert rendezvous_port(None, None) == RENDEZVOUS_PORT_BASE
    assert rendezvous_port(None, "1234567") == RENDEZVOUS_PORT_BASE + 4567
    assert rendezvous_port(29500, "1234567") == 29500
    assert RENDEZVOUS_PORT_BASE + RENDEZVOUS_PORT_SPAN <= 32768  # below Linux's ephemeral ports
    launch = build_parser()._subparsers._group_actions[0].choices["launch"]  # type: ignore[union-attr]
    port_help = next(a.help for a in launch._actions if "--port" in a.option_strings)
    assert (
        port_help % {}
        == f"rendezvous port for several nodes (default {RENDEZVOUS_PORT_BASE} + job id % {RENDEZVOUS_PORT_SPAN})"
    )
    assert not re.search(r"\b20000\b", (REPO / "src/resnet_repro/commands/launch.py").read_text())


def test_the_global_batch_must_divide_into_the_processes() -> None:
    assert per_process_batch(256, 8) == 32
    assert per_process_batch(256, 1) == 256
    with pytest.raises(ConfigError, match="the global batch 256 does not divide into 3 processes; pick a batch"):
        per_process_batch(256, 3)


def test_image_folder_datasets_are_one_predicate() -> None:
    assert not reads_image_folder(DIGITS) and not reads_image_folder(IMAGENET)
    assert not any(reads_image_folder(name) for name in ARCHIVES)
    assert reads_image_folder("my_photos")
    config = {"datasets": {"my_photos": {"path": "/data/photos"}, DIGITS: {"path": "/ignored"}}}
    assert prepare_inputs("my_photos", config) == ["/data/photos"]
    assert prepare_inputs(DIGITS, config) == []


def test_metrics_without_their_details_are_not_a_result(tmp_path: Path) -> None:
    """Evaluation writes details.json before metrics.json: a metrics file alone is refused in one line."""
    write_evaluation({"model": "plain8", "seed": 0, "test_error": 0.1, "test_images": 359}, tmp_path / "metrics.json")
    run = load_run(tmp_path)
    assert run is not None and run.sample_size("test_error") == 359
    (tmp_path / "details.json").unlink()
    with pytest.raises(DataError) as error:
        load_run(tmp_path)
    assert str(error.value) == f"{tmp_path / 'details.json'}: missing beside metrics.json; evaluate the run again"
    (tmp_path / "metrics.json").unlink()
    assert load_run(tmp_path) is None  # not evaluated: not run


def test_each_training_subcommand_names_its_default_schedule_once() -> None:
    parser = build_parser()
    run = ["--model", "plain8", "--data", "d", "--out", "o"]
    assert parser.parse_args(["train", *run]).default_schedule == PAPER_SCHEDULE
    assert parser.parse_args(["train-imagenet", *run]).default_schedule == "imagenet_paper"
    assert parser.parse_args(["train", *run, "--schedule", "demo"]).schedule == "demo"
    assert set(load_schedules()) >= {PAPER_SCHEDULE, "imagenet_paper"}
    commands = "".join(path.read_text() for path in (REPO / "src/resnet_repro/commands").glob("*.py"))
    assert commands.count('"imagenet_paper"') == 1 and '"cifar_paper"' not in commands
