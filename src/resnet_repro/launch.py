"""Starting a data-parallel run: torchrun on one machine, or one torchrun agent per SLURM node.

    resnet-repro launch --settings results/imagenet/resnet34/seed0/settings.json -- train-imagenet --settings ...

`launch` runs `torchrun --standalone` on one machine (taking that many GPU slots, see resnet_repro.gpu), or, with
--nodes N > 1 inside a SLURM allocation, `srun` one torchrun agent per task with a c10d rendezvous on the first
task's host; each worker process then runs its command (`train-imagenet`: resnet_repro.distributed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .errors import ConfigError, ReproError
from .settings import rendezvous_port


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run"]


def _slurm_head_host() -> str:
    """The first host of this SLURM step (or job): where the rendezvous store lives."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ReproError("no SLURM_STEP_NODELIST/SLURM_JOB_NODELIST: `launch --agent` must run under srun")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def _slurm_job_field(name: str) -> str | None:
    """One field of `scontrol show job` for this job (the job step plugin strips most SLURM_* variables)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or shutil.which("scontrol") is None:
        return None
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    for token in shown.stdout.split():
        key, _, value = token.partition("=")
        if key == name:
            return value
    return None


def launch_command(
    nodes: int, nproc_per_node: int, args: list[str], port: int | None = None, agent: bool = False
) -> list[str]:
    """The command line `launch` executes (exposed for tests and the docs).

    nodes == 1: torchrun --standalone (a free local port, nothing shared).
    nodes > 1, in a SLURM allocation: srun one `launch --agent` task per node; each agent (agent=True) then runs
    torchrun with --nnodes = the step's task count and a c10d rendezvous on the step's first host."""
    train = ["-m", "resnet_repro.cli", *args]
    port_now = rendezvous_port(port, os.environ.get("SLURM_JOB_ID"))
    if nodes == 1 and not agent:
        return [*_torchrun(), "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc_per_node), *train]
    if agent:
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or nodes)
        procid = int(os.environ.get("SLURM_PROCID", "0"))
        host = _slurm_head_host()
        return [
            *_torchrun(),
            "--nnodes", str(tasks),
            "--nproc-per-node", str(nproc_per_node),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{host}:{port_now}",
            "--rdzv-id", os.environ.get("SLURM_JOB_ID", "resnet-repro"),
            # The first task hosts the store: decided, not guessed from host names (two tasks may share a host).
            "--rdzv-conf", f"is_host={'true' if procid == 0 else 'false'}",
            *train,
        ]  # fmt: skip
    if not os.environ.get("SLURM_JOB_ID"):
        raise ConfigError(
            f"{nodes} nodes need a SLURM allocation (run the pipeline with --profile workflow/profiles/slurm); "
            "on one machine set distributed.nodes: 1"
        )
    srun = ["srun", f"--ntasks={nodes}", "--kill-on-bad-exit=1"]
    cpus = _slurm_job_field("CPUs/Task")
    if cpus and cpus.isdigit():  # the step would otherwise get one CPU per task (the plugin hides the job's value)
        srun.append(f"--cpus-per-task={cpus}")
    agent_cmd = [sys.executable, "-m", "resnet_repro.cli", "launch", "--agent", "--nodes", str(nodes)]
    agent_cmd += [
        "--nproc-per-node",
        str(nproc_per_node),
        "--port",
        str(port_now),
        "--",
        *args,
    ]
    return [*srun, *agent_cmd]


def launch(
    nodes: int, nproc_per_node: int, args: list[str], port: int | None = None, agent: bool = False, device: str = "auto"
) -> int:
    """Replace this process with the launch command (signals then reach torchrun/srun directly). On one machine
    with CUDA, first take `nproc_per_node` GPU slots: the lock files stay held by the exec'd torchrun."""
    if nodes < 1 or nproc_per_node < 1:
        raise ConfigError("--nodes and --nproc-per-node must be >= 1")
    command = launch_command(nodes, nproc_per_node, args, port, agent)
    if nodes == 1 and not agent and device in ("auto", "cuda"):
        from .gpu import acquire_gpu_slots, require_cuda

        slots = acquire_gpu_slots(nproc_per_node)  # whole devices: ImageNet jobs are never packed
        for slot in slots:
            slot.keep_across_exec()
        if slots:
            print(f"using GPU slots {[s.name for s in slots]}", file=sys.stderr)
            require_cuda(slots)
    print("launch: " + " ".join(command), file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        raise ReproError(f"cannot run {command[0]!r}: not found on PATH") from None
    return 1  # not reached
