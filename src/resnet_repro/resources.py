"""What each job asks the scheduler for: GPUs or packed GPU slots, threads, memory and wall time (the Snakemake rules'
resources, SLURM's requests and `resnet-repro pipeline check`'s summary). Torch-free.
"""

from __future__ import annotations

from typing import Any

from .catalog import CATALOG
from .plan import Plan
from .runspec import RunSpec

CONFIG_KEY = "gpu_runs_per_device"
SLOTS_RESOURCE = "gpu_slots"  # the Snakemake resource counting packed slots (see job_resources)


# Rough milliseconds per iteration on one current datacenter GPU at the schedule's batch size, by model family;
# SLURM wall times are 2x the estimate plus 15 minutes. The catalogue depth scales the 6n+2 CIFAR nets and the
# ImageNet ResNets linearly: 4 ms per layer at batch 256 is about what an A100 in TF32 is commonly quoted at
# (ResNet-18 ~3000 images/s, ResNet-50 ~1200, ResNet-152 ~450; not measured here).
MS_PER_ITERATION = {"cifar_layer": 0.25, "cifar_resnet": 12.0, "vgg": 10.0, "fc": 1.0, "imagenet_layer": 4.0}

# sbatch flags of every training job (the train rule and ImageNet's): SIGTERM 5 minutes before the time limit, so
# the trainer checkpoints and a retry resumes; append keeps the log of every attempt in one file.
SLURM_TRAIN_EXTRA = "--signal=TERM@300 --open-mode=append"


def train_resources(run: RunSpec) -> dict[str, int]:
    """Per-job resources of a training job: one GPU, memory and a wall time that scales with the work."""
    entry = CATALOG[run.model]
    if entry.kind == "fc":
        per_iteration = MS_PER_ITERATION["fc"]
    elif entry.kind == "vgg":
        per_iteration = MS_PER_ITERATION["vgg"]
    elif entry.family == "imagenet":
        assert entry.depth, f"catalogue entry {run.model} has no depth"
        per_iteration = MS_PER_ITERATION["imagenet_layer"] * entry.depth
    elif entry.args.get("widths") == (16, 32, 64) and entry.depth:
        per_iteration = MS_PER_ITERATION["cifar_layer"] * entry.depth
    else:
        per_iteration = MS_PER_ITERATION["cifar_resnet"]
    minutes = 2 * per_iteration * run.settings.iterations / 60000 + 15
    deep = (entry.depth or 0) > 200  # ResNet-1202's activations at batch 128 outgrow 8 GB
    memory = 32000 if entry.family == "imagenet" else 16000 if deep else 8000
    return {"gpu": 1, "runtime": int(minutes), "mem_mb": memory}


DEFAULT_TRAIN_THREADS = 2  # where the cores are not known (a cluster executor): a CPU training job's share


def train_threads(plan: Plan, run: RunSpec, cores: int | None) -> int:
    """Threads of `run`'s training job when Snakemake has `cores`: config `train_threads`, or with `auto` the cores
    spread evenly over the runs of its experiment, at least one each. On this project's 2-core reference machine,
    two 1-thread jobs side by side finish the short experiment sooner than one 2-thread job at a time (README,
    "Speed"); with many cores each job gets its share."""
    value = plan.config.get("train_threads", "auto")
    if not isinstance(cores, int) or cores < 1:
        return DEFAULT_TRAIN_THREADS if value == "auto" else value
    if value != "auto":
        return min(value, cores)
    return max(1, cores // len(plan.experiments[plan.experiment_of(run)] or [run]))


def imagenet_resources(run: RunSpec) -> dict[str, Any]:
    """Resources of an ImageNet training job: all its GPUs (locally `--resources gpu=N` counts them), CPUs for the
    loader workers, and for several nodes the SLURM task layout (one srun task per node, each a torchrun agent).
    Keys that do not apply are None (Snakemake drops them)."""
    options = run.distributed
    assert options is not None, f"{run.key} is not a data-parallel run"
    nodes, per_node = options.nodes, options.processes_per_node
    base = train_resources(run)
    gpus = 0 if options.device == "cpu" else nodes * per_node
    multi = nodes > 1
    return {
        "gpu": gpus,
        "runtime": int(base["runtime"] / max(1, gpus)) + 15 if gpus else base["runtime"],
        "mem_mb": 12000 * per_node,  # per node: a process, its CUDA context and its workers' prefetched batches
        "cpus_per_task": per_node * (options.workers + 1),
        "nodes": nodes if multi else None,
        # The job step plugin runs an "mpi" job's command without wrapping it in `srun -n1`: launch runs srun itself.
        "mpi": "srun" if multi else None,
        "tasks": nodes if multi else None,
        "tasks_per_gpu": 0 if multi else None,  # else the plugin turns `tasks` into --ntasks-per-gpu
        # SLURM gives each of the N nodes at least one of the N tasks: one torchrun agent per node.
        "slurm_extra": SLURM_TRAIN_EXTRA,
    }


def training_resources(run: RunSpec) -> dict[str, Any]:
    """What a run's training job asks for: the data-parallel layout's (ImageNet) or one GPU's."""
    return imagenet_resources(run) if run.distributed is not None else train_resources(run)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def experiment_needs(plan: Plan, experiment: str) -> str:
    """One line on what an enabled experiment's training jobs ask the scheduler for: GPUs and nodes per job, memory
    per node, the longest wall-time limit and the GPU-hours of all the limits together (limits, 2x the estimate:
    an upper bound, not a prediction)."""
    jobs = [(run, training_resources(run)) for run in plan.experiments[experiment]]
    if not jobs:
        return "no training jobs (every model disabled)"
    longest_run, longest = max(jobs, key=lambda job: job[1]["runtime"])
    gpus = max(resources["gpu"] for _, resources in jobs)
    nodes = max(resources.get("nodes") or 1 for _, resources in jobs)
    memory = max(resources["mem_mb"] for _, resources in jobs)
    gpu_hours = sum(resources["gpu"] * resources["runtime"] / 60 for _, resources in jobs)
    return (
        f"{_count(len(jobs), 'training job')} of up to {_count(gpus, 'GPU')} on {_count(nodes, 'node')}, "
        f"{memory / 1000:g} GB memory per node, wall time up to {longest['runtime'] / 60:.1f} h "
        f"({longest_run.model}); {gpu_hours:,.1f} GPU-hours requested in all"
    )


# ---------------------------------------------------------------------------------------------- GPU packing
def config_runs_per_device(config: dict) -> int:
    """`gpu_runs_per_device` of a config.yaml (already schema-checked), default 1."""
    return int(config.get(CONFIG_KEY, 1))


def job_resources(gpus: int, runs_per_device: int, packable: bool) -> dict[str, int | None]:
    """Snakemake resources of a job needing `gpus` GPUs, when each GPU holds `runs_per_device` slots.

    `gpu` stays whole GPUs (what `--resources gpu=N` and SLURM's --gpus count); packing adds the integer resource
    `gpu_slots`, in units of one slot (1/runs_per_device GPU), bounded by gpu x runs_per_device (see
    setup_snakemake). A packed job asks one slot and no whole GPU; a whole-GPU job asks its GPUs in both units,
    so packed and whole jobs together never exceed the GPUs given. None: Snakemake drops the key."""
    if runs_per_device == 1 or gpus == 0:
        return {"gpu": gpus, SLOTS_RESOURCE: None}
    if packable and gpus == 1:
        return {"gpu": 0, SLOTS_RESOURCE: 1}
    return {"gpu": gpus, SLOTS_RESOURCE: gpus * runs_per_device}


def slots_limit(gpus_given: int | None, runs_per_device: int) -> int | None:
    """The `gpu_slots` bound for `--resources gpu=gpus_given`; None: no bound to add (no packing or no gpu bound)."""
    if runs_per_device == 1 or gpus_given is None:
        return None
    return gpus_given * runs_per_device


def setup_snakemake(workflow: object, config: dict, local: bool) -> int:
    """Packing for a Snakemake run (from the Snakefile): runs per GPU (config on local runs; 1 under a cluster
    executor, which gives every job whole GPUs), the gpu_slots bound derived from `--resources gpu=N` (unless given),
    Returns the runs per GPU, which the jobs learn from gpu.RUNS_PER_DEVICE_ENV (the Snakefile sets it: not part
    of any command, so changing it reruns nothing)."""
    runs = config_runs_per_device(config) if local else 1
    resources = workflow.global_resources  # type: ignore[attr-defined]
    given = resources.get("gpu")
    limit = slots_limit(getattr(given, "value", given), runs)
    if limit is not None and SLOTS_RESOURCE not in resources:
        workflow.register_resource(SLOTS_RESOURCE, limit)  # type: ignore[attr-defined]
    return runs
