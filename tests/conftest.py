"""Shared fixtures: the CLI as a real process, generated datasets in the official layouts, a loopback server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------------------- parallel runs
# `pytest -n 2 --dist loadfile` (workflow/scripts/test.sh) runs each test file on one worker, in order, so module
# fixtures are built once. The SLURM tests (tests/test_slurm*.py, and only there) share the one local cluster
# (2 cores, 2 GPU slots): the scheduler below keeps all of them on one worker, one after another and first, since
# together they take longest and mostly wait on the SLURM plugin's status polls, which the other worker fills with
# CPU-bound tests.
SLURM_FILES = "test_slurm"


def _is_slurm_file(nodeid: str) -> bool:
    return Path(nodeid.split("::", 1)[0]).name.startswith(SLURM_FILES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced = [item.nodeid for item in items if item.get_closest_marker("slurm") and not _is_slurm_file(item.nodeid)]
    if misplaced:
        raise pytest.UsageError(f"SLURM tests belong in tests/{SLURM_FILES}*.py (they must never overlap): {misplaced}")
    items.sort(key=lambda item: not _is_slurm_file(item.nodeid))  # stable: otherwise in collection order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesWithSlurmTogether(LoadScopeScheduling):
        """--dist loadfile, with every SLURM test file in one scope; scopes in collection order (SLURM first)."""

        def _split_scope(self, nodeid: str) -> str:
            return SLURM_FILES if _is_slurm_file(nodeid) else nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False
    return FilesWithSlurmTogether(config, log)


# What the machine's CUDA_VISIBLE_DEVICES was when the tests started (None: unset): the GPU tests get it back.
MACHINE_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="session", autouse=True)
def _cpu_for_the_session() -> Iterator[None]:
    """Every test not marked `gpu` runs on the CPU whatever the machine has: an empty CUDA_VISIBLE_DEVICES (no GPUs,
    no GPU slots) from the start of the session, so that module- and session-wide fixtures (a whole `snakemake all`)
    and every process they start run on the CPU too. A test that sets its own value (cli_env(CUDA_VISIBLE_DEVICES=
    ...)) keeps it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _machine_gpus_for_gpu_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked `gpu` sees the machine's GPUs, as its processes would outside the tests."""
    if request.node.get_closest_marker("gpu") is None:
        return
    if MACHINE_CUDA_VISIBLE_DEVICES is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MACHINE_CUDA_VISIBLE_DEVICES)


def cli_installed() -> bool:
    """Whether the `resnet-repro` console script is installed beside this interpreter. benchmarks/gpu_check.sh runs
    the GPU tests with a machine's own Python and torch, where the package is not installed (PYTHONPATH=src)."""
    return (BIN / "resnet-repro").is_file()


def cli_command() -> list[str]:
    """How to start `resnet-repro`: the console script, else this checkout's package through this interpreter."""
    return [str(BIN / "resnet-repro")] if cli_installed() else [sys.executable, "-m", "resnet_repro.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if not cli_installed():  # `python -m resnet_repro.cli` imports the package from this checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600, **env: str):
    """Run `resnet-repro ARGS` as a real process; return the CompletedProcess."""
    result = subprocess.run(
        [*cli_command(), *args], cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"resnet-repro {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


# ---------------------------------------------------------------------------------------- process clean-up
# No process a test starts may outlive it. A test that starts a long-lived process starts it in a session (and so
# a process group) of its own (`start_new_session=True`) and hands it to `kill_at_teardown`, or kills the group
# itself in a `finally` with `kill_process_group`: SIGTERM to the whole group, a few seconds' grace, then SIGKILL.
# (SLURM job processes are children of slurmstepd, not of the test: the SLURM tests `scancel` their jobs.)
def group_parents(pgid: int) -> dict[int, int]:
    """The live (not zombie) processes in process group pgid, each with its parent's pid."""
    members = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
                state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members[int(entry.name)] = int(ppid)
    return members


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group pgid."""
    return list(group_parents(pgid))


def process_group_alive(pgid: int) -> bool:
    if os.path.isdir("/proc/self"):
        return bool(_group_members(pgid))
    try:  # no /proc: a zombie counts as alive here
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_process_group(proc: subprocess.Popen | int, grace: float = 5.0) -> list[int]:
    """Stop every process in the group led by proc (started with start_new_session=True): SIGTERM, up to `grace`
    seconds for them to exit, then SIGKILL. Reaps proc. Returns the pids that were still alive for SIGKILL."""
    pgid = proc if isinstance(proc, int) else proc.pid

    def reap() -> None:
        if not isinstance(proc, int):
            proc.poll()

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    reap()
    killed: list[int] = []
    if process_group_alive(pgid):
        signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            if not process_group_alive(pgid):
                break
            time.sleep(0.1)
        else:
            killed = _group_members(pgid) if os.path.isdir("/proc/self") else [pgid]
            signal_group(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process_group_alive(pgid):
                reap()
                time.sleep(0.05)
    if not isinstance(proc, int):
        with contextlib.suppress(subprocess.TimeoutExpired):  # it is in the group: SIGKILL reached it
            proc.wait(timeout=10)
    return killed


def kill_processes(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM to each of pids, up to `grace` seconds for them to exit, then SIGKILL to those still alive (for
    processes that are not in one group of ours). Returns the pids that got SIGKILL."""

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    def send(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    send(survivors, signal.SIGKILL)
    return survivors


def processes_with_env(**wanted: str | set[str]) -> list[int]:
    """Pids of the live processes (that we may read) whose environment has every NAME=value given (a set: any of
    its values). E.g. SLURM job processes: processes_with_env(SLURM_JOB_ID={"12", "13"})."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if all(env.get(name) in (value if isinstance(value, set) else {value}) for name, value in wanted.items()):
            found.append(int(entry.name))
    return found


_AT_TEARDOWN: list[Callable[[], object]] = []


def kill_at_teardown(proc: subprocess.Popen) -> subprocess.Popen:
    """Kill proc's process group (kill_process_group) when the current test ends, whatever its outcome."""
    _AT_TEARDOWN.append(lambda: kill_process_group(proc))
    return proc


def at_teardown(action: Callable[[], object]) -> None:
    """Run action when the current test ends, whatever its outcome (last registered, first run)."""
    _AT_TEARDOWN.append(action)


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    errors = []
    while _AT_TEARDOWN:
        try:
            _AT_TEARDOWN.pop()()
        except Exception as error:  # run every clean-up; report the first failure
            errors.append(error)
    if errors:
        raise errors[0]


def run_in_own_group(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, ...) in a session of its own: once cmd has exited (or
    at the timeout: TimeoutExpired) whatever it started and left behind is killed (kill_process_group). Output goes
    through files, not pipes, so a background process that inherited them cannot keep this waiting."""

    def text(f: IO[bytes]) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, **kwargs)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
            raise subprocess.TimeoutExpired(cmd, timeout, text(out), text(err)) from None
        finally:
            kill_process_group(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, text(out), text(err))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ official CIFAR archive layout
def _pickle_bytes(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_cifar_archive(
    path: Path, dataset: str = "cifar10", per_batch: int = 20, test: int = 30, seed: int = 0
) -> Path:
    """A small archive in the exact layout of the official python-version CIFAR tarballs: the same folder and
    member names, pickled dicts with bytes keys, uint8 rows of 3072 values (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    if dataset == "cifar10":
        root = "cifar-10-batches-py"
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        for i in range(1, 6):
            members[f"{root}/data_batch_{i}"] = _pickle_bytes(
                {
                    b"batch_label": f"training batch {i} of 5".encode(),
                    b"labels": rng.integers(0, 10, per_batch).tolist(),
                    b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)],
                }
            )
        members[f"{root}/test_batch"] = _pickle_bytes(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": rng.integers(0, 10, test).tolist(),
                b"data": rng.integers(0, 256, (test, 3072), dtype=np.uint8),
                b"filenames": [f"test_{k}.png".encode() for k in range(test)],
            }
        )
        members[f"{root}/batches.meta"] = _pickle_bytes({b"label_names": names, b"num_cases_per_batch": per_batch})
        members[f"{root}/readme.html"] = b"<html>CIFAR-10</html>"
    else:
        root = "cifar-100-python"
        for split, count in (("train", per_batch * 5), ("test", test)):
            members[f"{root}/{split}"] = _pickle_bytes(
                {
                    b"filenames": [f"{split}_{k}.png".encode() for k in range(count)],
                    b"batch_label": f"{split} batch".encode(),
                    b"fine_labels": rng.integers(0, 100, count).tolist(),
                    b"coarse_labels": rng.integers(0, 20, count).tolist(),
                    b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                }
            )
        members[f"{root}/meta"] = _pickle_bytes(
            {
                b"fine_label_names": [f"class{k}".encode() for k in range(100)],
                b"coarse_label_names": [f"super{k}".encode() for k in range(20)],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(root)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar_archive(tmp_path_factory.mktemp("archives") / "cifar-10-python.tar.gz")


# -------------------------------------------------------------------------------------------- loopback HTTP
class _Handler(http.server.SimpleHTTPRequestHandler):
    failures_left: dict[str, int] = {}  # path -> number of 503 answers before serving
    lie_length: set[str] = set()  # paths whose Content-Length claims more than is sent

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        left = self.failures_left.get(self.path, 0)
        if left:
            self.failures_left[self.path] = left - 1
            self.send_error(503, "try again")
            return
        if self.path in self.lie_length:
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 5000))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path, type[_Handler]]]:
    """A server on 127.0.0.1 serving a temporary folder: (base URL, folder, handler class for fault injection)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(_Handler):
        failures_left: dict[str, int] = {}
        lie_length: set[str] = set()

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, Handler
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "digits"
    run_cli("prepare", "digits", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def cifar10_jpeg_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real JPEG CIFAR-10 copy from ../shared/data, prepared once per session (skips when absent)."""
    if not CIFAR10_JPEG.is_file():
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz not present")
    out = tmp_path_factory.mktemp("real") / "cifar10"
    run_cli("prepare", "imagefolder", "--raw", str(CIFAR10_JPEG), "--out", str(out), timeout=1200)
    return out
