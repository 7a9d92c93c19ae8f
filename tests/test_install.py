"""The package beside a machine's own torch: pip keeps a torch of the supported range, CI and the images keep the
exact pins of constraints.txt, and the tests' fixtures run from a checkout where the package is not installed.

A "machine's environment" here is a venv without pip whose site-packages reaches this environment's packages
through a .pth line (numpy, setuptools, pytest, ...): .pth files in a folder added that way are not run, so this
package's editable install is not seen, and a distribution placed in the venv's own site-packages comes first on
sys.path, so a fake torch of another version stands for the machine's torch. pip's resolver decides the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib
from conftest import REPO
from packaging.requirements import Requirement

CONSTRAINTS = REPO / "constraints.txt"


def exact_pins(path: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a constraints or lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip()):
            pins[match.group(1).lower()] = match.group(2)
    return pins


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {(req := Requirement(spec)).name.lower(): req for spec in project["dependencies"]}


def machine_environment(root: Path, installed: dict[str, str]) -> Path:
    """A venv that sees this environment's packages but not this package, with `installed` (name -> version) as
    distributions of its own; returns its interpreter."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "this-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for name, version in installed.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return python


def offline_pip_env() -> dict[str, str]:
    """No pip configuration and no package index: only what is installed can satisfy a requirement."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}


def project_copy(destination: Path) -> Path:
    """The files `pip install .` builds from, outside the checkout (metadata is built in the source tree)."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, destination / name)
    shutil.copytree(REPO / "src", destination / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return destination


def pip_install_dry_run(python: Path, project: Path, report: Path) -> subprocess.CompletedProcess:
    command = [str(python), "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation"]
    command += ["--report", str(report), str(project)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=offline_pip_env())


@pytest.mark.slow
def test_pip_install_keeps_a_machines_torch_in_the_supported_range(tmp_path: Path) -> None:
    lowest = {"torch": "2.11.0", "torchvision": "0.26.0"}  # the GPU machine's own build in issue 28
    python = machine_environment(tmp_path / "machine", lowest)
    project = project_copy(tmp_path / "project")
    result = pip_install_dry_run(python, project, tmp_path / "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    would_install = {
        item["metadata"]["name"].lower() for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    assert would_install == {"resnet-repro"}, would_install  # torch and torchvision stay as the machine has them


@pytest.mark.slow
def test_pip_install_refuses_a_torch_below_the_range(tmp_path: Path) -> None:
    # The contrast: the same environment one release lower is not accepted (no index here to fetch another).
    python = machine_environment(tmp_path / "machine", {"torch": "2.10.0", "torchvision": "0.25.0"})
    project = project_copy(tmp_path / "project")
    result = pip_install_dry_run(python, project, tmp_path / "report.json")
    assert result.returncode != 0 and "torch" in result.stderr, result.stdout + result.stderr


def test_exact_pins_lie_in_the_supported_range_and_ci_installs_them() -> None:
    pins, requirements = exact_pins(CONSTRAINTS), project_requirements()
    assert set(pins) == {"torch", "torchvision"}
    for name, version in pins.items():
        assert requirements[name].specifier.contains(version), (name, version, str(requirements[name]))
        assert "==" not in str(requirements[name].specifier), f"pyproject.toml pins {name}: a range is wanted"
    assert "-c constraints.txt" in (REPO / "workflow" / "scripts" / "setup_env.sh").read_text()
    images = exact_pins(REPO / "containers" / "requirements-torch.lock")
    assert {name: images[name] for name in pins} == pins  # the images' torch is CI's
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():  # CI's environment, made by setup_env.sh
        import torch
        import torchvision

        installed = {"torch": torch.__version__, "torchvision": torchvision.__version__}
        assert {name: version.split("+")[0] for name, version in installed.items()} == pins


@pytest.mark.slow
def test_the_gpu_tests_fixtures_run_without_the_package_installed(tmp_path: Path) -> None:
    """What benchmarks/gpu_check.sh does on a GPU machine: its own Python (no `resnet-repro` script, the package
    not installed), PYTHONPATH=src; the session fixture `digits_dir` runs the CLI all the same."""
    python = machine_environment(tmp_path / "machine", {})
    assert not (python.parent / "resnet-repro").exists()
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text("def test_digits(digits_dir):\n    assert (digits_dir / 'meta.json').is_file()\n")
    env = dict(offline_pip_env(), PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}")
    command = [str(python), "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", str(probe)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=probe.parent)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
