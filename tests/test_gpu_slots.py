"""GPU slots without GPUs: many concurrent jobs, N slots, never two holders of one slot; a killed holder frees
its slot; a CUDA_VISIBLE_DEVICES set by a scheduler is respected."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env, kill_at_teardown

HOLDER = """
import json, os, sys, time
from pathlib import Path
from resnet_repro.gpu import acquire_gpu_slot
slot = acquire_gpu_slot(poll=0.02)
start = time.monotonic()
Path(sys.argv[1]).write_text("held")  # tell the test the slot is taken
time.sleep(float(sys.argv[2]))
print(json.dumps({"slot": None if slot is None else slot.index, "start": start, "end": time.monotonic(),
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def _holder(tmp_path: Path, name: str, hold: float, **env: str) -> subprocess.Popen:
    environment = cli_env(RESNET_REPRO_GPU_LOCK_DIR=str(tmp_path / "locks"), **env)
    if "CUDA_VISIBLE_DEVICES" not in env:  # a developer's shell may have it set
        environment.pop("CUDA_VISIBLE_DEVICES", None)
    return kill_at_teardown(  # a failing test must not leave a holder behind
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / f"{name}.held"), str(hold)],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    )


def test_concurrent_jobs_never_share_a_slot(tmp_path: Path) -> None:
    jobs = [_holder(tmp_path, f"job{i}", 0.4, RESNET_REPRO_GPU_SLOTS="2") for i in range(8)]
    records = [json.loads(job.communicate(timeout=120)[0]) for job in jobs]
    assert {r["slot"] for r in records} == {0, 1}
    assert all(r["visible"] == str(r["slot"]) for r in records)
    for slot in (0, 1):
        spans = sorted((r["start"], r["end"]) for r in records if r["slot"] == slot)
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "victim", 600, RESNET_REPRO_GPU_SLOTS="1")
    deadline = time.monotonic() + 60
    while not (tmp_path / "victim.held").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    waiter = _holder(tmp_path, "waiter", 0, RESNET_REPRO_GPU_SLOTS="1")
    time.sleep(1.0)
    assert waiter.poll() is None, "the waiter got the only slot while it was held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    record = json.loads(waiter.communicate(timeout=60)[0])
    assert record["slot"] == 0


def test_scheduler_choice_is_respected(tmp_path: Path) -> None:
    job = _holder(tmp_path, "slurm", 0, RESNET_REPRO_GPU_SLOTS="2", CUDA_VISIBLE_DEVICES="1")
    record = json.loads(job.communicate(timeout=60)[0])
    assert record["slot"] is None and record["visible"] == "1"
    assert not (tmp_path / "locks").exists()
