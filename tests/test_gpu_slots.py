"""GPU slots without GPUs (a fake `nvidia-smi` on PATH, or RESNET_REPRO_GPU_SLOTS): many concurrent jobs, never two
holders of one slot; slots over a preset CUDA_VISIBLE_DEVICES (indices, GPU- and MIG- UUIDs) and over MIG instances;
packed slots per device; evaluations take slots; a slot without CUDA stops the job; a lock folder or file another
user could control is refused."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import BIN, REPO, cli_env, kill_at_teardown

HOLDER = """
import json, os, sys, time
from pathlib import Path
from resnet_repro.gpu import acquire_gpu_slot, runs_per_device_from_env
slot = acquire_gpu_slot(poll=0.02, runs_per_device=runs_per_device_from_env())  # as cmd_train calls it
start = time.monotonic()
Path(sys.argv[1]).write_text("" if slot is None else slot.name)  # tell the test the slot is taken
release = sys.argv[2]
if release.replace(".", "").isdigit():
    time.sleep(float(release))
else:
    while not Path(release).exists():
        time.sleep(0.02)
print(json.dumps({"slot": None if slot is None else slot.name, "entry": None if slot is None else slot.entry,
                  "start": start, "end": time.monotonic(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""

TWO_GPUS = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-aaaa-bbbb-cccc-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-22222222-aaaa-bbbb-cccc-000000000000)
"""
# GPU 0 plain, GPU 1 in MIG mode with two instances (current drivers), GPU 2 with an old driver's MIG UUID format
MIG_MACHINE = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-6e6cb1e7-e44e-3c3d-635e-af4e9e3c9b88)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 3g.20gb     Device  1: (UUID: MIG-cba663e8-9bed-5b7f-84b4-ab04e1fa0f1d)
GPU 2: A100-SXM4-40GB (UUID: GPU-7f7dc2f8-f55f-4d4e-746f-b05fa0f4ac99)
  MIG 7g.40gb Device 0: (UUID: MIG-GPU-7f7dc2f8-f55f-4d4e-746f-b05fa0f4ac99/0/0)
"""


def fake_nvidia_smi(tmp_path: Path, listing: str) -> str:
    """A folder holding an `nvidia-smi` that prints `listing` for -L; the PATH to run with it first."""
    folder = tmp_path / "fakebin"
    folder.mkdir(exist_ok=True)
    (folder / "listing.txt").write_text(listing)
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] && exec cat {folder / "listing.txt"}\nexit 9\n')
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a job on a machine whose GPUs `extra` describes: CUDA_VISIBLE_DEVICES unset unless given
    (the autouse fixture empties it), no SLURM job unless given."""
    environment = cli_env(**{"RESNET_REPRO_GPU_LOCK_DIR": str(tmp_path / "locks"), **extra})
    if "CUDA_VISIBLE_DEVICES" not in extra:
        environment.pop("CUDA_VISIBLE_DEVICES", None)
    if "SLURM_JOB_ID" not in extra:
        environment.pop("SLURM_JOB_ID", None)
    return environment


def _holder(tmp_path: Path, name: str, hold: float | str, env: dict[str, str] | None = None, **extra: str):
    return kill_at_teardown(  # a failing test must not leave a holder behind
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / f"{name}.held"), str(hold)],
            env=env or _env(tmp_path, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    )


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _records(jobs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=120)
        assert job.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def _never_overlap(records: list[dict]) -> None:
    for name in {r["slot"] for r in records}:
        spans = sorted((r["start"], r["end"]) for r in records if r["slot"] == name)
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), (name, spans)


def test_concurrent_jobs_never_share_a_slot(tmp_path: Path) -> None:
    jobs = [_holder(tmp_path, f"job{i}", 0.4, RESNET_REPRO_GPU_SLOTS="2") for i in range(8)]
    records = _records(jobs)
    assert {r["slot"] for r in records} == {"0", "1"}
    assert all(r["visible"] == r["slot"] for r in records)
    _never_overlap(records)


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "victim", 600, RESNET_REPRO_GPU_SLOTS="1")
    _wait_for(tmp_path / "victim.held")
    assert (tmp_path / "locks" / "gpu-0.lock").read_text() == f"{holder.pid}\n"  # who holds it, for people
    waiter = _holder(tmp_path, "waiter", 0, RESNET_REPRO_GPU_SLOTS="1")
    time.sleep(1.0)
    assert waiter.poll() is None, "the waiter got the only slot while it was held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert _records([waiter])[0]["slot"] == "0"


def test_slots_over_a_preset_visible_device_list(tmp_path: Path) -> None:
    """A preset CUDA_VISIBLE_DEVICES (a SLURM allocation, a user's shell) is arbitrated entry by entry."""
    visible = "3,GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77,MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
    jobs = [_holder(tmp_path, f"job{i}", 0.3, CUDA_VISIBLE_DEVICES=visible) for i in range(6)]
    records = _records(jobs)
    assert {r["slot"] for r in records} == set(visible.split(","))
    assert all(r["visible"] == r["slot"] for r in records)  # each job sees exactly its one device
    _never_overlap(records)
    assert {p.name for p in (tmp_path / "locks").iterdir()} == {f"gpu-{e}.lock" for e in visible.split(",")}


def test_nvidia_smi_listing_counts_mig_instances_by_uuid(tmp_path: Path) -> None:
    path = fake_nvidia_smi(tmp_path, MIG_MACHINE)
    jobs = [_holder(tmp_path, f"job{i}", "never-released", PATH=path) for i in range(5)]
    deadline = time.monotonic() + 60
    while sum((tmp_path / f"job{i}.held").exists() for i in range(5)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    held = sorted((tmp_path / f"job{i}.held").read_text() for i in range(5) if (tmp_path / f"job{i}.held").exists())
    # the plain GPU by its UUID, each MIG instance by its MIG UUID, never a MIG-enabled GPU itself
    assert held == sorted(
        [
            "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
            "MIG-GPU-7f7dc2f8-f55f-4d4e-746f-b05fa0f4ac99/0/0",
            "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
            "MIG-cba663e8-9bed-5b7f-84b4-ab04e1fa0f1d",
        ]
    )
    time.sleep(0.5)
    assert sum(job.poll() is None for job in jobs) == 5 and len(held) == 4, "a fifth job got one of four slots"
    names = {p.name for p in (tmp_path / "locks").iterdir()}
    assert "gpu-MIG-GPU-7f7dc2f8-f55f-4d4e-746f-b05fa0f4ac99%2F0%2F0.lock" in names  # a safe file name


def test_empty_visible_devices_means_no_gpus(tmp_path: Path) -> None:
    record = _records([_holder(tmp_path, "cpu", 0, PATH=fake_nvidia_smi(tmp_path, TWO_GPUS), CUDA_VISIBLE_DEVICES="")])
    assert record[0]["slot"] is None and record[0]["visible"] == ""
    assert not (tmp_path / "locks").exists()


def test_slurm_job_without_gpus_runs_on_the_cpu(tmp_path: Path) -> None:
    """SLURM sets CUDA_VISIBLE_DEVICES in every job it gives GPUs: without it, the node's GPUs are others'."""
    job = _holder(tmp_path, "slurm", 0, PATH=fake_nvidia_smi(tmp_path, TWO_GPUS), SLURM_JOB_ID="42")
    record = _records([job])[0]
    assert record["slot"] is None and record["visible"] == ""


def test_packed_slots_four_per_device_and_never_more(tmp_path: Path) -> None:
    """gpu_runs_per_device: 4 on a 2-GPU machine: eight jobs hold eight distinct slots, four per device; a ninth
    waits until one ends, then takes the freed slot."""
    path = fake_nvidia_smi(tmp_path, TWO_GPUS)
    jobs = [
        _holder(tmp_path, f"job{i}", tmp_path / f"release{i}", PATH=path, RESNET_REPRO_GPU_RUNS_PER_DEVICE="4")
        for i in range(9)
    ]
    deadline = time.monotonic() + 120
    while sum((tmp_path / f"job{i}.held").exists() for i in range(9)) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # time for a ninth to (wrongly) get in
    holding = [i for i in range(9) if (tmp_path / f"job{i}.held").exists()]
    assert len(holding) == 8, holding
    names = [(tmp_path / f"job{i}.held").read_text() for i in holding]
    assert len(set(names)) == 8, names
    assert Counter(name.split("#")[0] for name in names) == {
        "GPU-11111111-aaaa-bbbb-cccc-000000000000": 4,
        "GPU-22222222-aaaa-bbbb-cccc-000000000000": 4,
    }
    (waiting,) = set(range(9)) - set(holding)
    assert jobs[waiting].poll() is None
    freed = holding[0]
    (tmp_path / f"release{freed}").touch()
    _records([jobs[freed]])
    _wait_for(tmp_path / f"job{waiting}.held")
    assert (tmp_path / f"job{waiting}.held").read_text() == names[0]
    for i in range(9):
        (tmp_path / f"release{i}").touch()
    records = _records([job for i, job in enumerate(jobs) if i != freed])
    assert all(r["visible"] == r["entry"] for r in records)  # a packed job sees its one device


def test_a_whole_device_job_never_shares_with_packed_ones(tmp_path: Path) -> None:
    """An ImageNet job (never packed) takes a device only when no packed job is on it, and the other way round."""
    path = fake_nvidia_smi(tmp_path, TWO_GPUS.splitlines()[0] + "\n")
    packed = _holder(tmp_path, "packed", tmp_path / "go", PATH=path, RESNET_REPRO_GPU_RUNS_PER_DEVICE="4")
    _wait_for(tmp_path / "packed.held")
    whole = _holder(tmp_path, "whole", 0, PATH=path, RESNET_REPRO_GPU_RUNS_PER_DEVICE="1")
    time.sleep(1.0)
    assert not (tmp_path / "whole.held").exists(), "a whole-device job joined a packed one"
    (tmp_path / "go").touch()
    assert _records([whole])[0]["slot"] == "GPU-11111111-aaaa-bbbb-cccc-000000000000"
    _records([packed])


def _evaluate(tmp_path: Path, digits_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    (tmp_path / "run").mkdir(exist_ok=True)
    return kill_at_teardown(
        subprocess.Popen(
            [str(BIN / "resnet-repro"), "evaluate", "--run", str(tmp_path / "run"), "--data", str(digits_dir)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    )


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_concurrent_evaluations_take_distinct_slots_and_stop_without_cuda(tmp_path: Path, digits_dir: Path) -> None:
    """Two `resnet-repro evaluate` jobs on a (fake) 2-GPU machine: each takes a slot, distinct while both hold one;
    on this machine PyTorch sees no GPU, so each stops with one line naming its slot instead of using the CPU."""
    env = _env(tmp_path, PATH=fake_nvidia_smi(tmp_path, TWO_GPUS))
    first = _evaluate(tmp_path, digits_dir, env)
    line = first.stderr.readline()
    first.send_signal(signal.SIGSTOP)  # it holds its slot while stopped (its CUDA check imports torch: seconds)
    assert line.startswith("using GPU slot GPU-"), line
    assert first.poll() is None, "the first evaluation ended before the second started"
    second = _evaluate(tmp_path, digits_dir, env)
    _, second_err = second.communicate(timeout=300)
    first.send_signal(signal.SIGCONT)
    first_err = line + first.communicate(timeout=300)[1]
    slots = []
    for job, stderr in ((first, first_err), (second, second_err)):
        assert job.returncode != 0
        slot = stderr.split("using GPU slot ", 1)[1].split()[0]
        error = _one_error_line(stderr)
        assert f"took GPU slot(s) {slot} (CUDA_VISIBLE_DEVICES={slot})" in error and "--device cpu" in error, error
        slots.append(slot)
    assert len(set(slots)) == 2, slots
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_training_with_a_slot_but_no_cuda_stops_in_one_line(tmp_path: Path, digits_dir: Path) -> None:
    env = _env(tmp_path, RESNET_REPRO_GPU_SLOTS="1")
    args = ["train", "--model", "resnet8", "--data", str(digits_dir), "--out", str(tmp_path / "run")]
    result = subprocess.run([str(BIN / "resnet-repro"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    error = _one_error_line(result.stderr)
    assert "took GPU slot(s) 0 (CUDA_VISIBLE_DEVICES=0)" in error, error
    assert not (tmp_path / "run" / "model.pt").exists()


# ------------------------------------------------------------------------------------------- lock folder
def _refused(tmp_path: Path, **extra: str) -> str:
    job = _holder(tmp_path, "job", 0, RESNET_REPRO_GPU_SLOTS="1", **extra)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode != 0 and not (tmp_path / "job.held").exists()
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("resnet_repro.gpu.GpuSlotError: "), stderr
    return message


def test_default_lock_folder_is_private(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    env = _env(tmp_path, RESNET_REPRO_GPU_SLOTS="1", TMPDIR=str(tmp_path / "tmp"))
    del env["RESNET_REPRO_GPU_LOCK_DIR"]
    _records([_holder(tmp_path, "job", 0, env=env)])
    folder = tmp_path / "tmp" / f"resnet-repro-gpu-slots-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "gpu-0.lock").stat().st_mode) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_lock_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir(mode=0o700)
    os.chown(tmp_path / "locks", 65534, 65534)
    assert "belongs to uid 65534, not to you" in _refused(tmp_path)


def test_lock_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks").chmod(0o777)
    assert "is open to others (mode 0777)" in _refused(tmp_path)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared").chmod(0o1777)
    # a folder this user creates in a shared one is fine; a symlink as the folder is not
    (tmp_path / "shared" / "mine").symlink_to(tmp_path / "elsewhere")
    assert "is a symbolic link" in _refused(tmp_path, RESNET_REPRO_GPU_LOCK_DIR=str(tmp_path / "shared" / "mine"))


def test_symlink_planted_as_lock_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir(mode=0o700)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (tmp_path / "locks" / "gpu-0.lock").symlink_to(victim)
    assert "gpu-0.lock is a symbolic link; refusing" in _refused(tmp_path)
    assert victim.read_text() == "keep me\n"


def test_lock_folder_refusal_is_one_line_from_the_cli(tmp_path: Path, digits_dir: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks").chmod(0o777)
    env = _env(tmp_path, RESNET_REPRO_GPU_SLOTS="1")
    args = ["evaluate", "--run", str(tmp_path / "run"), "--data", str(digits_dir)]
    result = subprocess.run([str(BIN / "resnet-repro"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "is open to others (mode 0777)" in _one_error_line(result.stderr)


# -------------------------------------------------------------------------------------- Snakemake resources
PACKED_SNAKEFILE = """
import os

from resnet_repro import gpu, resources

RUNS = resources.setup_snakemake(workflow, config, local=True)
os.environ[gpu.RUNS_PER_DEVICE_ENV] = str(RUNS)  # as workflow/rules/common.smk: what the jobs inherit

rule all:
    input: expand("out/packed{i}.txt", i=range(6)), "out/whole.txt"

rule packed:
    output: "out/packed{i}.txt"
    resources:
        gpu=resources.job_resources(1, RUNS, packable=True)["gpu"],
        gpu_slots=resources.job_resources(1, RUNS, packable=True)["gpu_slots"],
    shell: "python3 -c 'import os, time; print(time.time(), os.environ[\\"RESNET_REPRO_GPU_RUNS_PER_DEVICE\\"])' "
           "> {output}; sleep 1; python3 -c 'import time; print(time.time())' >> {output}"

use rule packed as whole with:
    output: "out/whole.txt"
    resources:
        gpu=resources.job_resources(1, RUNS, packable=False)["gpu"],
        gpu_slots=resources.job_resources(1, RUNS, packable=False)["gpu_slots"],
"""


@pytest.mark.slow
def test_snakemake_packs_slots_but_gpu_keeps_counting_gpus(tmp_path: Path) -> None:
    """`--resources gpu=1` with gpu_runs_per_device: 2: two packed jobs at a time, a whole-GPU job alone."""
    (tmp_path / "Snakefile").write_text(PACKED_SNAKEFILE)
    (tmp_path / "config.yaml").write_text("gpu_runs_per_device: 2\n")
    cmd = [str(BIN / "snakemake"), "--cores", "8", "--resources", "gpu=1", "--configfile", "config.yaml"]
    result = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = {}
    for path in (tmp_path / "out").iterdir():
        (start, runs), (end,) = (line.split() for line in path.read_text().splitlines())
        assert runs == "2"
        spans[path.stem] = (float(start), float(end))

    def overlapping(at: float) -> set[str]:
        return {name for name, (start, end) in spans.items() if start <= at < end}

    crowds = [overlapping(start) for start, _ in spans.values()]
    assert max(len(crowd) for crowd in crowds) == 2, spans  # packed: two per GPU, never more
    assert all(crowd == {"whole"} for crowd in crowds if "whole" in crowd), spans


def test_gpu_runs_per_device_is_a_checked_config_value() -> None:
    from resnet_repro.errors import ConfigError
    from resnet_repro.plan import load_config, validate_config
    from resnet_repro.resources import config_runs_per_device, job_resources

    config = load_config(REPO / "config.yaml")
    assert config_runs_per_device(config) == 1  # opt in: a GPU per job unless asked
    validate_config({**config, "gpu_runs_per_device": 4})
    for bad in (0, 1.5, "many"):
        with pytest.raises(ConfigError, match="gpu_runs_per_device"):
            validate_config({**config, "gpu_runs_per_device": bad})
    # packed: a slot and no whole GPU; never packed (ImageNet): its GPUs in both units; unpacked: as before
    assert job_resources(1, 4, packable=True) == {"gpu": 0, "gpu_slots": 1}
    assert job_resources(2, 4, packable=False) == {"gpu": 2, "gpu_slots": 8}
    assert job_resources(1, 1, packable=True) == {"gpu": 1, "gpu_slots": None}
