"""Data-parallel training from a streaming loader (ImageNet): one process per GPU under torchrun.

    resnet-repro launch --nodes 1 --nproc-per-node 8 -- train-imagenet --model resnet34 --data ... --out ...

`launch` (resnet_repro.launch) starts the processes; each runs `train-imagenet`, i.e. `train_distributed` below:

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

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .core import TrainingRun
from .errors import ConfigError
from .imagenet import Augment, EpochSampler, Index, TestImages, TrainImages, load_index, loader_options, normalizer
from .modelfile import DataFacts
from .models import build_model
from .progress import ProgressLog
from .runspec import RunSpec
from .runtime import Runtime, choose_runtime, configure_backends, pick_device
from .settings import DistributedOptions, per_process_batch
from .step import Forward, make_optimizer, train_step
from .world import World, stop_signals, world_from_env

# Validation images per rank and batch, for the centre-crop evaluations during training.
EVAL_BATCH = 100


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


def train_distributed(spec: RunSpec, data_dir: Path, out: Path, log: ProgressLog | None = None) -> Path:
    """Train run `spec` from the ImageNet index `data_dir` into `out` with this process as one rank (torchrun sets
    RANK/WORLD_SIZE/LOCAL_RANK), its layout (device, loader workers, SyncBatchNorm) from `spec.distributed`;
    return model.pt."""
    layout = spec.distributed or DistributedOptions()
    world = world_from_env()
    device = pick_device(layout.device, world.local_rank)
    if world.size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
    try:
        # Before the stop handlers: starting the loader workers' server briefly ignores stop signals.
        options = loader_options(layout.workers, pin_memory=device.type == "cuda")
        with stop_signals() as stop:
            return _train(spec, layout, Path(data_dir), Path(out), world, device, options, stop, log)
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class ImageNetSteps:
    """The data-parallel step and data: each rank trains on its share of the global batch from the streaming
    loader, DDP averages the gradients; evaluation on disjoint validation shards, summed over the ranks."""

    eval_name = "val (centre crop)"

    def __init__(
        self,
        spec: RunSpec,
        world: World,
        runtime: Runtime,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        index: Index,
        options: dict[str, Any],
    ) -> None:
        settings, device = spec.settings, runtime.device
        self.world, self.model, self.optimizer, self.device = world, model, optimizer, device
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
            TestImages(index, self.augment, ten_crop=False, items=val_items), batch_size=EVAL_BATCH, **options
        )

    @property
    def runtime(self) -> Runtime:
        """What the steps run as now (after a compile fallback: eager)."""
        return self.forward.runtime

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
        return train_step(self.forward, self.optimizer, x, y.to(device, non_blocking=True), lr)

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
    spec: RunSpec,
    layout: DistributedOptions,
    data_dir: Path,
    out: Path,
    world: World,
    device: torch.device,
    options: dict[str, Any],
    stop: Callable[[], int | None],
    log: ProgressLog | None,
) -> Path:
    settings = spec.settings
    index = load_index(data_dir)
    per_rank = per_process_batch(settings.batch_size, world.size)
    synchronized_bn = layout.sync_bn and world.size > 1
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
    facts = DataFacts("imagenet", index.sha256, len(index.classes), 3, augment.crop)
    extra = {"world_size": world.size, "sync_bn": layout.sync_bn}
    # Resumed on construction, before DDP wraps the model: it broadcasts rank 0's (resumed) weights.
    run = TrainingRun(spec, out, facts, model, optimizer, device, stop, world, log, runtime_extra=extra)
    steps = ImageNetSteps(spec, world, runtime, model, optimizer, index, options)
    describe = (
        f"on ImageNet index {data_dir} [{len(steps.train_set)} train / {len(index.val)} val, "
        f"{len(index.classes)} classes], seed {spec.seed}, {settings.iterations} iterations of global batch "
        f"{settings.batch_size} = {world.size} x {per_rank}, {steps.steps_per_epoch} steps per epoch, "
        f"{layout.workers} loader workers per process, BN {'synchronized' if layout.sync_bn else 'per process'}"
    )
    return run.train(steps, describe)
