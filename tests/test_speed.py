"""The trainer's fast path (device-resident data, bf16 autocast, channels-last, compile) must not change results
beyond noise, the default CPU path must stay bitwise reproducible, and the benchmark script runs (the GPU check
script: tests/test_gpu_check.py).

CPU tests pin torch to one thread while they run: on a shared 2-core machine, two OpenMP threads that wait for each
other at every operation's barrier are several times slower than one (the results are the same either way).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_repro.paths import MODEL_FILE
from resnet_repro.prepare import prepare
from resnet_repro.runfiles import TIMING_FIELDS
from resnet_repro.runspec import RunSpec
from resnet_repro.runtime import CPU_COMPILE_MIN_ITERATIONS, choose_runtime, has_fast_bf16
from resnet_repro.settings import resolve_settings
from resnet_repro.train import StepRunner, build_training, train

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")

# A short digits schedule: 150 iterations of 64 (about 7 epochs of the 1,438 training images) reach 1-4% test
# error on the 359 test images.
SHORT = {"iterations": 150, "milestones": [100, 130], "eval_every": 150}
FAST = {"precision": "bf16", "channels_last": "on"}  # forced, so that CPUs without fast bf16 test it too
PLAIN = {"precision": "fp32", "channels_last": "off", "compile": "off"}
# Tolerance on the mean test error of two seeds, fast path minus fp32 path. On 359 test images one image is 0.28
# points; at about 2.5% error, seed-to-seed noise of one run is about 0.8 points (the binomial sd is 0.82), so the
# difference of two 2-seed means has an sd of about 0.8 points. 3 points is over 3.5 sd: a false alarm is
# practically impossible, while a fast path that learns worse (a broken bf16 or layout path) shows up at once.
ERROR_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def speed_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("digits", tmp_path_factory.mktemp("speed") / "digits")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(data: Path, out: Path, seed: int, device: str = "cpu", **overrides: object) -> list[dict[str, str]]:
    settings = resolve_settings("demo", {**SHORT, **overrides})
    train(RunSpec("digits", "resnet20", seed, settings), data, out, device)
    with open(out / "history.csv") as handle:
        return list(csv.DictReader(handle))


def mean_final(histories: list[list[dict[str, str]]], field: str) -> float:
    return sum(float(h[-1][field]) for h in histories) / len(histories)


def assert_agree(fast: list[list[dict[str, str]]], plain: list[list[dict[str, str]]]) -> None:
    for history in fast + plain:
        assert float(history[-1]["test_error"]) < 0.10, "a run did not learn; the comparison would mean nothing"
    difference = mean_final(fast, "test_error") - mean_final(plain, "test_error")
    assert abs(difference) <= ERROR_TOLERANCE, (difference, fast, plain)
    # Train loss over the last interval: same learning, same level (loose: it averages a whole noisy interval).
    assert abs(mean_final(fast, "train_loss") - mean_final(plain, "train_loss")) < 0.15


@pytest.mark.slow
def test_fast_path_agrees_with_fp32(speed_digits: Path, tmp_path: Path, one_thread: None) -> None:
    fast = [run(speed_digits, tmp_path / f"fast{seed}", seed, **FAST) for seed in (0, 1)]
    plain = [run(speed_digits, tmp_path / f"plain{seed}", seed, **PLAIN) for seed in (0, 1)]
    assert_agree(fast, plain)


@pytest.mark.slow
def test_default_cpu_path_is_bitwise_reproducible(speed_digits: Path, tmp_path: Path, one_thread: None) -> None:
    # The default settings on CPU: bf16 + channels-last where the CPU has fast bf16, else fp32; eager either way.
    short = {"iterations": 40, "milestones": [25, 35], "eval_every": 20}  # crosses an epoch (22 steps) and a decay
    for name in ("a", "b"):
        run(speed_digits, tmp_path / name, 0, **short)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    for table, rows in (("history.csv", 2), ("epochs.csv", 1)):
        learned = [without_timing(tmp_path / name / table) for name in ("a", "b")]
        assert learned[0] == learned[1] and len(learned[0]) == rows


def without_timing(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return [
            {k: v for k, v in row.items() if k not in TIMING_FIELDS | {"images_per_s"}}
            for row in csv.DictReader(handle)
        ]


def test_compile_auto_only_on_long_runs() -> None:
    # CPU compile takes minutes, so auto compiles only CPU runs of >= CPU_COMPILE_MIN_ITERATIONS (chosen by
    # measurement; test_trainer_core.py checks both thresholds). The digits runs of these tests stay eager.
    long = resolve_settings("cifar_paper")
    assert not choose_runtime(resolve_settings("demo", SHORT), torch.device("cpu")).compile
    assert choose_runtime(long, torch.device("cpu")).compile == (long.iterations >= CPU_COMPILE_MIN_ITERATIONS)
    assert choose_runtime(long, torch.device("cpu")).compile  # the paper's 64k iterations pay for it on CPU too
    assert not choose_runtime(resolve_settings("cifar_short"), torch.device("cpu")).compile  # 2,000: they do not
    assert choose_runtime(long, torch.device("cuda")).compile
    assert choose_runtime(long, torch.device("cuda")).compile_mode == "reduce-overhead"
    assert not choose_runtime(resolve_settings("demo"), torch.device("cuda")).compile


def test_step_runner_matches_epoch_randomness(speed_digits: Path) -> None:
    # The step's batch is the (seed, epoch) permutation, cropped and flipped: resuming mid-epoch depends on it.
    from resnet_repro.prepared import load_prepared

    settings = resolve_settings("demo", PLAIN)
    model, optimizer, data, runtime = build_training(
        "resnet20", settings, load_prepared(speed_digits), torch.device("cpu"), 0
    )
    stepper = StepRunner(model, optimizer, data, runtime, seed=3, batch=64)
    order, offsets, flips = data.epoch_randomness(3, 1)
    index = order[64:128]
    x, y = stepper.batch_at(stepper.steps_per_epoch + 1)
    expected_x, expected_y = data.batch(index, offsets[index], flips[index])
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def script_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    return env


@pytest.mark.slow
def test_benchmark_quick_prints_table(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--device", "cpu"]
    result = subprocess.run(
        [*command, "--threads", "1", "--no-jpeg", "--json", str(tmp_path / "bench.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=script_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| resnet20" in result.stdout and "ratio b/a" in result.stdout and "| data only" in result.stdout
    saved = json.loads((tmp_path / "bench.json").read_text())
    row = saved["models"]["resnet20"]
    assert row["classic"] > 0 and row["project"] > 0 and row["ratio"] > 0
    assert saved["environment"]["torch"] == torch.__version__ and saved["environment"]["threads"] == 1


# ---------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@needs_cuda
def test_cuda_fast_compiled_path_agrees_with_fp32(speed_digits: Path, tmp_path: Path) -> None:
    # The default for long CUDA runs: bf16, channels-last, compiled with CUDA graphs (reduce-overhead).
    fast = [run(speed_digits, tmp_path / f"fast{s}", s, "cuda", compile="on", **FAST) for s in (0, 1)]
    for seed in (0, 1):  # compiled to the end: a compile that fell back to eager would compare eager with eager
        runtime = torch.load(tmp_path / f"fast{seed}" / MODEL_FILE, weights_only=True)["runtime"]
        assert runtime["compile"] and runtime["compile_fallback"] is None, runtime["note"]
    plain = [run(speed_digits, tmp_path / f"plain{s}", s, "cuda", **PLAIN) for s in (0, 1)]
    assert_agree(fast, plain)


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_data_stays_on_device(speed_digits: Path) -> None:
    from resnet_repro.prepared import load_prepared

    settings = resolve_settings("demo", {"compile": "off"})
    device = torch.device("cuda")
    model, optimizer, data, runtime = build_training("resnet20", settings, load_prepared(speed_digits), device, 0)
    assert runtime.bf16 == runtime.channels_last == has_fast_bf16(device)  # bf16 from Ampere on, fp32 before
    for tensor in (data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std):
        assert tensor.device.type == "cuda"
    stepper = StepRunner(model, optimizer, data, runtime, seed=0, batch=64)
    stepper.run(0, 2, settings.lr_at)
    torch.cuda.synchronize()
    # No step may wait for the device (no .item(), no device-to-host copy), including across an epoch boundary.
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = stepper.run(2, stepper.steps_per_epoch + 2, settings.lr_at)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert losses.device.type == "cuda" and torch.isfinite(losses).all()


@pytest.mark.gpu
@needs_cuda
def test_cuda_cudnn_benchmark_and_fused_optimizer(speed_digits: Path) -> None:
    from resnet_repro.prepared import load_prepared

    settings = resolve_settings("demo")
    _, optimizer, _, _ = build_training("resnet20", settings, load_prepared(speed_digits), torch.device("cuda"), 0)
    assert torch.backends.cudnn.benchmark
    assert optimizer.defaults.get("fused")
