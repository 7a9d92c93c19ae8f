"""Every torch.compile mode the trainer accepts is guarded through its CUDA-graph recording, or refused before any
step; and the CUDA precision switches leave both of torch's precision APIs readable (issue 28: max-autotune's
precompile read a legacy switch that raised, so every bf16 compile in that mode fell back to eager)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from torch import nn
from torch._inductor import list_mode_options

from resnet_repro.distributed import DATA_PARALLEL_COMPILE_MODES
from resnet_repro.runtime import (
    COMPILE_MODE_ENV,
    COMPILE_MODES,
    GUARDED_STEPS,
    Runtime,
    choose_runtime,
)
from resnet_repro.settings import resolve_settings
from resnet_repro.step import Forward, train_step

CUDA = torch.device("cuda")  # only described here: no test below runs anything on a GPU


def compiled_runtime(mode: str, device: torch.device = CUDA) -> Runtime:
    return Runtime(device, bf16=False, channels_last=False, compile=True, note="test", compile_mode=mode)


def torch_cudagraph_modes() -> dict[str, bool]:
    """Every mode torch.compile knows, and whether torch's own options for it turn CUDA graphs on."""
    return {mode: bool(options.get("triton.cudagraphs")) for mode, options in list_mode_options().items()}


def test_torch_and_the_trainer_agree_on_which_modes_record_cuda_graphs() -> None:
    modes = torch_cudagraph_modes()
    assert {"reduce-overhead", "max-autotune"} <= {mode for mode, graphs in modes.items() if graphs}
    assert {"default", "max-autotune-no-cudagraphs"} <= {mode for mode, graphs in modes.items() if not graphs}
    assert set(COMPILE_MODES.values()) | set(DATA_PARALLEL_COMPILE_MODES.values()) <= set(modes)
    for mode, graphs in modes.items():
        runtime = compiled_runtime(mode)
        assert runtime.cudagraphs == graphs, mode
        # Guarded through the warm-up, the recording and the first replay, or through the compiling call alone.
        assert runtime.guarded_steps == GUARDED_STEPS["cudagraphs" if graphs else "other"], mode
        assert not compiled_runtime(mode, torch.device("cpu")).cudagraphs  # CUDA graphs are CUDA's


def test_the_environments_mode_reaches_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    long_run = resolve_settings("cifar_paper")
    monkeypatch.setenv(COMPILE_MODE_ENV, "max-autotune")
    runtime = choose_runtime(long_run, CUDA)
    assert runtime.compile_mode == "max-autotune" and runtime.cudagraphs and runtime.guarded_steps == 3
    monkeypatch.setenv(COMPILE_MODE_ENV, "max-autotune-no-cudagraphs")
    runtime = choose_runtime(long_run, CUDA)
    assert not runtime.cudagraphs and runtime.guarded_steps == 1


def test_a_mode_torch_does_not_know_is_refused_before_any_step() -> None:
    runtime = compiled_runtime("no-such-mode")
    forward = Forward(nn.Linear(4, 2), runtime)
    assert not forward.compiled and forward.error is not None and "no-such-mode" in forward.error
    assert not runtime.cudagraphs


@pytest.mark.parametrize("mode", [mode for mode, graphs in torch_cudagraph_modes().items() if graphs])
def test_every_cuda_graph_mode_marks_each_step(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """cudagraph_mark_step_begin before every compiled step in each mode that records CUDA graphs (on the CPU: the
    compiled forward is stood in for, and the step only marks; no graph is recorded)."""
    marks: list[int] = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: lambda x: module(x))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = nn.Linear(4, 3)
    runtime = compiled_runtime(mode)
    forward = Forward(model, runtime)
    assert forward.compiled
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(3):
        train_step(forward, optimizer, x, y, 0.1)
    assert len(marks) == 3


READ_BACKS = """
import json, torch
from resnet_repro.runtime import Runtime, configure_backends
seen = {}
for bf16 in (True, False):
    configure_backends(Runtime(torch.device("cuda"), bf16, bf16, False, "test"))
    legacy = lambda: [
        torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    ]
    new = [torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision]
    before = legacy()
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):  # reads and restores the legacy switches
        pass
    assert legacy() == before
    seen["bf16" if bf16 else "fp32"] = [*before, *new, torch.backends.cudnn.benchmark]
print(json.dumps(seen))
"""


def test_precision_switches_read_back_through_both_apis() -> None:
    # A fresh interpreter: the switches are process-wide, and a failed read-back must not leak into other tests.
    result = subprocess.run(
        [sys.executable, "-c", READ_BACKS],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    assert seen["bf16"] == ["high", True, True, "tf32", "tf32", True]
    assert seen["fp32"] == ["highest", False, False, "ieee", "ieee", True]
