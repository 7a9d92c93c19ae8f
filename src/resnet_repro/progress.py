"""The progress log of a run: plain lines always, and a live bar (tqdm) on a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class ProgressLog:
    """Plain lines at each evaluation (and for events), always; on a terminal also a live bar (tqdm) with the rate,
    ETA and the latest train and test error. Off a terminal (files, cluster logs) the lines are all there is.
    `quiet`: say nothing (the other ranks of a data-parallel run, which would repeat rank 0's every line)."""

    def __init__(self, total: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total, self.stream, self.quiet = total, stream or sys.stderr, quiet  # looked up now, not at import
        self.tty = not quiet and self.stream.isatty()
        self._bar: Any = None
        self._train, self._test = "", ""  # the bar's latest train and test figures

    def start(self, iteration: int) -> None:
        """Show the bar from `iteration` on (a resumed run starts part-way); nothing off a terminal."""
        if self.tty and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=iteration, file=self.stream, unit="it", dynamic_ncols=True, smoothing=0.1
            )

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # above the bar, which is redrawn below it
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, iteration: int, loss: float, error: float) -> None:
        if self._bar is None:
            return
        self._train = f"loss {loss:.3f} err {error:.3f}"
        self._bar.set_postfix_str(self._train + self._test, refresh=False)
        self._bar.update(iteration - self._bar.n)

    def tested(self, name: str, error: float) -> None:
        self._test = f" | {name} err {error:.3f}"
        if self._bar is not None:
            self._bar.set_postfix_str(self._train + self._test, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
