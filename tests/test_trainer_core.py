"""One trainer core for both trainers: no logic copied between them, the runtime choice, and a compile that fails
falling back to eager with the provenance saying so."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from resnet_repro import core
from resnet_repro.core import CPU_COMPILE_MIN_ITERATIONS, CUDA_COMPILE_MIN_ITERATIONS, choose_runtime
from resnet_repro.runfiles import TIMING_FIELDS
from resnet_repro.settings import resolve_settings
from resnet_repro.train import RunSpec, train

TRAINERS = ("train.py", "distributed.py")
SHARED_BLOCK = 6  # consecutive normalized lines that count as copied logic


def normalized_lines(path: Path) -> list[str]:
    """The code lines of a file, stripped; blank lines and comment lines left out."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def shared_blocks(a: list[str], b: list[str], size: int) -> list[list[str]]:
    windows = {tuple(b[i : i + size]) for i in range(len(b) - size + 1)}
    return [a[i : i + size] for i in range(len(a) - size + 1) if tuple(a[i : i + size]) in windows]


def test_shared_blocks_finds_a_copy() -> None:
    code = [f"x{i} = {i}" for i in range(10)]
    assert shared_blocks(code, ["y = 0", *code[2:8], "z = 1"], SHARED_BLOCK) == [code[2:8]]
    assert shared_blocks(code, code[2:7], SHARED_BLOCK) == []


def test_the_trainers_share_no_block_of_code() -> None:
    # What both trainers need lives in resnet_repro.core; a block copied between them is logic that can drift.
    train_py, distributed_py = (normalized_lines(REPO / "src" / "resnet_repro" / name) for name in TRAINERS)
    copied = shared_blocks(train_py, distributed_py, SHARED_BLOCK)
    assert not copied, "\n\n".join("\n".join(block) for block in copied)


def test_compile_auto_thresholds() -> None:
    for device, threshold in (("cpu", CPU_COMPILE_MIN_ITERATIONS), ("cuda", CUDA_COMPILE_MIN_ITERATIONS)):
        below = resolve_settings("demo", {"iterations": threshold - 1, "milestones": []})
        at = resolve_settings("demo", {"iterations": threshold, "milestones": []})
        assert not choose_runtime(below, torch.device(device)).compile
        assert choose_runtime(at, torch.device(device)).compile
        assert "compiled" in choose_runtime(at, torch.device(device)).note
    off = resolve_settings("cifar_paper", {"compile": "off"})
    assert not choose_runtime(off, torch.device("cuda")).compile
    assert choose_runtime(off, torch.device("cuda")).fused_sgd
    assert not choose_runtime(off, torch.device("cpu")).fused_sgd


# ------------------------------------------------------------------------------------------- compile fallback
SHORT = ["--model", "resnet8", "--schedule", "demo", "--set", "iterations=60", "--set", "eval_every=30"]
SHORT_SETTINGS = {"iterations": 60, "eval_every": 30, "precision": "fp32", "channels_last": "off"}


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in csv.DictReader(handle)]


def test_compile_failure_falls_back_to_eager(digits_dir: Path, tmp_path: Path) -> None:
    """torch.compile raising (here: an unknown mode) costs one log line; the run completes eager, all of it."""
    eager, failed = tmp_path / "eager", tmp_path / "failed"
    run_cli("train", *SHORT, "--set", "compile=off", "--data", str(digits_dir), "--out", str(eager))
    result = run_cli(
        "train", *SHORT, "--set", "compile=on", "--data", str(digits_dir), "--out", str(failed),
        RESNET_REPRO_COMPILE_MODE="no-such-mode",
    )  # fmt: skip
    fallback = [line for line in result.stderr.splitlines() if "torch.compile failed" in line]
    assert len(fallback) == 1 and "continues eager from iteration 0" in fallback[0], result.stderr
    assert "Traceback" not in result.stderr and "compiled and ran" not in result.stderr
    assert rows(failed / "history.csv") == rows(eager / "history.csv")  # same iterations, same learning
    assert rows(failed / "epochs.csv") == rows(eager / "epochs.csv")
    runtime = torch.load(failed / "model.pt", weights_only=True)["runtime"]
    assert runtime["compile"] is False and "no-such-mode" in runtime["compile_fallback"]
    assert "eager (compile (no-such-mode) failed at iteration 0" in runtime["note"]
    run_cli("evaluate", "--run", str(failed), "--data", str(digits_dir))
    details = json.loads((failed / "details.json").read_text())
    assert "failed" in details["provenance"]["train_runtime"]


def test_failure_in_the_first_compiled_step_redoes_it_eagerly(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled step raising (as a failed Inductor build or CUDA-graph capture does at the first step): the
    step is taken again eagerly from the same state, so the run is the eager run, bit for bit."""
    compiled_calls = []

    def compile_that_fails_when_run(module, **options):
        def compiled(x):
            compiled_calls.append(len(x))
            module(x)  # the failure comes after a forward pass has updated BN's running statistics
            raise RuntimeError("CUDA graph capture failed\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_run)
    lines: list[str] = []

    class Log(core.ProgressLog):
        def line(self, text: str) -> None:
            lines.append(text)

    models = {}
    for name, compile_setting in (("eager", "off"), ("fallback", "on")):
        settings = resolve_settings("demo", {**SHORT_SETTINGS, "compile": compile_setting})
        train(RunSpec("resnet8", 0, settings, digits_dir, tmp_path / name, "cpu"), log=Log(60))
        models[name] = torch.load(tmp_path / name / "model.pt", weights_only=True)
    assert compiled_calls == [64]  # one compiled step tried, then eager for good
    assert [line for line in lines if "torch.compile failed" in line] == [
        "torch.compile failed (RuntimeError: CUDA graph capture failed); training continues eager from iteration 0"
    ]
    eager, fallback = models["eager"]["model"], models["fallback"]["model"]
    assert all(torch.equal(eager[key], fallback[key]) for key in eager)
    assert rows(tmp_path / "fallback" / "history.csv") == rows(tmp_path / "eager" / "history.csv")
    assert models["fallback"]["runtime"]["compile_fallback"] == "RuntimeError: CUDA graph capture failed"
    assert models["eager"]["runtime"]["compile"] is False and models["eager"]["runtime"]["compile_fallback"] is None


@pytest.mark.slow
def test_compiled_cpu_runs_are_bitwise_reproducible(digits_dir: Path, tmp_path: Path) -> None:
    """The determinism guarantee covers compiled CPU runs too: two processes, same seed, settings and threads
    (here 2), torch.compile on: the same weights, bit for bit, and the same learning curves."""
    for name in ("a", "b"):
        run_cli(
            "train", *SHORT, "--set", "compile=on", "--data", str(digits_dir), "--out", str(tmp_path / name),
            OMP_NUM_THREADS="2", timeout=900,
        )  # fmt: skip
    runtime = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["runtime"]
    assert runtime["compile"] is True and not runtime.get("compile_fallback"), runtime
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    for table in ("history.csv", "epochs.csv"):
        assert rows(tmp_path / "a" / table) == rows(tmp_path / "b" / table)
