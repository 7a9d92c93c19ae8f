"""One trainer core for both trainers: no logic copied between them, the runtime choice, and a compile that fails
falling back to eager with the provenance saying so."""

from __future__ import annotations

import ast
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env, kill_at_teardown, run_cli

from resnet_repro import runtime as runtime_module
from resnet_repro.checkpoint import Checkpoints
from resnet_repro.device_data import DeviceData
from resnet_repro.distributed import rank_seed
from resnet_repro.errors import ConfigError
from resnet_repro.modelfile import load_trained_model
from resnet_repro.prepared import load_prepared
from resnet_repro.progress import ProgressLog
from resnet_repro.runfiles import TIMING_FIELDS
from resnet_repro.runspec import RunSpec
from resnet_repro.runtime import (
    CPU_COMPILE_MIN_ITERATIONS,
    CUDA_COMPILE_MIN_ITERATIONS,
    choose_runtime,
    configure_backends,
)
from resnet_repro.settings import resolve_settings
from resnet_repro.state import RunState
from resnet_repro.train import build_training, train
from resnet_repro.world import SINGLE, Collective

TRAINERS = ("train.py", "distributed.py")
SHARED_BLOCK = 6  # consecutive normalized lines that count as copied logic


def normalized_lines(path: Path) -> list[str]:
    """The code lines of a file, stripped; blank lines, comment lines and single-line imports left out (two modules
    that import the same names share no logic)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "import ", "from "))]


def shared_blocks(a: list[str], b: list[str], size: int) -> list[list[str]]:
    windows = {tuple(b[i : i + size]) for i in range(len(b) - size + 1)}
    return [a[i : i + size] for i in range(len(a) - size + 1) if tuple(a[i : i + size]) in windows]


def test_shared_blocks_finds_a_copy() -> None:
    code = [f"x{i} = {i}" for i in range(10)]
    assert shared_blocks(code, ["y = 0", *code[2:8], "z = 1"], SHARED_BLOCK) == [code[2:8]]
    assert shared_blocks(code, code[2:7], SHARED_BLOCK) == []


def repeated_blocks(files: dict[str, list[str]], size: int) -> dict[tuple[str, ...], list[str]]:
    """Each window of `size` normalized lines found more than once, within a file or across files."""
    places: dict[tuple[str, ...], list[str]] = {}
    for name, lines in files.items():
        for i in range(len(lines) - size + 1):
            places.setdefault(tuple(lines[i : i + size]), []).append(name)
    return {block: where for block, where in places.items() if len(where) > 1}


def test_repeated_blocks_finds_copies_within_and_across_files() -> None:
    code = [f"x{i} = {i}" for i in range(8)]
    assert list(repeated_blocks({"a": code, "b": ["y = 0", *code[1:7]]}, SHARED_BLOCK).values()) == [["a", "b"]]
    assert list(repeated_blocks({"a": [*code[:6], "z = 1", *code[:6]]}, SHARED_BLOCK).values()) == [["a", "a"]]
    assert repeated_blocks({"a": code, "b": code[:5]}, SHARED_BLOCK) == {}


def test_no_block_of_six_lines_repeats_in_the_package() -> None:
    # Data tables live in YAML (schedules, references), so every repeated block in src/ would be copied logic.
    package = REPO / "src" / "resnet_repro"
    files = {str(path.relative_to(package)): normalized_lines(path) for path in sorted(package.rglob("*.py"))}
    copied = repeated_blocks(files, SHARED_BLOCK)
    assert not copied, "\n\n".join(f"{where}:\n" + "\n".join(block) for block, where in copied.items())


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


def train_eager_and_with_compile(digits_dir: Path, tmp_path: Path) -> tuple[dict[str, dict], list[str]]:
    """The same short run with compile off ("eager") and on ("fallback", through whatever torch.compile is
    patched to): each run's model.pt payload, and the log lines of both."""
    lines: list[str] = []

    class Log(ProgressLog):
        def line(self, text: str) -> None:
            lines.append(text)

    models = {}
    for name, compile_setting in (("eager", "off"), ("fallback", "on")):
        settings = resolve_settings("demo", {**SHORT_SETTINGS, "compile": compile_setting})
        train(RunSpec("digits", "resnet8", 0, settings), digits_dir, tmp_path / name, "cpu", log=Log(60))
        models[name] = torch.load(tmp_path / name / "model.pt", weights_only=True)
    return models, lines


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
    models, lines = train_eager_and_with_compile(digits_dir, tmp_path)
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


# ------------------------------------------------------------------------------------- against the previous trainer
# The trainer core as it stood before it was restructured into runtime/world/progress/state/core modules. The
# restructuring must not change a bit of what a run computes: the same run through both gives the same weights,
# BN statistics and learning curves.
# Since then it was restructured again (the run core split into step, checkpoint and model-file parts, one RunSpec
# per run): the trainer as it stood before that, too.
PREVIOUS_TRAINER = "cf5a823281c79632c597fc0a5e905da5abd4ec19"
BEFORE_RUNSPEC = "22c5be6"
PREVIOUS_TRAINERS = [PREVIOUS_TRAINER, BEFORE_RUNSPEC]


def _previous_source(tmp_path: Path, revision: str = PREVIOUS_TRAINER) -> Path:
    """A previous trainer's src/ (from git), or skip where the history is not there (a shallow clone)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if commit.returncode != 0:
        pytest.skip(f"commit {revision[:7]} is not in this clone's history (shallow clone?)")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit.stdout.strip(), "src"], capture_output=True, check=True
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    return tmp_path / "src"


@pytest.mark.slow
@pytest.mark.parametrize("revision", PREVIOUS_TRAINERS)
def test_the_restructured_trainer_computes_what_the_previous_one_did(
    digits_dir: Path, tmp_path: Path, revision: str
) -> None:
    previous_src = _previous_source(tmp_path / "previous", revision)
    args = ["train", "--model", "resnet8", "--schedule", "demo", "--set", "iterations=90", "--set", "eval_every=30",
            "--set", "check_every=10", "--data", str(digits_dir)]  # fmt: skip
    run_cli(*args, "--out", str(tmp_path / "now"))
    previous = subprocess.run(
        [sys.executable, "-m", "resnet_repro.cli", *args, "--out", str(tmp_path / "before")],
        env=cli_env(PYTHONPATH=str(previous_src)), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert previous.returncode == 0, previous.stderr
    now, before = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("now", "before"))
    assert now["model"].keys() == before["model"].keys()
    assert all(torch.equal(now["model"][key], before["model"][key]) for key in now["model"])
    assert now["runtime"]["note"] == before["runtime"]["note"]
    for table in ("history.csv", "epochs.csv"):
        assert rows(tmp_path / "now" / table) == rows(tmp_path / "before" / table)


def test_a_failure_while_cuda_graphs_record_is_retaken_eagerly(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA-graph trees warm up on the first compiled call and record on the second: a capture failure there is
    inside the guarded window too. Here the compiled module (a stand-in that runs eagerly) fails on its second call,
    with the window of a CUDA-graph runtime; the step is undone and retaken: the run is the eager run, bit for bit."""
    calls = []

    def compile_that_fails_when_recording(module, **options):
        def compiled(x):
            calls.append(len(x))
            out = module(x)  # the warm-up runs the step; the recording's forward updates BN statistics, then fails
            if len(calls) == 2:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            return out

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_recording)
    monkeypatch.setitem(runtime_module.GUARDED_STEPS, "other", runtime_module.GUARDED_STEPS["cudagraphs"])
    models, lines = train_eager_and_with_compile(digits_dir, tmp_path)
    assert calls == [64, 64]  # the warm-up, then the recording that failed; eager from then on
    assert [line for line in lines if "torch.compile failed" in line] == [
        "torch.compile failed (RuntimeError: CUDA error: operation not permitted when stream is capturing); "
        "training continues eager from iteration 1"
    ]
    eager, fallback = models["eager"]["model"], models["fallback"]["model"]
    assert all(torch.equal(eager[key], fallback[key]) for key in eager)
    assert rows(tmp_path / "fallback" / "history.csv") == rows(tmp_path / "eager" / "history.csv")


def test_the_guarded_window_covers_recording_only_where_cuda_graphs_record() -> None:
    long_run = resolve_settings("cifar_paper", {"compile": "on"})
    assert choose_runtime(long_run, torch.device("cuda")).guarded_steps == 3  # warm-up, record, first replay
    assert choose_runtime(long_run, torch.device("cpu")).guarded_steps == 1
    assert choose_runtime(resolve_settings("cifar_paper", {"compile": "off"}), torch.device("cuda")).guarded_steps == 0


def test_bf16_only_where_the_device_runs_it_natively() -> None:
    auto = resolve_settings("cifar_paper", {})
    volta, ampere = (choose_runtime(auto, torch.device("cuda"), cuda_capability=c) for c in ((7, 0), (8, 0)))
    assert not volta.bf16 and volta.note.startswith("fp32 (no fast bf16")
    assert ampere.bf16 and ampere.channels_last
    forced = choose_runtime(
        resolve_settings("cifar_paper", {"precision": "bf16"}), torch.device("cuda"), cuda_capability=(7, 0)
    )
    assert forced.bf16  # asked for: kept


def test_the_processor_is_named_with_its_vector_and_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provenance names the CPU a run trained on: its model, the widest instructions torch uses there, and its
    native bf16 units (simulated here: this machine may have none), which decide `precision: auto`."""
    cpu = torch.device("cpu")
    model = next(
        line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
    )
    capability = torch.backends.cpu.get_cpu_capability()
    for amx, avx512_bf16, units in ((False, False, ""), (True, False, ", AMX"), (True, True, ", AMX, AVX512-BF16")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda bf16=avx512_bf16: bf16, raising=False)
        assert runtime_module.processor_name(cpu) == f"{model} ({capability}{units})"
        assert runtime_module.cpu_has_fast_bf16() is (amx or avx512_bf16)
    assert choose_runtime(resolve_settings("cifar_paper", {}), cpu).record()["processor"].startswith(model)


def test_fp32_on_cuda_turns_tf32_off() -> None:
    """The provenance's "fp32" is true: cuDNN convolutions and matmuls in IEEE fp32, TF32 only for bf16 runs.
    (The switches are process-wide flags, settable without a GPU.)"""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        for precision, expected in (("fp32", "ieee"), ("bf16", "tf32")):
            settings = resolve_settings("cifar_paper", {"precision": precision})
            configure_backends(choose_runtime(settings, torch.device("cuda")))
            assert (matmul.fp32_precision, conv.fp32_precision) == (expected, expected)
    finally:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = before


def test_sync_bn_runs_eager() -> None:
    long_run = resolve_settings("imagenet_paper", {})
    assert choose_runtime(long_run, torch.device("cuda")).compile
    assert not choose_runtime(long_run, torch.device("cuda"), sync_bn=True).compile
    with pytest.raises(ConfigError, match="sync_bn"):
        choose_runtime(resolve_settings("imagenet_paper", {"compile": "on"}), torch.device("cuda"), sync_bn=True)


def test_a_resumed_optimizer_runs_as_this_runtime_says(digits_dir: Path, tmp_path: Path) -> None:
    """Optimizer.load_state_dict brings back the saving process's `fused` flag (a checkpoint written on a GPU sets
    it): after a resume the optimizer runs as this process's runtime chose, as model.pt's provenance says."""
    settings = resolve_settings("demo", SHORT_SETTINGS)
    model, optimizer, _, runtime = build_training(
        "resnet8", settings, load_prepared(digits_dir), torch.device("cpu"), 0
    )
    saved_on_gpu = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True).state_dict()
    checkpoints = Checkpoints(tmp_path / "checkpoint.pt", "id", model, optimizer, runtime.device, Collective(SINGLE))
    checkpoints.load_optimizer(saved_on_gpu)
    assert not runtime.fused_sgd and not optimizer.param_groups[0]["fused"]
    assert optimizer.param_groups[0]["momentum"] == 0.9  # the hyper-parameters do come from the file


@pytest.mark.parametrize("revision", PREVIOUS_TRAINERS)
def test_checkpoints_of_the_previous_trainer_resume(digits_dir: Path, tmp_path: Path, revision: str) -> None:
    """Decided: checkpoints keep their plain layout, so one written by the previous trainer (stopped by SIGTERM)
    resumes here to the uninterrupted run's weights; one older still (no wall time, RNG or world size) is refused
    with one line."""
    previous_src = _previous_source(tmp_path / "previous", revision)
    args = [*SHORT, "--set", "check_every=10", "--set", "checkpoint_every=10", "--data", str(digits_dir)]
    run_cli("train", *args, "--out", str(tmp_path / "uninterrupted"))
    out = tmp_path / "interrupted"
    process = kill_at_teardown(
        subprocess.Popen(
            [sys.executable, "-m", "resnet_repro.cli", "train", *args, "--out", str(out)],
            env=cli_env(PYTHONPATH=str(previous_src)), stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    old = torch.load(out / "checkpoint.pt", weights_only=True)
    resumed = run_cli("train", *args, "--out", str(out))
    assert "resuming resnet8 seed 0 from iteration" in resumed.stderr
    final, reference = (
        torch.load(p / "model.pt", weights_only=True)["model"] for p in (out, tmp_path / "uninterrupted")
    )
    assert all(torch.equal(final[key], reference[key]) for key in reference)

    del old["rng_cpu"], old["state"]["wall_s"]
    older = tmp_path / "older"
    older.mkdir()
    torch.save(old, older / "checkpoint.pt")
    refused = run_cli("train", *args, "--out", str(older), check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "written by an older resnet-repro" in refused.stderr and "rng_cpu" in refused.stderr


def test_evaluation_uses_the_precision_the_run_was_trained_with(digits_dir: Path, tmp_path: Path) -> None:
    """A run's metrics do not depend on the machine that evaluates it: the precision and layout come from model.pt's
    provenance. Here a bf16 run's model.pt is re-labelled as trained in fp32 (as by `precision: auto` on a device
    without fast bf16): evaluated on the same CPU, it is scored in fp32, exactly as an fp32 forward pass does."""
    run_cli("train", *SHORT, "--set", "precision=bf16", "--data", str(digits_dir), "--out", str(tmp_path / "bf16"))
    saved = torch.load(tmp_path / "bf16" / "model.pt", weights_only=True)
    fp32 = tmp_path / "fp32"
    fp32.mkdir()
    for table in ("history.csv", "epochs.csv"):
        (fp32 / table).write_bytes((tmp_path / "bf16" / table).read_bytes())
    torch.save(
        {**saved, "runtime": {**saved["runtime"], "precision": "fp32", "channels_last": False}}, fp32 / "model.pt"
    )
    for run in ("bf16", "fp32"):
        run_cli("evaluate", "--run", str(tmp_path / run), "--data", str(digits_dir), "--device", "cpu")
    details = {run: json.loads((tmp_path / run / "details.json").read_text()) for run in ("bf16", "fp32")}
    assert details["bf16"]["provenance"]["eval_runtime"].startswith("bf16 (as trained), channels-last")
    assert details["fp32"]["provenance"]["eval_runtime"].startswith("fp32 (as trained), NCHW")

    model, _ = load_trained_model(fp32 / "model.pt")
    data = DeviceData(load_prepared(digits_dir), resolve_settings("demo", SHORT_SETTINGS), torch.device("cpu"))
    with torch.no_grad():
        logits = model.eval()(data.normalize(data.test_x)).float()
    expected = round(torch.nn.functional.cross_entropy(logits, data.test_y).item(), 6)
    assert json.loads((fp32 / "metrics.json").read_text())["test_loss"] == expected
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["test_loss"] != expected


def test_each_rank_draws_its_own_cuda_stream() -> None:
    seeds = {rank_seed(seed, rank) for seed in range(3) for rank in range(8)}
    assert len(seeds) == 24  # distinct across ranks and seeds


# ---------------------------------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_a_checkpoint_carries_the_training_devices_rng_state(digits_dir: Path, tmp_path: Path) -> None:
    """--device cuda:N: the CUDA generator saved and restored is device N's (not GPU 0's), one per rank."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    settings = resolve_settings("demo", SHORT_SETTINGS)
    model, optimizer, _, _ = build_training("resnet8", settings, load_prepared(digits_dir), device, 0)
    checkpoints = Checkpoints(tmp_path / "checkpoint.pt", "id", model, optimizer, device, Collective(SINGLE))
    torch.cuda.manual_seed(7)  # the current device's stream
    torch.randn(5, device=device)
    state = torch.cuda.get_rng_state(device)
    checkpoints.save(RunState.fresh(settings))
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(saved["rng_cuda"]) == 1 and torch.equal(saved["rng_cuda"][0], state)
    torch.randn(5, device=device)  # move on, then restore
    checkpoints.restore_cuda_rng(saved["rng_cuda"], saved["world_size"])
    assert torch.equal(torch.cuda.get_rng_state(device), state)


@pytest.mark.gpu
@needs_cuda
def test_the_gpu_bf16_choice_follows_its_compute_capability() -> None:
    capability = torch.cuda.get_device_capability(0)
    runtime = choose_runtime(resolve_settings("cifar_paper", {}), torch.device("cuda", 0))
    assert runtime.bf16 == (capability >= (8, 0)), (capability, runtime.note)


# ------------------------------------------------------------------------------------------------ the core's shape
def test_the_core_reads_in_short_pieces() -> None:
    """core.py: no class over 150 lines, no method or function over 30 (issue 26: the loop read top to bottom)."""
    tree = ast.parse((REPO / "src/resnet_repro/core.py").read_text())
    sizes = {
        node.name: node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef | ast.FunctionDef)
    }
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert all(size <= 150 for name, size in sizes.items() if name in classes), sizes
    assert all(size <= 30 for name, size in sizes.items() if name not in classes), sizes


def test_one_type_describes_a_resolved_run() -> None:
    """runspec.RunSpec is the only class of the package whose fields say what a run trains (model, seed, settings):
    the planner, both trainers and the command line pass it, no copy of it (results read back for rendering are
    another thing: render.results.RunResult)."""
    package = REPO / "src/resnet_repro"
    describing = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                fields = {
                    s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
                if {"seed", "settings"} <= fields and fields & {"model", "model_name"}:
                    describing.append(f"{path.relative_to(package)}:{node.name}")
    assert describing == ["runspec.py:RunSpec"]
