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
* only rank 0 writes (checkpoint.pt, history.csv, epochs.csv, model.pt), with train.py's atomic writers and formats;
  all ranks read checkpoint.pt on start, so a preempted run resumes on any number of GPUs;
* SIGTERM/SIGUSR1/SIGINT: a rank that receives one raises a flag; the ranks agree on it at the next check (every
  `check_every` steps, an all-reduce they do anyway for the loss), rank 0 checkpoints, and all exit with
  status 75. torchrun forwards SIGTERM to its workers and gives them 30 s before SIGKILL.
NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, Interrupted, ReproError, TrainingDiverged
from .imagenet import Augment, EpochSampler, Index, TestImages, TrainImages, load_index, loader_options, normalizer
from .models import build_model, count_parameters
from .settings import TrainSettings, settings_hash
from .train import (
    EPOCH_FIELDS,
    HISTORY_FIELDS,
    STOP_SIGNALS,
    ProgressLog,
    _stop_requested,
    add_to_tallies,
    atomic_torch_save,
    choose_runtime,
    close_epoch,
    close_interval,
    end_warmup_if_due,
    initial_state,
    load_checkpoint,
    start_wall_clock,
    take_tally,
    write_csv,
)

DEFAULT_PORT_BASE = 20000  # rendezvous port = base + SLURM job id % 10000: below Linux's ephemeral range


@dataclass
class DistSpec:
    model: str
    seed: int
    settings: TrainSettings
    data_dir: Path  # the ImageNet index folder (resnet-repro index-imagenet)
    out_dir: Path
    device: str = "auto"
    workers: int = 4  # DataLoader workers per rank
    sync_bn: bool = False
    eval_batch: int = 100  # per rank, for the centre-crop evaluations during training


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """Rank, world size and local rank as torchrun sets them; a plain process is a world of one."""
    return World(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def run_identity(model: str, index: Index, seed: int, settings: TrainSettings, sync_bn: bool) -> str:
    """The run's identity: train.py's settings hash, plus SyncBN (it changes the result); not the world size, so a
    checkpoint resumes on another number of GPUs."""
    run_id = settings_hash(model, index.sha256, seed, settings)
    return f"{run_id}-syncbn" if sync_bn else run_id


def _device(spec: DistSpec, world: World) -> torch.device:
    wanted = spec.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", world.local_rank)  # one GPU per process: the local rank's
    return torch.device("cpu")


class Collective:
    """The few collectives the trainer needs; no-ops in a world of one (no process group at all)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.on = world.size > 1

    def sum_(self, tensor: Tensor) -> Tensor:
        if self.on:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        if self.on:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's BN running statistics everywhere (each rank updated its own copy with its own batches)."""
        if self.on:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


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


def train_distributed(spec: DistSpec, log: ProgressLog | None = None) -> Path:
    """Train one run with this process as one rank (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK); return model.pt."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    world = world_from_env()
    device = _device(spec, world)
    if world.size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
    try:
        return _train(spec, world, device, log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(spec: DistSpec, world: World, device: torch.device, log: ProgressLog | None) -> Path:
    settings, out = spec.settings, Path(spec.out_dir)
    comm = Collective(world)
    index = load_index(spec.data_dir)
    augment = Augment.from_settings(settings.augment)
    if settings.batch_size % world.size:
        raise ConfigError(
            f"the global batch {settings.batch_size} does not divide into {world.size} processes; pick a batch size "
            "that is a multiple of the number of processes"
        )
    per_rank = settings.batch_size // world.size
    run_id = run_identity(spec.model, index, spec.seed, settings, spec.sync_bn)
    # Only rank 0 talks; the others would repeat every line.
    log = log or ProgressLog(settings.iterations, stream=sys.stderr if world.main else open(os.devnull, "w"))
    # Before the stop handlers: starting the loader workers' server briefly ignores stop signals.
    options = loader_options(spec.workers, pin_memory=device.type == "cuda")
    stop_signal = _stop_requested()
    runtime = choose_runtime(settings, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once

    torch.manual_seed(spec.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(spec.model, len(index.classes), 3, augment.crop, **settings.model_options)
    if spec.sync_bn and world.size > 1:
        # CUDA: torch's fused SyncBatchNorm; CPU (gloo): the same statistics from GlobalBatchNorm2d.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else convert_global_bn(model)
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    mean, std = normalizer(index, settings.normalize, device)

    state = initial_state(settings)
    checkpoint_path = out / "checkpoint.pt"
    if checkpoint_path.exists():  # every rank reads it: the optimizer state is not broadcast by DDP
        saved = load_checkpoint(checkpoint_path)
        if saved.get("run_id") == run_id:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
            log.line(
                f"resuming {spec.model} seed {spec.seed} from iteration {state['iteration']} ({checkpoint_path}, "
                f"written by {saved.get('world_size', '?')} processes, now {world.size})"
            )
        else:
            log.line(f"ignoring {checkpoint_path}: it belongs to different settings (run {saved.get('run_id')})")
    start_wall_clock(state)
    agreed = comm.max_(torch.tensor([state["iteration"], -state["iteration"]], dtype=torch.long, device=device))
    if agreed[0] != -agreed[1]:  # a rank that saw another checkpoint (no shared file system?) would diverge
        raise ReproError(
            f"ranks disagree on the resume iteration ({int(-agreed[1])}..{int(agreed[0])}): is "
            f"{out} on a file system shared by all nodes?"
        )

    train_model: nn.Module = model
    if world.size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(train_model) if settings.compile == "on" else train_model

    train_set = TrainImages(index, augment, spec.seed)
    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=world.size, rank=world.rank, shuffle=True, seed=spec.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise ConfigError(f"the global batch {settings.batch_size} is larger than the {len(train_set)} training images")
    val_items = index.val[world.rank :: world.size]  # disjoint shards; sums are all-reduced: exact, no padding
    epoch_sampler = EpochSampler(sampler)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=per_rank, sampler=epoch_sampler, drop_last=True, **options
    )
    val_loader = torch.utils.data.DataLoader(
        TestImages(index, augment, ten_crop=False, items=val_items), batch_size=spec.eval_batch, **options
    )

    def save_checkpoint() -> None:
        if world.main:
            payload = {
                "run_id": run_id,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "world_size": world.size,
            }
            atomic_torch_save(payload, checkpoint_path)

    @torch.no_grad()
    def evaluate_center() -> tuple[float, float]:
        """Centre-crop loss and error on the validation set, each rank on its shard (Fig. 4's bold curves)."""
        comm.broadcast_buffers(model)
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, wrong, count
        for views, y in val_loader:
            x = views[:, 0].to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
            y = y.to(device, non_blocking=True)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = model(x).float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) != y).sum()
            totals[2] += len(y)
        model.train()
        comm.sum_(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()

    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    log.line(
        f"training {spec.model} ({count_parameters(model):,} parameters) on ImageNet index {spec.data_dir} "
        f"[{len(train_set)} train / {len(index.val)} val, {len(index.classes)} classes], seed {spec.seed}, "
        f"{settings.iterations} iterations of global batch {settings.batch_size} = {world.size} x {per_rank}, "
        f"{steps_per_epoch} steps per epoch, {spec.workers} loader workers per process, device {device} "
        f"({runtime.note}), BN {'synchronized' if spec.sync_bn else 'per process'}, run {run_id}"
    )
    checkpoint_every = settings.checkpoint_every or settings.eval_every
    window: list[Tensor] = []  # per-step [loss, wrong] since the last check, on the device (no sync per step)
    clock, clock_iteration = time.monotonic(), state["iteration"]
    model.train()

    def check(iteration: int, stop_local: bool) -> tuple[list[float], int, bool]:
        """One all-reduce: the window's global per-step losses and wrong counts, and whether any rank must stop."""
        stacked = torch.stack(window).double() if window else torch.zeros(0, 2, dtype=torch.float64, device=device)
        flag = torch.tensor([[float(stop_local), 0.0]], dtype=torch.float64, device=device)
        payload = comm.sum_(torch.cat([stacked, flag]))
        losses = (payload[:-1, 0] / world.size).tolist()
        wrong = int(payload[:-1, 1].sum().item())
        stop = payload[-1, 0].item() > 0
        bad = [i for i, value in enumerate(losses) if not math.isfinite(value)]
        if bad:
            first = iteration - len(losses) + bad[0] + 1
            kept = (
                f"the last good checkpoint (iteration {state['last_checkpoint']}) is kept in {checkpoint_path}"
                if state.get("last_checkpoint")
                else "no checkpoint had been written yet"
            )
            raise TrainingDiverged(
                f"loss became {losses[bad[0]]} at iteration {first} of {spec.model} seed {spec.seed}; training "
                f"stopped and {kept}. Try a smaller learning rate or a warm-up."
            )
        window.clear()
        return losses, wrong, stop

    while state["iteration"] < settings.iterations:
        epoch, position = divmod(state["iteration"], steps_per_epoch)
        epoch_sampler.start(epoch, skip=position * per_rank)
        for x_u8, y, shift in train_loader:
            iteration = state["iteration"]
            lr = settings.lr_at(iteration) if state["warmup_done"] else settings.warmup["lr"]
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = x_u8.to(device, non_blocking=True).float().div_(255)
            x = (x + shift.to(device, non_blocking=True)[:, :, None, None]).sub_(mean).div_(std)
            y = y.to(device, non_blocking=True)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.append(torch.stack([loss.detach().double(), (logits.detach().argmax(1) != y).sum().double()]))
            state["iteration"] = iteration = iteration + 1

            aligned = iteration % settings.check_every == 0
            at_eval = iteration % settings.eval_every == 0 or iteration == settings.iterations
            at_epoch_end = iteration % steps_per_epoch == 0
            if not (aligned or at_eval or at_epoch_end):
                continue
            # Every rank reaches the same checks (iteration counts are global), so the all-reduce always matches.
            losses, wrong, stop = check(iteration, stop_signal() is not None)
            add_to_tallies(state, losses, wrong)
            elapsed = time.monotonic() - clock
            rate = (iteration - clock_iteration) / max(elapsed, 1e-9)
            if aligned:
                block_loss, block_error = take_tally(state, "block", settings.batch_size)
                log.bar(iteration, rate, block_loss)
                if ended := end_warmup_if_due(state, settings, block_error, iteration):
                    log.line(ended)
            if at_epoch_end:
                close_epoch(state, iteration, steps_per_epoch, lr, settings.batch_size, rate)
            if at_eval:
                close_interval(
                    state,
                    log,
                    iteration,
                    settings.iterations,
                    steps_per_epoch,
                    lr,
                    settings.batch_size,
                    rate,
                    elapsed,
                    evaluate_center(),
                    "val (centre crop)",
                )
                if world.main:
                    write_csv(out / "history.csv", HISTORY_FIELDS, state["history"])
                    write_csv(out / "epochs.csv", EPOCH_FIELDS, state["epochs"])
                clock, clock_iteration = time.monotonic(), iteration
            if (iteration % checkpoint_every == 0 or stop) and iteration < settings.iterations:
                state["last_checkpoint"] = iteration
                save_checkpoint()
            if stop:
                comm.barrier()  # the checkpoint is complete before any rank exits
                raise Interrupted(
                    f"stop requested at iteration {iteration}; checkpoint saved to {checkpoint_path}; rerun the same "
                    "command to resume"
                )
            if at_epoch_end or iteration >= settings.iterations:
                break

    comm.broadcast_buffers(model)
    if world.main:
        final = {
            "format": 1,
            "model_name": spec.model,
            "num_classes": len(index.classes),
            "in_channels": 3,
            "image_size": augment.crop,
            "model_options": settings.model_options,
            "seed": spec.seed,
            "run_id": run_id,
            "settings": settings.to_dict(),
            "dataset": {"name": "imagenet", "sha256": index.sha256},
            "runtime": {"device": str(device), "note": runtime.note, "world_size": world.size, "sync_bn": spec.sync_bn},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        atomic_torch_save(final, out / "model.pt")
        write_csv(out / "history.csv", HISTORY_FIELDS, state["history"])
        write_csv(out / "epochs.csv", EPOCH_FIELDS, state["epochs"])
        checkpoint_path.unlink(missing_ok=True)
    comm.barrier()
    return out / "model.pt"


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


def rendezvous_port(explicit: int | None) -> int:
    if explicit:
        return explicit
    return DEFAULT_PORT_BASE + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 10000


def launch_command(
    nodes: int, nproc_per_node: int, args: list[str], port: int | None = None, agent: bool = False
) -> list[str]:
    """The command line `launch` executes (exposed for tests and the docs).

    nodes == 1: torchrun --standalone (a free local port, nothing shared).
    nodes > 1, in a SLURM allocation: srun one `launch --agent` task per node; each agent (agent=True) then runs
    torchrun with --nnodes = the step's task count and a c10d rendezvous on the step's first host."""
    train = ["-m", "resnet_repro.cli", *args]
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
            "--rdzv-endpoint", f"{host}:{rendezvous_port(port)}",
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
    agent_cmd += ["--nproc-per-node", str(nproc_per_node), "--port", str(rendezvous_port(port)), "--", *args]
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
        from .gpu import acquire_gpu_slots

        slots = acquire_gpu_slots(nproc_per_node)
        for slot in slots:
            os.set_inheritable(slot.handle.fileno(), True)
        if slots:
            print(f"using GPU slots {[s.index for s in slots]}", file=sys.stderr)
    print("launch: " + " ".join(command), file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        raise ReproError(f"cannot run {command[0]!r}: not found on PATH") from None
    return 1  # not reached
