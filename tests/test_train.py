"""Training on real (bundled) data: it learns, it resumes bit for bit after SIGTERM, it stops on NaN."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, cli_env, kill_at_teardown, run_cli

from resnet_repro.runfiles import TIMING_FIELDS


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in csv.DictReader(path.open())]


def test_training_on_digits_learns(digits_dir: Path, tmp_path: Path) -> None:
    run_cli(
        "train",
        "--model",
        "resnet8",
        "--data",
        str(digits_dir),
        "--out",
        str(tmp_path / "run"),
        "--schedule",
        "demo",
        "--set",
        "iterations=150",
        "--set",
        "milestones=[100]",
    )
    run_cli("evaluate", "--run", str(tmp_path / "run"), "--data", str(digits_dir))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"test_error", "top5_error", "test_loss", "train_error", "train_loss", "parameters"}
    metrics |= json.loads((tmp_path / "run" / "details.json").read_text())
    assert metrics["test_error"] < 0.15  # chance is 0.90
    assert metrics["parameters"] == 75002
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == 359
    assert set(metrics["provenance"]) >= {"package_version", "git_commit", "torch_version", "config_hash", "seed"}
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["iteration"]) for r in history] == [50, 100, 150]
    assert float(history[-1]["train_error"]) < float(history[0]["train_error"])
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # removed once the result is written


TRAIN_ARGS = [
    "--model",
    "resnet8",
    "--schedule",
    "demo",
    "--set",
    "iterations=240",
    "--set",
    "milestones=[160]",
    "--set",
    "eval_every=40",
    "--set",
    "check_every=10",
    "--set",
    "checkpoint_every=40",
]


def test_sigterm_then_resume_is_bitwise_equal(digits_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "uninterrupted"
    run_cli("train", *TRAIN_ARGS, "--data", str(digits_dir), "--out", str(reference))

    interrupted = tmp_path / "interrupted"
    command = [str(BIN / "resnet-repro"), "train", *TRAIN_ARGS, "--data", str(digits_dir), "--out", str(interrupted)]
    process = kill_at_teardown(
        subprocess.Popen(command, env=cli_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    )
    deadline = time.monotonic() + 120
    while not (interrupted / "history.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "received SIGTERM" in stderr and (interrupted / "checkpoint.pt").exists()
    assert not (interrupted / "model.pt").exists()

    resumed = run_cli("train", *TRAIN_ARGS, "--data", str(digits_dir), "--out", str(interrupted))
    assert "resuming resnet8 seed 0 from iteration" in resumed.stderr
    assert (interrupted / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    assert _rows(interrupted / "history.csv") == _rows(reference / "history.csv")
    assert _rows(interrupted / "epochs.csv") == _rows(reference / "epochs.csv")


def test_same_seed_gives_identical_checkpoints_and_metrics(digits_dir: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        run_cli(
            "train",
            "--model",
            "plain8",
            "--schedule",
            "demo",
            "--set",
            "iterations=60",
            "--set",
            "eval_every=30",
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / name),
        )
        run_cli("evaluate", "--run", str(tmp_path / name), "--data", str(digits_dir))
        outputs.append(((tmp_path / name / "model.pt").read_bytes(), (tmp_path / name / "metrics.json").read_text()))
    assert outputs[0] == outputs[1]


def test_checkpoint_of_other_settings_is_not_resumed(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = [*TRAIN_ARGS[:-2], "--set", "checkpoint_every=10", "--data", str(digits_dir), "--out", str(out)]
    process = kill_at_teardown(
        subprocess.Popen(
            [str(BIN / "resnet-repro"), "train", *first], env=cli_env(), stderr=subprocess.PIPE, start_new_session=True
        )
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    result = run_cli(
        "train",
        "--model",
        "resnet8",
        "--schedule",
        "demo",
        "--set",
        "iterations=20",
        "--set",
        "lr=0.05",
        "--data",
        str(digits_dir),
        "--out",
        str(out),
    )
    assert "belongs to different settings" in result.stderr


def test_nan_loss_stops_with_a_clear_message(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--model",
        "fc20",
        "--schedule",
        "demo",
        "--set",
        "lr=1e30",
        "--set",
        "check_every=5",
        "--set",
        "checkpoint_every=5",
        "--data",
        str(digits_dir),
        "--out",
        str(out),
        check=False,
    )
    assert result.returncode == 3, result.stderr
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "loss became" in line[0] and "at iteration" in line[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "model.pt").exists()
    if (out / "checkpoint.pt").exists():  # any checkpoint kept was saved before the divergence
        saved = torch.load(out / "checkpoint.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def run_on_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run `resnet-repro ARGS` with stderr on a pseudo-terminal of 100 columns; return its status and what it drew."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = kill_at_teardown(
        subprocess.Popen(
            [str(BIN / "resnet-repro"), *args],
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=side,
            start_new_session=True,
        )
    )
    os.close(side)
    drawn = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([main], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the process closed the terminal (it exited)
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(main)
    return process.wait(timeout=60), drawn.decode(errors="replace")


def test_progress_bar_on_a_terminal_plain_lines_otherwise(digits_dir: Path, tmp_path: Path) -> None:
    args = ["train", "--model", "resnet8", "--schedule", "demo", "--set", "iterations=100", "--data", str(digits_dir)]
    status, drawn = run_on_terminal([*args, "--out", str(tmp_path / "tty")])
    assert status == 0, drawn
    assert re.search(r"\d+/100 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ ?[a-z]*it/s", drawn), drawn  # count, elapsed<ETA, rate
    assert "|" in drawn and "100/100" in drawn and "err " in drawn and "test err" in drawn, drawn
    assert "iter 50/100 epoch" in drawn and "iter 100/100 epoch" in drawn, drawn  # the evaluation lines, above it

    plain = run_cli(*args, "--out", str(tmp_path / "log"))
    lines = plain.stderr.splitlines()
    assert [line.split(" epoch")[0] for line in lines if line.startswith("iter ")] == ["iter 50/100", "iter 100/100"]
    assert "it/s" not in plain.stderr and "\r" not in plain.stderr and "|" not in plain.stderr.replace(" | ", "")


def test_checkpoints_cannot_run_code(tmp_path: Path, digits_dir: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 1, "evil": Evil()}, run / "model.pt")
    result = run_cli("evaluate", "--run", str(run), "--data", str(digits_dir), check=False)
    assert result.returncode == 2 and "cannot load checkpoint" in result.stderr and "owned" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet21", "--data", "x", "--out", "y"], "unknown model 'resnet21'"),
        (["train", "--model", "resnet8", "--data", "/nonexistent", "--out", "y"], "not a prepared dataset"),
        (["train", "--model", "resnet8", "--data", "x", "--out", "y", "--set", "lr"], "--set expects key=value"),
        (["train", "--model", "resnet8", "--data", "x", "--out", "y", "--set", "lr=-1"], "'lr' must be > 0"),
        (["train", "--model", "resnet8", "--data", "x", "--out", "y", "--set", "lrr=1"], "unknown setting 'lrr'"),
        (["train", "--model", "resnet8", "--data", "x", "--out", "y", "--schedule", "nope"], "unknown schedule"),
        (["evaluate", "--run", "/nonexistent", "--data", "x"], "cannot load checkpoint"),
        (["prepare", "cifar10", "--out", "z"], "needs --raw"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_subcommand_has_help() -> None:
    for command in ("models", "fetch", "prepare", "train", "evaluate", "pipeline"):
        assert "usage: resnet-repro" in run_cli(command, "--help").stdout
    assert "resnet110" in run_cli("models").stdout
