"""Outputs on a shared machine and the two kinds of errors, through real `resnet-repro` processes.

* Every file the pipeline writes gets the mode a plain open() gives under the umask of the process that writes it
  (0644 under umask 022, 0664 under 002), every folder 0755 / 0775: results stay readable by the group.
* A full disk is one line and leaves nothing half-written.
* The user's mistakes are one line and a non-zero status; anything else (a bug) keeps its traceback and a line
  asking to report it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, REPO, cli_env, kill_at_teardown, make_cifar_archive, md5_of

from resnet_repro.cli import BUG_REPORT
from resnet_repro.plan import SCHEMA_PATH
from resnet_repro.runspec import RunSpec
from resnet_repro.settings import resolve_settings

UMASKS = [0o022, 0o002]


def run_with_umask(umask: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`resnet-repro ARGS` as a real process whose umask is `umask` (set in the child, before it starts)."""
    result = subprocess.run(
        [str(BIN / "resnet-repro"), *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(umask),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"resnet-repro {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def modes_under(root: Path) -> dict[str, int]:
    """The permission bits of everything below `root`, by relative path (folders end in /)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root)) + ("/" if path.is_dir() else "")
        found[name] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_modes_follow(umask: int, root: Path, expected_files: list[str]) -> None:
    modes = modes_under(root)
    assert set(expected_files) <= set(modes), sorted(set(expected_files) - set(modes))
    wrong = {
        name: oct(mode) for name, mode in modes.items() if mode != (0o777 if name.endswith("/") else 0o666) & ~umask
    }
    assert not wrong, f"umask {umask:03o}: {wrong}"
    assert not [name for name in modes if Path(name).name.startswith(".")], modes  # no temporary file is left


@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask{u:03o}")
def test_download_prepared_data_rendered_files_and_dvc_yaml_follow_the_umask(umask: int, tmp_path: Path) -> None:
    archive = make_cifar_archive(tmp_path / "source" / "cifar-10-python.tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    raw = out / "raw" / "cifar-10-python.tar.gz"
    run_with_umask(umask, "fetch", "cifar10", "--source", archive.as_uri(), "--md5", md5_of(archive), "--out", str(raw))
    run_with_umask(umask, "prepare", "cifar10", "--raw", str(raw), "--out", str(out / "prepared" / "cifar10"))
    rendered = out / "results" / "demo"
    config = str(REPO / "config.yaml")
    run_with_umask(
        umask, "render", "--config", config, "--experiment", "demo", "--root", str(out), "--out", str(rendered)
    )
    run_with_umask(umask, "pipeline", "sync", "--config", config, "--dvc-yaml", str(out / "dvc.yaml"))
    assert_modes_follow(
        umask,
        out,
        [
            "raw/cifar-10-python.tar.gz",
            "prepared/cifar10/",
            *(f"prepared/cifar10/{file}" for file in ("train.npz", "test.npz", "meta.json")),
            "results/demo/tables/results.md",
            "results/demo/tables/results.csv",
            "results/demo/figures/curves.png",
            "dvc.yaml",
        ],
    )


TRAIN = ["--model", "resnet8", "--schedule", "demo", "--set", "compile=off", "--set", "iterations=80"]
TRAIN += ["--set", "milestones=[60]", "--set", "eval_every=40", "--set", "checkpoint_every=5"]


@pytest.mark.slow
@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask{u:03o}")
def test_run_files_checkpoint_and_model_follow_the_umask(umask: int, digits_dir: Path, tmp_path: Path) -> None:
    """checkpoint.pt (of a run stopped by SIGTERM), then model.pt, history.csv, epochs.csv (resumed to the end),
    metrics.json and details.json (evaluated), each written by a process with this umask."""
    run = tmp_path / "run"
    process = kill_at_teardown(
        subprocess.Popen(
            [str(BIN / "resnet-repro"), "train", *TRAIN, "--data", str(digits_dir), "--out", str(run)],
            env=cli_env(),
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: os.umask(umask),
        )
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr  # stopped with its checkpoint kept
    assert stat.S_IMODE((run / "checkpoint.pt").stat().st_mode) == 0o666 & ~umask

    run_with_umask(umask, "train", *TRAIN, "--data", str(digits_dir), "--out", str(run))
    run_with_umask(umask, "evaluate", "--run", str(run), "--data", str(digits_dir))
    assert not (run / "checkpoint.pt").exists()
    assert_modes_follow(umask, run, ["model.pt", "history.csv", "epochs.csv", "metrics.json", "details.json"])


# ------------------------------------------------------------------------------------------------ disk full
def _can_mount_tmpfs() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and user namespaces (a private 64 KiB tmpfs)")
@pytest.mark.parametrize("step", ["fetch", "prepare"])
def test_full_disk_is_one_line_and_leaves_nothing(step: str, tmp_path: Path) -> None:
    """The output folder is a 64 KiB tmpfs (in a mount namespace of the command's own): the download (400 kB)
    or the prepared digits (130 kB) cannot fit."""
    archive = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = {
        "fetch": f"fetch cifar10 --source {shlex.quote(str(archive))} --md5 {md5_of(archive)} --out $1/raw/a.tar.gz",
        "prepare": "prepare digits --out $1/prepared/digits",
    }[step]
    script = (
        'mount -t tmpfs -o size=64k tmpfs "$1" || exit 99; '
        f"{shlex.quote(str(BIN / 'resnet-repro'))} {command}; status=$?; "
        'echo "status=$status"; find "$1" -mindepth 1 -type f; exit 0'
    )
    result = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(disk)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["status=2"], result.stdout  # and no file at all (a .part or staging one)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), result.stderr
    assert "disk full" in lines[0] and "nothing half-written was kept" in lines[0]


# ------------------------------------------------------------------------------------ the two kinds of errors
def render_with(fault: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`resnet-repro render` of the demo experiment in a real process whose table_markdown runs `fault` first."""
    program = (
        "import sys\n"
        "import resnet_repro.render.formats as formats\n"
        "def broken(table):\n"
        f"    {fault}\n"
        "formats.table_markdown = broken\n"
        "from resnet_repro.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    config = str(REPO / "config.yaml")
    return subprocess.run(
        [sys.executable, "-c", program, "render", "--config", config, "--experiment", "demo", "--root", str(tmp_path)],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_bug_in_rendering_keeps_its_traceback_and_asks_for_a_report(tmp_path: Path) -> None:
    """A KeyError raised by a defect inside a rendering function is not taken for a user error."""
    result = render_with("return {}['injected_missing_column']", tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", result.stderr
    assert "in broken" in result.stderr and "KeyError: 'injected_missing_column'" in result.stderr
    assert lines[-1] == BUG_REPORT
    assert (
        "please report this as a bug with the traceback above" in BUG_REPORT and "resnet-repro --version" in BUG_REPORT
    )
    assert not [line for line in lines if line.startswith("error:")]


def test_an_interrupt_stays_one_line(tmp_path: Path) -> None:
    result = render_with("raise KeyboardInterrupt", tmp_path)
    assert result.returncode == 130
    assert result.stderr == "error: interrupted\n"


def _model_file_naming(tmp_path: Path, name: str) -> Path:
    """A model.pt in the trainer's format whose model is `name` (as from another version of the catalogue)."""
    run = tmp_path / "foreign"
    run.mkdir()
    saved = {"format": 1, "model_name": name, "num_classes": 10, "in_channels": 1, "image_size": 8}
    torch.save({**saved, "model_options": {}, "model": {}}, run / "model.pt")
    return run


def _bad_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["experiments"]["demo"]["seeds"] = "zero"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    schema = tmp_path / SCHEMA_PATH
    schema.parent.mkdir(parents=True)
    shutil.copy(REPO / SCHEMA_PATH, schema)
    return path


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(text)
    return path


def _settings_with(tmp_path: Path, **settings: object) -> Path:
    """A run's settings.json as `resnet-repro plan` writes it, with `settings` changed."""
    spec = RunSpec("digits", "resnet8", 0, resolve_settings("demo"))
    values = spec.to_dict()
    values["settings"].update(settings)
    return _written(tmp_path, json.dumps(values))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown model (command line)", "unknown model 'resnet21'"),
        ("unknown model (in model.pt)", "unknown model 'resnet21'"),
        ("unknown model option", "does not take the options ['width']"),
        ("bad config value", "experiments.demo.seeds"),
        ("missing config", "config file not found"),
        ("missing download source", "source file not found"),
        ("missing devkit archive", "cannot read archive"),
        ("missing run", "cannot load checkpoint"),
        ("missing settings file", "settings file not found"),
        ("settings file not JSON", "not valid JSON"),
        ("bad value in a settings file", "settings.json: setting 'lr' must be > 0"),
        ("a settings file and a model", "--settings names the whole run; drop --model"),
    ],
)
def test_user_errors_are_one_line(case: str, message: str, digits_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    run = ["--data", str(digits_dir), "--out", str(tmp_path / "run")]
    args = {
        "unknown model (command line)": lambda: ["train", "--model", "resnet21", *run],
        "unknown model (in model.pt)": lambda: [
            "evaluate",
            "--run",
            str(_model_file_naming(tmp_path, "resnet21")),
            *run[:2],
        ],
        "unknown model option": lambda: ["train", "--model", "resnet8", "--set", "model_options={width: 4}", *run],
        "bad config value": lambda: ["pipeline", "check", "--config", str(_bad_config(tmp_path))],
        "missing config": lambda: ["render", "--config", str(missing / "config.yaml"), "--experiment", "demo"],
        "missing download source": lambda: [
            "fetch",
            "cifar10",
            "--source",
            str(missing / "a.tar.gz"),
            "--out",
            str(tmp_path),
        ],
        "missing devkit archive": lambda: [
            "imagenet-val-layout",
            *("--devkit", str(missing / "devkit.tar.gz"), "--images", str(missing), "--out", str(tmp_path / "val")),
        ],
        "missing run": lambda: ["evaluate", "--run", str(missing), "--data", str(digits_dir)],
        "missing settings file": lambda: ["train", "--settings", str(missing / "settings.json"), *run],
        "settings file not JSON": lambda: ["train", "--settings", str(_written(tmp_path, "{half")), *run],
        "bad value in a settings file": lambda: ["train", "--settings", str(_settings_with(tmp_path, lr=-1)), *run],
        "a settings file and a model": lambda: [
            "train",
            "--settings",
            str(_settings_with(tmp_path)),
            "--model",
            "resnet8",
            *run,
        ],
    }[case]()
    result = run_with_umask(0o022, *args, check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
