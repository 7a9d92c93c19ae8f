"""Stopping a benchmark on SIGTERM so that it still writes what it measured (`timeout` signals a whole process group).

Imports nothing heavy: bench_packing.py, which only starts trainer processes, uses it too.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Stopped(Exception):
    """SIGTERM (e.g. from `timeout`): stop measuring, still print and write what was measured."""


_deferring = False  # inside `stop_deferred`: a stop waits in _pending for the block to end
_pending: str | None = None


def _stop(signum: int, _frame: object) -> None:
    global _pending
    # Once: a second signal must not cut short the writing of what was measured.
    signal.signal(signum, signal.SIG_IGN)
    if _deferring:
        _pending = signal.Signals(signum).name
        return
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """A stop signal that arrives within the block raises `Stopped` when the block ends, not inside it. For fetching
    a DataLoader batch: one cut short mid-transfer leaves the worker's file-descriptor server (multiprocessing's
    resource sharer) talking to nobody, and it prints a ConnectionResetError traceback among what the benchmark
    prints (seen in CI)."""
    global _deferring, _pending
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
    if _pending is not None and not outer:
        name, _pending = _pending, None
        raise Stopped(name)


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises `Stopped` in this process's main thread."""
    signal.signal(signal.SIGTERM, _stop)


def ignore_stop_signals(_worker_id: int) -> None:
    """A DataLoader's worker_init_fn. `timeout` sends SIGTERM to the whole process group: a worker that died of it
    would make the loader raise "DataLoader worker ... killed by signal: Terminated" in the main process instead of
    `Stopped`. Workers ignore it (and Ctrl-C's SIGINT) and end when the main process shuts its loader down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
