"""checkpoint.pt: what a stopped run saves (weights, optimizer, RNG streams, run state) and how a rerun resumes it.

A checkpoint of the same run identity is continued, one of another identity ignored; every rank reads it (DDP does
not broadcast the optimizer state) and all ranks must agree on where they resume. Only rank 0 writes, atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ReproError
from .progress import ProgressLog
from .runfiles import atomic_torch_save, load_torch_file
from .settings import TrainSettings
from .state import RunState, check_resumable
from .world import Collective

# Optimizer flags that describe how this process runs the update, not the run's state: a resumed optimizer keeps
# the values its runtime chose (Optimizer.load_state_dict would otherwise bring back those of the saving machine).
RUNTIME_OPTIMIZER_FLAGS = ("fused", "foreach", "capturable")


class Checkpoints:
    """The checkpoint of one run: `path`, belonging to run `run_id`, of `model` and `optimizer` on `device`."""

    def __init__(
        self,
        path: Path,
        run_id: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        comm: Collective,
    ) -> None:
        self.path, self.run_id, self.model, self.optimizer, self.device, self.comm = (
            path, run_id, model, optimizer, device, comm,
        )  # fmt: skip

    def resume(self, settings: TrainSettings, log: ProgressLog, who: str) -> RunState:
        """The state to go on from: the checkpoint's, with weights, optimizer and RNG restored, if it is this run's;
        a fresh one otherwise. `who` names the run in the log line."""
        state = RunState.fresh(settings)
        if self.path.exists():
            saved = load_torch_file(self.path)
            if saved.get("run_id") == self.run_id:
                check_resumable(saved, self.path)
                state = RunState.from_plain(saved["state"], self.path)
                self.model.load_state_dict(saved["model"])
                self.load_optimizer(saved["optimizer"])
                torch.set_rng_state(saved["rng_cpu"])
                self.restore_cuda_rng(saved.get("rng_cuda"), saved["world_size"])
                written, now = saved["world_size"], self.comm.world.size
                where = f", written by {written} processes, now {now}" if written > 1 or now > 1 else ""
                log.line(f"resuming {who} from iteration {state.iteration} ({self.path}{where})")
            else:
                log.line(f"ignoring {self.path}: it belongs to different settings (run {saved.get('run_id')})")
        self.check_agreement(state.iteration)
        return state

    def check_agreement(self, iteration: int) -> None:
        """Fail if the ranks resume from different iterations (a rank that saw another checkpoint would diverge)."""
        agreed = self.comm.max_(torch.tensor([iteration, -iteration], dtype=torch.long, device=self.device))
        if agreed[0] != -agreed[1]:
            raise ReproError(
                f"ranks disagree on the resume iteration ({int(-agreed[1])}..{int(agreed[0])}): is "
                f"{self.path.parent} on a file system shared by all nodes?"
            )

    def load_optimizer(self, saved: dict) -> None:
        """The saved optimizer state, run as this process's runtime says (fused or not), not as the saver's did."""
        flags = [{k: group[k] for k in RUNTIME_OPTIMIZER_FLAGS if k in group} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, kept in zip(self.optimizer.param_groups, flags, strict=True):
            group.update(kept)

    def restore_cuda_rng(self, states: list[Tensor] | Tensor | None, written_by: int) -> None:
        """This rank's CUDA generator state on its own device, when the checkpoint was written by as many processes
        (each rank has its own stream); otherwise the freshly seeded per-rank stream goes on."""
        if isinstance(states, Tensor):  # a single process's state, as checkpoints held it before one per rank
            states = [states]
        world = self.comm.world
        if self.device.type == "cuda" and states is not None and written_by == world.size == len(states):
            torch.cuda.set_rng_state(states[world.rank], self.device)

    def save(self, state: RunState) -> None:
        """Write the checkpoint (rank 0; every rank takes part in gathering the CUDA RNG states)."""
        cuda_rng = self.comm.gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        if not self.comm.world.main:
            return
        payload = {
            "run_id": self.run_id,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "state": state.to_plain(),
            "world_size": self.comm.world.size,
        }
        if cuda_rng is not None:
            payload["rng_cuda"] = cuda_rng  # one per rank, in rank order
        atomic_torch_save(payload, self.path)

    def remove(self) -> None:
        """The run is complete: its checkpoint is no longer a resume point (rank 0)."""
        if self.comm.world.main:
            self.path.unlink(missing_ok=True)
