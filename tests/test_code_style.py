"""The code as a contributor finds it: ruff-clean Python, snakefmt-formatted workflow files, and an install that
prints no deprecation warning from the project's own metadata."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import BIN, REPO, cli_env

WORKFLOW_FILES = ["Snakefile", "workflow/rules"]


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_python_passes_ruff() -> None:
    for argv in (["check"], ["format", "--check"]):
        result = run(str(BIN / "ruff"), *argv, "src", "tests", "benchmarks")
        assert result.returncode == 0, f"ruff {' '.join(argv)}:\n{result.stdout}{result.stderr}"


def test_workflow_files_pass_snakefmt() -> None:
    result = run(str(BIN / "snakefmt"), "--check", *WORKFLOW_FILES)
    assert result.returncode == 0, f"snakefmt --check (run `snakefmt Snakefile workflow/rules`):\n{result.stderr}"


def test_building_the_package_prints_no_deprecation_warning(tmp_path: Path) -> None:
    """pip -v shows what the build backend says about pyproject.toml (e.g. setuptools' warning about
    `project.license` as a table): none of it may be a deprecation."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "src"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    result = run(
        str(BIN / "python"),
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(tmp_path / "wheel"),
        str(source),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "deprecat" in line.lower()]
    assert not warnings, "\n".join(warnings)
    assert list((tmp_path / "wheel").glob("resnet_repro-*.whl"))
