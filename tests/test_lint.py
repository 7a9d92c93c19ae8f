"""The workflow lints in a bare environment, as Snakemake's workflow catalog lints it: a venv holding only
Snakemake, snakefmt and what the planning layer imports (PyYAML, jsonschema, numpy), without the package installed,
so the Snakefile finds resnet_repro in the checkout's src/ (and never needs torch to plan)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

# What planning imports besides the standard library: resnet_repro.plan reads YAML and checks the schema, and
# resnet_repro.data (its dataset archives table) imports numpy. Pinned to this environment's versions.
PLANNING_DEPENDENCIES = ("pyyaml", "jsonschema", "numpy")
# pyproject.toml holds snakefmt's settings (line length).
WORKSPACE = ("Snakefile", "workflow", "config.yaml", "dvc.yaml", "pyproject.toml", "src", "containers/VERSION")


def pinned(name: str) -> str:
    """The project's own pin of a tool (pyproject.toml's optional dependencies): one place for its version."""
    pins = re.findall(rf'"({re.escape(name)}==[^"]+)"', (REPO / "pyproject.toml").read_text())
    assert len(pins) == 1, f"pyproject.toml pins {name} {len(pins)} times"
    return pins[0]


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("bare-lint") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    requirements = [pinned("snakemake"), pinned("snakefmt")]
    requirements += [f"{name}=={version(name)}" for name in PLANNING_DEPENDENCIES]
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return venv


def bare_env(venv: Path, home: Path) -> dict[str, str]:
    """No PYTHONPATH and no project venv on PATH: only the bare venv and the system's tools."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The workflow's files as a clone has them, outside the repository (lint may refresh dvc.yaml)."""
    root = tmp_path / "clone"
    for name in WORKSPACE:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    return root


@pytest.mark.slow
def test_lint_and_snakefmt_pass_without_the_package_installed(bare_venv: Path, workspace: Path, tmp_path: Path) -> None:
    env = bare_env(bare_venv, tmp_path / "home")
    python = str(bare_venv / "bin" / "python")
    for module in ("resnet_repro", "torch"):
        probe = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{module} is importable in the venv"

    lint = subprocess.run(
        [str(bare_venv / "bin" / "snakemake"), "--lint"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output[-4000:]
    assert "Congratulations, your workflow is in a good condition!" in output and "Lints for" not in output, output

    fmt = subprocess.run(
        [str(bare_venv / "bin" / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
