"""The resumable state of a run: position, warm-up, tallies, history and epoch rows, as plain values. Torch-free.

checkpoint.pt (resnet_repro.checkpoint) holds it as plain Python values (`RunState.to_plain`), so that
`torch.load(weights_only=True)` reads it back without unpickling code. The plain layout is the one checkpoints have
had since they carried their wall time and RNG state: such checkpoints resume; older ones are refused with one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DataError
from .settings import TrainSettings

# What a checkpoint must hold to be resumed (besides the run state).
CHECKPOINT_KEYS = ("run_id", "model", "optimizer", "rng_cpu", "state", "world_size")


@dataclass
class Tally:
    """Per-iteration losses and wrong predictions since the tally was last taken. Summed with math.fsum when taken,
    so where a stop split the windows it came in cannot change a single bit."""

    losses: list[float] = field(default_factory=list)
    wrong: int = 0

    def add(self, losses: list[float], wrong: int) -> None:
        self.losses.extend(losses)
        self.wrong += wrong

    def take(self, batch: int) -> tuple[float, float]:
        """Mean loss and error (per sample of `batch`-sized steps) since the last take; start afresh."""
        loss, error = math.fsum(self.losses) / len(self.losses), self.wrong / (len(self.losses) * batch)
        self.losses, self.wrong = [], 0
        return loss, error


# The checkpoint's names of the tallies (kept from the dict layout checkpoints had before RunState).
TALLY_KEYS = {"interval": "interval", "epoch": "epoch_acc", "block": "block"}


@dataclass
class RunState:
    """Where a run is: what checkpoint.pt saves and a resumed run continues from."""

    iteration: int = 0
    warmup_done: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)  # history.csv's rows (runfiles.HistoryRow)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epochs.csv's rows (runfiles.EpochRow)
    interval: Tally = field(default_factory=Tally)  # since the last history row
    epoch: Tally = field(default_factory=Tally)  # since the last epoch end
    block: Tally = field(default_factory=Tally)  # since the last check aligned to check_every
    wall_s: float = 0.0  # wall-clock seconds of every attempt so far, evaluation and compilation included
    last_checkpoint: int = 0  # the iteration of the newest checkpoint written, 0 for none

    @classmethod
    def fresh(cls, settings: TrainSettings) -> RunState:
        return cls(warmup_done=settings.warmup is None)

    def add(self, losses: list[float], wrong: int) -> None:
        """Checked per-iteration losses and wrong counts, into every tally."""
        for name in TALLY_KEYS:
            getattr(self, name).add(losses, wrong)

    def to_plain(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in TALLY_KEYS}
        for name, key in TALLY_KEYS.items():
            tally = getattr(self, name)
            plain[key] = {"losses": list(tally.losses), "wrong": tally.wrong}
        return plain

    @classmethod
    def from_plain(cls, plain: dict[str, Any], source: Path) -> RunState:
        """The state saved in checkpoint `source`; refused with one line if it is not of this layout."""
        names = [f.name for f in fields(cls) if f.name not in TALLY_KEYS and f.name != "last_checkpoint"]
        missing = [key for key in (*names, *TALLY_KEYS.values()) if key not in plain]
        if missing:
            raise DataError(
                f"{source} was written by an older resnet-repro (its state lacks {', '.join(missing)}); delete it "
                "to train this run from the start"
            )
        tallies = {
            name: Tally(list(plain[key]["losses"]), int(plain[key]["wrong"])) for name, key in TALLY_KEYS.items()
        }
        kept = {name: plain[name] for name in names}
        return cls(**kept, **tallies, last_checkpoint=int(plain.get("last_checkpoint", 0)))


def check_resumable(saved: dict, path: Path) -> None:
    """Refuse, with one line, a checkpoint that lacks what resuming needs."""
    missing = [key for key in CHECKPOINT_KEYS if key not in saved]
    if missing:
        raise DataError(
            f"{path} was written by an older resnet-repro (it lacks {', '.join(missing)}); delete it to train this "
            "run from the start"
        )
