"""Data-parallel training from a streaming loader (ImageNet): one process per GPU under torchrun, and its launcher.

    resnet-repro launch --nodes 1 --nproc-per-node 8 -- train-imagenet --model resnet34 --data ... --out ...

`launch` runs `torchrun --standalone` on one machine (taking that many GPU slots, see resnet_repro.gpu), or, with
--nodes N > 1 inside a SLURM allocation, `srun` one torchrun agent per task with a c10d rendezvous on the first
task's host. Each worker process runs `train-imagenet`, i.e. `train_distributed` below:

* the learning rate and the batch are global: each of the W ranks trains on batch/W samples per step, DDP averages
  the gradients, so a step is the step of one process on the whole batch (up to BN, see below);
* DistributedSampler shuffles with (seed, epoch) and gives the ranks disjoint shares: at step k the ranks together
  train on positions [k*B, (k+1)*B) of the epoch's permutation, exactly the batch one process would use;
* each sample's augmentation is seeded by (seed, epoch, sample index) (resnet_repro.imagenet), so it is distinct
  across ranks, workers and epochs and independent of how many there are;
* BatchNorm: per-rank statistics by default (the usual multi-GPU setup, and the paper's: batch 256 on 8 GPUs
  normalizes over 32 images), so the result depends a little on the number of GPUs. `sync_bn` (config
  `distributed.sync_bn`) uses SyncBatchNorm: statistics over the global batch, results independent of W up to
  floating-point reduction order, at the cost of one all-reduce per BN layer;
* only rank 0 writes (checkpoint.pt, history.csv, epochs.csv, model.pt): the run itself (runtime, resume, checks,
  cadence, files) is resnet_repro.core's, as for the CIFAR trainer; this module holds the data and step code. All
  ranks read checkpoint.pt on start, so a preempted run resumes on any number of GPUs;
* SIGTERM/SIGUSR1/SIGINT: a rank that receives one raises a flag; the ranks agree on it at the next check (every
  `check_every` steps, an all-reduce they do anyway for the loss), rank 0 checkpoints, and all exit with
  status 75. torchrun forwards SIGTERM to its workers and gives them 30 s before SIGKILL.
NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .core import Job, Run
from .errors import ConfigError, ReproError
from .imagenet import Augment, EpochSampler, Index, TestImages, TrainImages, load_index, loader_options, normalizer
from .models import build_model
from .progress import ProgressLog
from .runtime import Forward, Runtime, choose_runtime, configure_backends, make_optimizer, pick_device, train_step
from .settings import DistributedOptions, TrainSettings, per_process_batch, rendezvous_port, settings_hash
from .world import World, stop_signals, world_from_env


@dataclass
class DistSpec:
    model: str
    seed: int
    settings: TrainSettings
    data_dir: Path  # the ImageNet index folder (resnet-repro index-imagenet)
    out_dir: Path
    device: str = DistributedOptions.device
    workers: int = DistributedOptions.workers  # DataLoader workers per rank
    sync_bn: bool = DistributedOptions.sync_bn
    eval_batch: int = 100  # per rank, for the centre-crop evaluations during training


def run_identity(model: str, index: Index, seed: int, settings: TrainSettings, sync_bn: bool) -> str:
    """The run's identity: train.py's settings hash, plus SyncBN (it changes the result); not the world size, so a
    checkpoint resumes on another number of GPUs."""
    run_id = settings_hash(model, index.sha256, seed, settings)
    return f"{run_id}-syncbn" if sync_bn else run_id


def rank_seed(seed: int, rank: int) -> int:
    """A rank's own CUDA seed: distinct across ranks and seeds (torch.manual_seed gives every device the same)."""
    return seed * 1_000_003 + rank + 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch for CPU process groups (torch's SyncBatchNorm runs on CUDA only): one
    autograd-aware all-reduce of the per-channel sums, squared sums and count per layer, forward and backward."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        # Two passes, as BatchNorm: E[x^2] - E[x]^2 in fp32 loses digits where the mean is large.
        centered = x - mean.view(1, channels, 1, 1)
        var = all_reduce((centered * centered).sum((0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():  # as BatchNorm: running variance unbiased, over the global count
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / (total - 1), momentum)
                self.num_batches_tracked += 1
        shape = (1, channels, 1, 1)
        out = centered * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def convert_global_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` as a GlobalBatchNorm2d with the same parameters and buffers."""
    if type(module) is nn.BatchNorm2d:
        replacement = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine)
        replacement.load_state_dict(module.state_dict())
        return replacement
    for name, child in module.named_children():
        setattr(module, name, convert_global_bn(child))
    return module


# Compile modes of the data-parallel trainer: DDP's gradient all-reduce runs between compiled graphs, so no CUDA
# graphs (and ImageNet-sized steps are bound by math, not by kernel launches).
DATA_PARALLEL_COMPILE_MODES = {"cuda": "default", "cpu": "default"}


def train_distributed(spec: DistSpec, log: ProgressLog | None = None) -> Path:
    """Train one run with this process as one rank (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK); return model.pt."""
    world = world_from_env()
    device = pick_device(spec.device, world.local_rank)
    if world.size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
    try:
        # Before the stop handlers: starting the loader workers' server briefly ignores stop signals.
        options = loader_options(spec.workers, pin_memory=device.type == "cuda")
        with stop_signals() as stop:
            return _train(spec, world, device, options, stop, log)
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class ImageNetSteps:
    """The data-parallel step and data: each rank trains on its share of the global batch from the streaming
    loader, DDP averages the gradients; evaluation on disjoint validation shards, summed over the ranks."""

    eval_name = "val (centre crop)"

    def __init__(
        self,
        spec: DistSpec,
        world: World,
        runtime: Runtime,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        index: Index,
        options: dict[str, Any],
    ) -> None:
        settings, device = spec.settings, runtime.device
        self.world, self.runtime, self.model, self.optimizer, self.device = world, runtime, model, optimizer, device
        self.batch, self.per_rank = settings.batch_size, settings.batch_size // world.size
        self.augment = Augment.from_settings(settings.augment)
        self.mean, self.std = normalizer(index, settings.normalize, device)
        train_model: nn.Module = model
        if world.size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.forward = Forward(train_model, runtime)
        self.train_set = TrainImages(index, self.augment, spec.seed)
        sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=world.size, rank=world.rank, shuffle=True, seed=spec.seed, drop_last=True
        )
        self.steps_per_epoch = len(sampler) // self.per_rank
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the global batch {settings.batch_size} is larger than the {len(self.train_set)} training images"
            )
        self.epoch_sampler = EpochSampler(sampler)
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.per_rank, sampler=self.epoch_sampler, drop_last=True, **options
        )
        val_items = index.val[world.rank :: world.size]  # disjoint shards; sums are all-reduced: exact, no padding
        self.val_loader = torch.utils.data.DataLoader(
            TestImages(index, self.augment, ten_crop=False, items=val_items), batch_size=spec.eval_batch, **options
        )

    def batches(self, start: int) -> Iterator[Any]:
        epoch, position = divmod(start, self.steps_per_epoch)
        self.epoch_sampler.start(epoch, skip=position * self.per_rank)
        return iter(self.train_loader)

    def step(self, batch: Any, lr: float) -> tuple[Tensor, Tensor]:
        x_u8, y, shift = batch
        device = self.device
        x = x_u8.to(device, non_blocking=True).float().div_(255)
        x = (x + shift.to(device, non_blocking=True)[:, :, None, None]).sub_(self.mean).div_(self.std)
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return train_step(self.forward, self.optimizer, self.runtime, x, y.to(device, non_blocking=True), lr)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Centre-crop loss and error on the validation set, each rank on its shard (Fig. 4's bold curves)."""
        model, device = self.model, self.device
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, wrong, count
        for views, y in self.val_loader:
            x = views[:, 0].to(device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
            y = y.to(device, non_blocking=True)
            if self.runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.runtime.autocast():
                logits = model(x).float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) != y).sum()
            totals[2] += len(y)
        model.train()
        if self.world.size > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def _train(
    spec: DistSpec,
    world: World,
    device: torch.device,
    options: dict[str, Any],
    stop: Callable[[], int | None],
    log: ProgressLog | None,
) -> Path:
    settings = spec.settings
    index = load_index(spec.data_dir)
    per_rank = per_process_batch(settings.batch_size, world.size)
    synchronized_bn = spec.sync_bn and world.size > 1
    runtime = choose_runtime(settings, device, DATA_PARALLEL_COMPILE_MODES, sync_bn=synchronized_bn)
    configure_backends(runtime)
    augment = Augment.from_settings(settings.augment)
    torch.manual_seed(spec.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(spec.model, len(index.classes), 3, augment.crop, **settings.model_options)
    if synchronized_bn:
        # CUDA: torch's fused SyncBatchNorm; CPU (gloo): the same statistics from GlobalBatchNorm2d.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else convert_global_bn(model)
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":  # the weights are drawn; from here each rank's CUDA stream is its own
        torch.cuda.manual_seed(rank_seed(spec.seed, world.rank))
    optimizer = make_optimizer(model, settings, runtime)
    job = Job(
        model_name=spec.model,
        seed=spec.seed,
        settings=settings,
        run_id=run_identity(spec.model, index, spec.seed, settings, spec.sync_bn),
        out=Path(spec.out_dir),
        dataset={"name": "imagenet", "sha256": index.sha256},
        num_classes=len(index.classes),
        in_channels=3,
        image_size=augment.crop,
        runtime_extra={"world_size": world.size, "sync_bn": spec.sync_bn},
    )
    run = Run(job, model, optimizer, runtime, stop, world, log)
    run.resume()  # before DDP wraps the model: it broadcasts rank 0's (resumed) weights
    steps = ImageNetSteps(spec, world, runtime, model, optimizer, index, options)
    describe = (
        f"on ImageNet index {spec.data_dir} [{len(steps.train_set)} train / {len(index.val)} val, "
        f"{len(index.classes)} classes], seed {spec.seed}, {settings.iterations} iterations of global batch "
        f"{settings.batch_size} = {world.size} x {per_rank}, {steps.steps_per_epoch} steps per epoch, "
        f"{spec.workers} loader workers per process, BN {'synchronized' if spec.sync_bn else 'per process'}"
    )
    return run.train(steps, describe)


# ------------------------------------------------------------------------------------------------- launcher
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
