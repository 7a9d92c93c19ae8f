"""Shared fixtures: the CLI as a real process, generated datasets in the official layouts, a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

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


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600, **env: str):
    """Run `resnet-repro ARGS` as a real process; return the CompletedProcess."""
    result = subprocess.run(
        [str(BIN / "resnet-repro"), *args], cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"resnet-repro {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


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
