"""Workflows through a real single-node SLURM cluster (workflow/scripts/slurm_cluster.sh).

The session fixture starts the local test cluster (installing slurm-wlm and munge with apt when
they are missing, which needs root). The tests skip only where that is impossible: no SLURM
client tools and no root/apt-get to install them, or not root and no running test cluster.

The cluster is left running after the tests (stop it with `workflow/scripts/slurm_cluster.sh stop`;
workflow/scripts/test.sh stops it when it started it). Nothing else is: every snakemake a test starts runs in a
process group of its own that is killed when the test ends, and the SLURM jobs it submitted that are still
queued or running are cancelled (`stop_snakemake_on_slurm`).

`run_snakemake_on_slurm()` / `start_snakemake_on_slurm()` are meant for reuse by other tests (e.g.
the demo workflow through SLURM).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import at_teardown, kill_process_group, kill_processes, processes_with_env, run_in_own_group

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "workflow" / "scripts" / "slurm_cluster.sh"
PROFILE_CI = REPO / "workflow" / "profiles" / "slurm-ci"
PROFILE_USER = REPO / "workflow" / "profiles" / "slurm"
BIN_DIR = Path(sys.executable).parent
# overrides that let the user-facing profile run on the local cluster, which has no accounting DB
USER_PROFILE_ON_LOCAL_CLUSTER = (
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
)
SUBMITTED_RE = re.compile(r"submitted with SLURM jobid (\d+)")
CLUSTER_NAME = "resnetrepro"  # ClusterName in the slurm.conf of workflow/scripts/slurm_cluster.sh


# ----------------------------------------------------------------------------------------------
# helpers (reusable)


def slurm_env() -> dict[str, str]:
    """Environment for snakemake and SLURM commands: this interpreter's bin dir first on PATH
    (sbatch --export=ALL hands it to the jobs, so they find the same snakemake and python)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SLURM_JOB_ID", None)  # not inside a SLURM job, even if pytest itself runs in one
    # The test cluster's GPUs are fake (character devices): a job SLURM gives one must still run on the CPU. Without
    # this it would stop, rightly, saying that it holds a GPU that PyTorch cannot use.
    env["RESNET_REPRO_DEVICE"] = "cpu"
    return env


def snakemake_on_slurm_cmd(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    profile: Path = PROFILE_CI,
    snakefile: Path | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: int = 150,
) -> list[str]:
    """The snakemake command line, wrapped in `timeout -s INT` (SIGINT cancels the SLURM jobs and
    exits within seconds; SIGTERM would make snakemake wait for running jobs)."""
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), str(BIN_DIR / "snakemake")]
    cmd += ["--profile", str(profile), "--directory", str(workdir)]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    return [*cmd, *extra_args, *targets]


def start_snakemake_on_slurm(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    profile: Path = PROFILE_CI,
    snakefile: Path | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: int = 150,
    log_name: str = "snakemake_slurm.log",
) -> subprocess.Popen:
    """Start snakemake in the background, in a session (process group) of its own; its stdout+stderr go to
    workdir/log_name. When the test ends it is stopped and its SLURM jobs cancelled (stop_snakemake_on_slurm),
    unless the test did that already."""
    workdir = Path(workdir)
    log = open(workdir / log_name, "w")  # the child keeps its own copy
    try:
        proc = subprocess.Popen(
            snakemake_on_slurm_cmd(workdir, targets, profile, snakefile, extra_args, timeout),
            cwd=workdir,
            env=slurm_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    at_teardown(lambda: stop_snakemake_on_slurm(proc, workdir / log_name))
    return proc


def cancel_slurm_jobs(job_ids: list[str] | tuple[str, ...], wait: float = 45) -> None:
    """scancel those of job_ids that are still queued or running, wait (up to `wait` s) until they have left the
    queue (SIGKILL to their steps when they dawdle), then kill any of their processes that escaped slurmstepd."""
    ids = set(job_ids)
    if not ids or shutil.which("squeue") is None:
        return

    def active() -> set[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60)
        return ids & set(out.stdout.split()) if out.returncode == 0 else set()

    pending = active()
    if pending:
        subprocess.run(["scancel", *sorted(pending)], capture_output=True, timeout=60)
        deadline = time.monotonic() + wait
        killed = False
        while pending and time.monotonic() < deadline:
            time.sleep(0.5)
            pending = active()
            if pending and not killed and time.monotonic() > deadline - wait / 2:
                subprocess.run(["scancel", "--full", "--signal=KILL", *sorted(pending)], capture_output=True)
                killed = True
    # proctrack/linuxproc loses processes that were reparented away from the job's process tree
    kill_processes(processes_with_env(SLURM_JOB_ID=ids, SLURM_CLUSTER_NAME=CLUSTER_NAME))


def stop_snakemake_on_slurm(proc: subprocess.Popen, log_path: Path) -> None:
    """Stop snakemake (started by start_snakemake_on_slurm) if it still runs: SIGINT first, so it cancels its
    jobs itself; then whatever is left in its process group is killed (kill_process_group) and the SLURM jobs it
    submitted that are still queued or running are cancelled (cancel_slurm_jobs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    kill_process_group(proc)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    cancel_slurm_jobs(submitted_job_ids(text))


def run_snakemake_on_slurm(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    profile: Path = PROFILE_CI,
    snakefile: Path | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: int = 150,
    check: bool = True,
    log_name: str = "snakemake_slurm.log",
    while_running: Callable[[subprocess.Popen], None] | None = None,
) -> tuple[int, str]:
    """Run snakemake through SLURM with `--directory workdir` and return (exit code, log text).

    The default Snakefile is found from workdir (Snakefile or workflow/Snakefile there); pass
    `snakefile=` for another one (e.g. REPO / "Snakefile"). `while_running(process)` acts on the
    running workflow (requeue or signal a job); if it fails, Snakemake is interrupted (SIGINT: it
    cancels its jobs). With check=True a non-zero exit fails the test and shows the end of the log."""
    proc = start_snakemake_on_slurm(workdir, targets, profile, snakefile, extra_args, timeout, log_name)
    try:
        if while_running:
            while_running(proc)
        rc = proc.wait()
    finally:
        stop_snakemake_on_slurm(proc, Path(workdir) / log_name)
    text = (Path(workdir) / log_name).read_text(errors="replace")
    if check and rc != 0:
        pytest.fail(f"snakemake exited {rc} (124: timed out after {timeout}s); log tail:\n{text[-6000:]}")
    return rc, text


def submitted_job_ids(log_text: str) -> list[str]:
    """SLURM job ids from the lines 'Job N has been submitted with SLURM jobid M (log: ...)'."""
    return SUBMITTED_RE.findall(log_text)


def scontrol_show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (finished jobs stay visible for MinJobAge=300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    fields: dict[str, str] = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def write_snakefile(workdir: Path, text: str) -> Path:
    path = Path(workdir) / "Snakefile"
    path.write_text(textwrap.dedent(text))
    return path


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# ----------------------------------------------------------------------------------------------
# fixture


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local single-node test cluster (idempotent; left running afterwards)."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root:
        status = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
        if status.returncode != 0:
            pytest.skip("SLURM test cluster not running and starting it needs root")
        return
    if shutil.which("sinfo") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"slurm_cluster.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------------------------
# tests

TOY_SNAKEFILE = """
    rule all:
        input: expand("out/{i}.txt", i=range(2)), "out/sum.txt"

    rule square:
        output: "out/{i}.txt", jobinfo="jobinfo/{i}.txt"
        shell: "echo $(( {wildcards.i} * {wildcards.i} + 1 )) > {output[0]}; "
               "echo job=${{SLURM_JOB_ID:-none}} > {output.jobinfo}"

    localrules: total

    rule total:
        input: expand("out/{i}.txt", i=range(2))
        output: "out/sum.txt"
        shell: "awk '{{s += $1}} END {{print s}}' {input} > {output}"
"""


def test_toy_workflow_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    slurm_dir = tmp_path / "slurm"
    local_dir = tmp_path / "local"
    for d in (slurm_dir, local_dir):
        d.mkdir()
        write_snakefile(d, TOY_SNAKEFILE)

    _, log = run_snakemake_on_slurm(slurm_dir)

    job_ids = submitted_job_ids(log)
    assert len(job_ids) == 2, log
    seen = sorted((slurm_dir / f"jobinfo/{i}.txt").read_text().strip() for i in range(2))
    assert seen == sorted(f"job={j}" for j in job_ids)
    # every job has its SLURM log, named after its job id (CI profile keeps successful logs)
    logs = {p.stem for p in (slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(job_ids) <= logs

    # the same results as a plain local run
    local = run_in_own_group(
        [str(BIN_DIR / "snakemake"), "--cores", "1", "--directory", str(local_dir)],
        cwd=local_dir,
        env=slurm_env(),
        timeout=120,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    for name in ("0.txt", "1.txt", "sum.txt"):
        assert (slurm_dir / "out" / name).read_bytes() == (local_dir / "out" / name).read_bytes()
    assert (local_dir / "jobinfo/0.txt").read_text().strip() == "job=none"


GPU_SNAKEFILE = """
    rule all:
        input: expand("gpu/{i}.txt", i=range(2))

    rule gpu:
        output: "gpu/{i}.txt"
        resources: gpu=1
        shell: "python3 -c 'import os, time; print(os.environ.get(\\"SLURM_JOB_ID\\"), "
               "os.environ.get(\\"CUDA_VISIBLE_DEVICES\\"), time.time())' > {output}; sleep 2; "
               "python3 -c 'import time; print(time.time())' >> {output}"
"""


def test_gpu_jobs_get_distinct_gpus(slurm_cluster, tmp_path):
    write_snakefile(tmp_path, GPU_SNAKEFILE)
    _, log = run_snakemake_on_slurm(tmp_path)

    results = []
    for i in range(2):
        first, second = (tmp_path / f"gpu/{i}.txt").read_text().splitlines()
        job_id, cvd, start = first.split()
        results.append((job_id, cvd, float(start), float(second)))
    assert sorted(r[0] for r in results) == sorted(submitted_job_ids(log))
    # each job got one GPU of the node's two, a different one each
    assert sorted(r[1] for r in results) == ["0", "1"], results
    # and they ran at the same time (intervals overlap)
    (_, _, s0, e0), (_, _, s1, e1) = results
    assert s0 < e1 and s1 < e0, results
    for job_id, *_ in results:
        assert scontrol_show_job(job_id)["TresPerJob"] == "gres:gpu:1"


TRAIN_SNAKEFILE = """
    rule all:
        input: "model/net.txt", "eval.txt"

    rule train:
        output: "model/net.txt"
        resources:
            gpu=1,
            cpus_per_task=1,
            mem_mb=1000,
            runtime=30,
            slurm_extra="--signal=TERM@300 --open-mode=append",
        shell: "echo trained job=$SLURM_JOB_ID > {output}"

    rule evaluate:
        output: "eval.txt"
        shell: "echo evaluated job=$SLURM_JOB_ID > {output}"
"""


def test_user_profile_dry_run_and_sbatch_line(slurm_cluster, tmp_path):
    write_snakefile(tmp_path, TRAIN_SNAKEFILE)
    dry = run_in_own_group(
        snakemake_on_slurm_cmd(tmp_path, profile=PROFILE_USER, extra_args=["-n"], timeout=60),
        cwd=tmp_path,
        env=slurm_env(),
        timeout=120,
    )
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    # a rule without resources of its own gets the profile's defaults (and no GPU)
    dry_jobs = dict(re.findall(r"\nrule (\w+):\n(?:    .*\n)*?    resources: (.*)", dry.stdout))
    assert {"train", "evaluate"} <= set(dry_jobs), dry.stdout
    eval_resources = dry_jobs["evaluate"].split(", ")
    for res in ("runtime=60", "mem_mb=4000", "cpus_per_task=2"):
        assert res in eval_resources, (res, eval_resources)
    assert not any(r.startswith(("gpu=", "slurm_extra=")) for r in eval_resources)
    # the training rule keeps its own resources: the profile does not override them
    for res in ("runtime=30", "mem_mb=1000", "cpus_per_task=1", "gpu=1"):
        assert res in dry_jobs["train"].split(", "), (res, dry_jobs["train"])

    # submit the GPU training job for real and look at the sbatch line the plugin used
    _, log = run_snakemake_on_slurm(
        tmp_path,
        ["model/net.txt"],
        profile=PROFILE_USER,
        extra_args=[*USER_PROFILE_ON_LOCAL_CLUSTER, "--verbose"],
    )
    calls = [line.split("sbatch call: ", 1)[1] for line in log.splitlines() if "sbatch call: " in line]
    assert len(calls) == 1, calls
    train_call = calls[0]
    assert "--comment rule_train" in train_call
    # the GPU training rule: its own resources, requeue-able, signalled 300 s before its limit
    for flag in (
        "--gpus=1",
        "-t 30",
        "--mem 1000",
        "--cpus-per-task=1",
        "--requeue",
        "--signal=TERM@300",
        "--open-mode=append",
        "-p debug",
    ):
        assert flag in train_call, (flag, train_call)

    # what SLURM made of it
    train_id = (tmp_path / "model/net.txt").read_text().split("job=")[1].strip()
    job = scontrol_show_job(train_id)
    assert job["TimeLimit"] == "00:30:00"
    assert job["Requeue"] == "1"
    assert job["TresPerJob"] == "gres:gpu:1" and "mem=1000M" in job["TRES"]
    assert job["JobState"] == "COMPLETED"


PREEMPT_TRAINER = """
import os, signal, sys, time

# a toy trainer: 8 steps, checkpoint after each, checkpoint-and-exit on SIGTERM/SIGUSR1
os.makedirs("ckpt", exist_ok=True)
state = "ckpt/state"
step, acc = map(int, open(state).read().split()) if os.path.exists(state) else (0, 0)
print(f"start job={os.environ.get('SLURM_JOB_ID')} step={step}", flush=True)
if step:
    print(f"resumed from checkpoint at step {step}", flush=True)

def save():
    with open(state + ".tmp", "w") as f:
        f.write(f"{step} {acc}")
    os.replace(state + ".tmp", state)

def on_signal(signum, frame):
    save()
    print(f"got {signal.Signals(signum).name} at step {step}; checkpoint saved", flush=True)
    sys.exit(99)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGUSR1, on_signal)
while step < 8:
    time.sleep(0.5)
    step, acc = step + 1, acc + (step + 1) ** 2
    save()
with open(sys.argv[1], "w") as f:
    f.write(f"result={acc}\\n")
print("finished", flush=True)
"""

PREEMPT_SNAKEFILE = """
    rule train:
        output: "model/net.txt"
        resources: runtime=10, slurm_extra="--signal=TERM@300 --open-mode=append"
        shell: "exec python3 trainer.py {output}"
"""


def _setup_preempt(tmp_path: Path) -> None:
    write_snakefile(tmp_path, PREEMPT_SNAKEFILE)
    (tmp_path / "trainer.py").write_text(PREEMPT_TRAINER)


def _wait_for_step(tmp_path: Path, proc: subprocess.Popen, min_step: int) -> str:
    """Wait until the trainer has checkpointed min_step; return its SLURM job id."""

    def ready():
        assert proc.poll() is None, (tmp_path / "snakemake_slurm.log").read_text()[-4000:]
        state = tmp_path / "ckpt/state"
        return state.exists() and int(state.read_text().split()[0] or 0) >= min_step

    wait_for(ready, 60, f"trainer step {min_step}")
    return submitted_job_ids((tmp_path / "snakemake_slurm.log").read_text())[-1]


def _slurm_log_text(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / ".snakemake/slurm_logs").rglob("*.log")))


EXPECTED_RESULT = f"result={sum(i * i for i in range(1, 9))}\n"


# The requeue path (`scontrol requeue`, what preemption does) is tested with the real trainer and pipeline in
# test_slurm_pipeline.py; this toy keeps the other path: a signal, a failed job, Snakemake's retry.


def test_signalled_job_checkpoints_and_is_retried(slurm_cluster, tmp_path):
    """The time-limit warning (--signal=TERM@300), sent by hand with `scancel --signal=TERM`: the
    trainer checkpoints and exits, the job fails, snakemake's retry resumes from the checkpoint."""
    _setup_preempt(tmp_path)
    signalled: list[str] = []

    def signal_the_trainer(proc: subprocess.Popen) -> None:
        signalled.append(_wait_for_step(tmp_path, proc, 2))
        subprocess.run(["scancel", "--signal=TERM", signalled[0]], check=True)

    _, log = run_snakemake_on_slurm(tmp_path, timeout=120, while_running=signal_the_trainer)
    job_id = signalled[0]
    ids = submitted_job_ids(log)
    assert len(ids) == 2 and ids[0] == job_id, ids  # the retry is a new SLURM job
    assert (tmp_path / "model/net.txt").read_text() == EXPECTED_RESULT
    slurm_log = _slurm_log_text(tmp_path)
    assert "got SIGTERM at step" in slurm_log
    assert re.search(r"resumed from checkpoint at step [1-8]", slurm_log), slurm_log
