"""The suite cleans up after itself: the process-group helpers of tests/conftest.py, and the leftover-process check
of .ci/run (run on a stand-in for workflow/scripts/test.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    kill_process_group,
    kill_processes,
    process_group_alive,
    processes_with_env,
    run_in_own_group,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")

# a parent that ignores SIGTERM, with a child (its own group member) that ignores it too
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print(flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kill_process_group_kills_what_ignores_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(proc.stdout.readline())
        assert _alive(child) and process_group_alive(proc.pid)
        start = time.monotonic()
        killed = kill_process_group(proc, grace=1.0)
        assert time.monotonic() - start < 10
        assert set(killed) == {proc.pid, child}
        assert proc.returncode is not None and not _alive(child) and not process_group_alive(proc.pid)
    finally:
        kill_process_group(proc, grace=0)
        proc.stdout.close()


def test_run_in_own_group_leaves_nothing_behind() -> None:
    token = f"cleanup-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "CLEANUP_TEST_TOKEN": token}
    result = run_in_own_group(["bash", "-c", "sleep 600 & echo started"], timeout=30, env=env)
    assert result.returncode == 0 and result.stdout == "started\n"
    assert processes_with_env(CLEANUP_TEST_TOKEN=token) == []
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_own_group(["bash", "-c", "sleep 600 & sleep 600"], timeout=1, env=env)
    assert processes_with_env(CLEANUP_TEST_TOKEN=token) == []


@pytest.fixture
def ci_copy(tmp_path: Path) -> Path:
    """.ci/run in a folder of its own, whose workflow/scripts/test.sh the test writes."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "workflow" / "scripts").mkdir(parents=True)
    return tmp_path


def _ci(root: Path, fake_test_sh: str) -> subprocess.CompletedProcess:
    (root / "workflow" / "scripts" / "test.sh").write_text(fake_test_sh)
    # SLURM daemons and job steps that start meanwhile belong to the SLURM tests on the other test worker
    env = {**os.environ, "CI_LEFTOVER_GRACE_S": "2", "CI_LEFTOVER_DAEMONS": "0"}
    return run_in_own_group(["bash", str(root / ".ci" / "run")], timeout=120, env=env)


def test_ci_run_fails_on_a_process_left_behind(ci_copy: Path) -> None:
    marker = f"left-behind-{time.monotonic_ns()}"
    # orphaned into a session of its own: only the token in its environment ties it to the run
    result = _ci(ci_copy, f"setsid bash -c 'exec -a {marker} sleep 600' </dev/null >/dev/null 2>&1 & exit 0\n")
    try:
        assert result.returncode == 1, result.stderr
        assert "left 1 process(es) running" in result.stderr and marker in result.stderr, result.stderr
    finally:
        _kill_marked(marker)


def test_ci_run_looks_again_at_a_process_whose_environment_reads_empty(ci_copy: Path) -> None:
    """Mid-exec, /proc/PID/environ reads empty: a leftover caught there must not pass for clean. Stretched here to a
    second: the process starts with no environment and gets the run's token back by an exec a second later."""
    marker = f"empty-then-token-{time.monotonic_ns()}"
    later = f"exec env RESNET_REPRO_CI_RUN=$RESNET_REPRO_CI_RUN bash -c 'exec -a {marker} sleep 600'"
    result = _ci(ci_copy, f'setsid env -i bash -c "sleep 1; {later}" </dev/null >/dev/null 2>&1 & exit 0\n')
    try:
        assert result.returncode == 1, result.stderr
        assert "left 1 process(es) running" in result.stderr and marker in result.stderr, result.stderr
    finally:  # the marker is in the first bash's command line too, should the check have ended before its exec
        _kill_marked(marker)


def test_ci_run_ignores_a_process_that_never_shows_an_environment(ci_copy: Path) -> None:
    marker = f"no-environment-{time.monotonic_ns()}"
    result = _ci(ci_copy, f"setsid env -i bash -c 'exec -a {marker} sleep 600' </dev/null >/dev/null 2>&1 & exit 0\n")
    try:
        assert result.returncode == 0 and "left" not in result.stderr, result.stderr
    finally:
        _kill_marked(marker)


def _kill_marked(marker: str) -> None:
    """Kill every process whose command line holds the marker (this test process's own never does)."""
    kill_processes([pid for pid, cmdline in _cmdlines().items() if marker in cmdline], grace=0)


def _cmdlines() -> dict[int, str]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
    return found


def test_ci_run_keeps_pytests_status_and_waits_for_stragglers(ci_copy: Path) -> None:
    failed = _ci(ci_copy, "exit 3\n")
    assert failed.returncode == 3 and "left" not in failed.stderr, failed.stderr
    straggler = _ci(ci_copy, "(sleep 1 &); exit 0\n")  # gone within the grace period
    assert straggler.returncode == 0, straggler.stderr
