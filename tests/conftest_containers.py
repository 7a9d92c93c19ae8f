"""Helpers and fixtures for tests that build or run the container images (marker `container`).

Reuse them from another test module with

    from conftest_containers import ensure_built_images, image_uri, run_snakemake, stand_in_env

    @pytest.fixture(scope="session")
    def built_images():
        return ensure_built_images()

`ensure_built_images()` runs containers/build.sh once per pytest process (it is idempotent and
cached: seconds when nothing changed) and returns
{"train": "localhost/resnet-repro-train:<VERSION>", "render": ...}; it skips the test only when
podman is missing and cannot be installed (not root, or no apt-get), and fails it when an image's
package source (label org.resnet-repro.source-sha256) is not the working tree's.

Apptainer is not installable on the CI machine: `stand_in_env()` puts tests/container/ first on
PATH, where `apptainer` is a TEST-ONLY STAND-IN that runs `apptainer exec IMAGE CMD` as
`podman run ... IMAGE CMD` (see that script). Snakemake's `--sdm apptainer` then really runs each
rule's command inside its podman image.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
STAND_IN_DIR = ROOT / "tests" / "container"
IMAGES = ("train", "render")


def image_version() -> str:
    """The images' version tag: containers/VERSION is the only place it is set."""
    return (CONTAINERS / "VERSION").read_text().strip()


def image_tag(name: str) -> str:
    """Podman reference of a built image, e.g. localhost/resnet-repro-train:0.1.0."""
    return f"localhost/resnet-repro-{name}:{image_version()}"


def image_uri(name: str) -> str:
    """What a Snakefile's `container:` directive names, e.g. docker://localhost/resnet-repro-train:0.1.0."""
    return f"docker://{image_tag(name)}"


SOURCE_LABEL = "org.resnet-repro.source-sha256"


def source_sha256(root: Path = ROOT) -> str:
    """Hash of the package source the images' package layer copies; the same as containers/build.sh
    computes (sha256sum of every file of src/ but __pycache__, pyproject.toml and README.md, sorted
    by path in byte order, then sha256 of that listing) and stores as the image label SOURCE_LABEL."""
    files = [
        p
        for p in (root / "src").rglob("*")
        if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    ]
    files += [root / name for name in ("pyproject.toml", "README.md") if (root / name).is_file()]
    rels = sorted((p.relative_to(root).as_posix() for p in files), key=lambda rel: rel.encode())
    listing = "".join(f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}\n" for rel in rels)
    return hashlib.sha256(listing.encode()).hexdigest()


def image_label(tag: str, label: str) -> str:
    proc = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', tag)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def stand_in_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which `apptainer` is the test-only podman stand-in (first on PATH)."""
    env = dict(os.environ if base is None else base)
    # the interpreter's bin folder too, so `snakemake` and the pytest venv's tools are found
    env["PATH"] = os.pathsep.join([str(STAND_IN_DIR), str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def podman(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def podman_run(image: str, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`podman run --rm IMAGE CMD...` (the image's own user, no binds)."""
    return podman("run", "--rm", "--network=host", image, *cmd, timeout=timeout)


def run_snakemake(
    workdir: Path, *args: str, sdm: str | None = "apptainer", cores: int = 1, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `snakemake [--sdm SDM] --cores N ARGS...` in workdir with the stand-in on PATH."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", str(cores), "--directory", str(workdir)]
    if sdm:  # last: --sdm takes several values and would swallow targets after it
        cmd += ["--sdm", sdm]
    return subprocess.run(cmd, cwd=workdir, env=stand_in_env(), capture_output=True, text=True, timeout=timeout)


def podman_installable() -> tuple[bool, str]:
    if shutil.which("podman"):
        return True, ""
    if os.geteuid() != 0:
        return False, "podman is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return False, "podman is not installed and there is no apt-get to install it"
    return True, ""


@functools.cache
def _build(images: str) -> tuple[int, str]:
    """Run containers/build.sh once per process; returns (exit status, log tail)."""
    log = ROOT / ".pytest_cache" / "containers-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        rc = subprocess.run(
            ["bash", str(CONTAINERS / "build.sh")],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "IMAGES": images},
            timeout=1800,
        ).returncode
    lines = log.read_text(errors="replace").splitlines()
    return rc, "\n".join(lines[-40:]) + f"\n(full log: {log})"


def ensure_built_images() -> dict[str, str]:
    """Build (or confirm cached) both images once per process; {"train": tag, "render": tag}.
    Skips the calling test only when podman is missing and cannot be installed; fails it, with
    the end of the build log, when containers/build.sh fails."""
    ok, why = podman_installable()
    if not ok:
        pytest.skip(why)
    rc, tail = _build(" ".join(IMAGES))
    if rc != 0:
        pytest.fail(f"containers/build.sh failed (exit {rc}):\n{tail}", pytrace=False)
    tags = {name: image_tag(name) for name in IMAGES}
    # The images hold an installed copy of the package: a test must not run yesterday's code.
    want = source_sha256()
    for tag in tags.values():
        have = image_label(tag, SOURCE_LABEL)
        if have != want:
            pytest.fail(
                f"{tag} holds package source {have or '(no label)'}, the working tree is {want}: the image is "
                "stale (was src/ changed while containers/build.sh ran?); re-run containers/build.sh",
                pytrace=False,
            )
    return tags
