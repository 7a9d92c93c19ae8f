"""Config values are data, never shell: whatever string a config field holds, each generated stage command runs
exactly the intended argv (or config checking refuses the value with one line naming its key), and a value that
looks like shell code is never executed, not even by `dvc repro`."""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, make_cifar_archive, run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_pipeline import TINY_CONFIG, make_workspace, sh

from resnet_repro.errors import ConfigError
from resnet_repro.paths import SUMMARY_DIR, experiment_dir, prepared_dir
from resnet_repro.plan import build_plan, validate_config
from resnet_repro.render.outputs import response_runs
from resnet_repro.shell import command
from resnet_repro.stages import archive_file, dvc_stages, dvc_yaml_text

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
INJECTION = "file:///x/cifar-10-python.tar.gz; touch INJECTED; echo"  # the value from issue 15


def dvc_argv(cmd: str) -> list[str]:
    """The argv DVC runs for a stage `cmd`: its templating (`${...}`, `\\${`) resolved, one command line, then
    split as the shell does."""
    from dvc.parsing.context import Context

    resolved = Context().resolve_str(cmd)
    assert len(resolved.splitlines()) == 1, f"DVC would run {cmd!r} as several commands"
    return shlex.split(resolved)


# ------------------------------------------------------------------------------------------- the helper
@pytest.mark.parametrize(
    "value",
    ["plain", "", "a b", "it's", '"', "; touch INJECTED", "$(touch INJECTED)", "`x`", "${HOME}", "\\${x}", "\\", "é"],
)
def test_command_keeps_each_part_one_argument(value: str) -> None:
    argv = ["resnet-repro", "fetch", value, "--seed", 3, Path("data/x y")]
    assert dvc_argv(command(*argv)) == [str(part) for part in argv]


def test_command_leaves_plain_words_as_they_are_and_refuses_what_no_command_can_carry() -> None:
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert command("fetch", "--source", url, "--seed", 0) == f"fetch --source {url} --seed 0"
    # Words a shell would expand although shlex.quote leaves them bare: zsh's `=cmd`, bash's `x=~/y` argument.
    assert command("=ls", "a=~/b", "~x") == "'=ls' 'a=~/b' '~x'"
    for bad in ("a\nb", "a\rb", "a\u2028b", "a\x00b"):
        with pytest.raises(ValueError, match="line break or NUL"):
            command("echo", bad)
    with pytest.raises(TypeError):
        command("echo", None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- property: argv is intended
# Shell and DVC syntax, quotes, whitespace, non-ASCII letters; then what no command can carry (DVC splits a command
# into lines with str.splitlines, and no argv holds a NUL).
SHELL_BITS = [";", "&&", "|", "$(touch X)", "`x`", "${HOME}", "\\${x}", "$HOME", "'", '"', "\\", " ", "\t", "*", "?"]
SHELL_BITS += ["#", "~", "=", "-", "!", "<", ">", "(", ")", "{", "}", "[", "]", "é", "日本", "%20", "=ls", "a=~/b"]
BREAKING = ["\n", "\r\n", "\x00", "\u2028", "\x85", "\f", "\x1e"]
LINE_SAFE = st.characters(exclude_characters="\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00")


def _words(bits: list[str], alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    parts = st.one_of(st.text(alphabet, max_size=8), st.sampled_from(bits))
    return st.lists(parts, min_size=1, max_size=6).map("".join)


# Values a command can carry (most are accepted), and anything at all (most are refused).
carried = _words(SHELL_BITS, LINE_SAFE).map(lambda s: s if s and not s.startswith("-") else f"x{s}")
anything = _words(SHELL_BITS + BREAKING, st.characters())
PREFIXES = ["https://h/", "http://h/", "file:///", "file://", "", "C:"]
good_sources = st.tuples(st.sampled_from(PREFIXES), carried).map("".join)
any_sources = st.tuples(st.sampled_from([*PREFIXES, "http://", "ftp://h/", "s3://b/"]), anything).map("".join)
good_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True)


def _config(source: str, folder: str, imagenet: str, name: str) -> dict:
    return {
        "all": [name, "own", "inet"],
        "datasets": {"cifar10": {"source": source}, "mine": {"path": folder}, "imagenet": {"path": imagenet}},
        "experiments": {
            name: {"dataset": "cifar10", "schedule": "demo", "models": {"resnet8": {}, "plain8": {}}},
            "own": {"dataset": "mine", "schedule": "demo", "models": {"resnet8": {}}},
            "inet": {"dataset": "imagenet", "schedule": "imagenet_paper", "models": {"resnet18": {}}},
        },
    }


def _refused(source: str, folder: str, imagenet: str, name: str) -> set[str]:
    """The keys whose values must be refused, by the rules of issue 15 (independent of the code under test)."""
    keys = set() if source else {"datasets.cifar10.source"}  # the schema wants one character at least
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        keys.add("experiments")
    for key, value in (("cifar10.source", source), ("mine.path", folder), ("imagenet.path", imagenet)):
        if "\0" in value or len(f"x{value}x".splitlines()) > 1 or value.startswith("-"):
            keys.add(f"datasets.{key}")
    try:
        parts = urllib.parse.urlsplit(source)
        if (parts.scheme in ("http", "https") and not parts.netloc) or (
            parts.scheme not in ("http", "https", "file", "") and len(parts.scheme) != 1
        ):
            keys.add("datasets.cifar10.source")
    except ValueError:
        keys.add("datasets.cifar10.source")
    if not imagenet:
        keys.add("datasets.imagenet.path")  # enabled ImageNet experiment without a path
    return keys


def _intended(plan, source: str, folder: str, imagenet: str) -> dict[str, list[str]]:
    """Every stage's argv as meant: config values as single arguments, in their places."""
    argv = {
        "fetch-cifar10": ["fetch", "cifar10", "--source", source, "--out", archive_file("cifar10")],
        "prepare-cifar10": ["prepare", "cifar10", "--raw", archive_file("cifar10"), "--out", prepared_dir("cifar10")],
        "prepare-mine": ["prepare", "imagefolder", "--raw", folder, "--out", prepared_dir("mine")],
        "index-imagenet": ["index-imagenet", "--path", imagenet, "--out", prepared_dir("imagenet")],
        "summary": ["summary", "--config", "config.yaml", "--out", SUMMARY_DIR],
        "plan": ["plan", "--config", "config.yaml"],
    }
    for name, runs in plan.experiments.items():
        argv[f"render-{name}"] = ["render", "--config", "config.yaml", "--experiment", name]
        argv[f"render-{name}"] += ["--out", experiment_dir(name)]
        for run in response_runs(plan, name):
            argv[f"responses-{run.key}"] = ["responses", "--run", run.folder, "--data", run.prepared]
            argv[f"responses-{run.key}"] += ["--out", run.responses]
        for run in runs:
            spec = ["--settings", run.settings_file]
            train = [*spec, "--data", run.prepared, "--out", run.folder]
            if run.dataset == "imagenet":
                argv[f"train-{run.key}"] = ["launch", *spec, "--", "train-imagenet", *train]
            else:
                argv[f"train-{run.key}"] = ["train", *train]
            evaluate = "evaluate-imagenet" if run.dataset == "imagenet" else "evaluate"
            argv[f"evaluate-{run.key}"] = [evaluate, "--run", run.folder, "--data", run.prepared]
    return {stage: ["resnet-repro", *words] for stage, words in argv.items()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=good_sources, folder=carried, imagenet=carried, name=good_names)
def test_any_string_a_command_can_carry_reaches_it_as_one_argument(
    source: str, folder: str, imagenet: str, name: str
) -> None:
    _check_commands(source, folder, imagenet, name)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=any_sources, folder=anything, imagenet=anything, name=st.one_of(good_names, anything))
def test_any_string_at_all_is_one_argument_or_refused_with_its_key(
    source: str, folder: str, imagenet: str, name: str
) -> None:
    _check_commands(source, folder, imagenet, name)


def _check_commands(source: str, folder: str, imagenet: str, name: str) -> None:
    """Either config checking refuses exactly what it should (one line naming a key), or every stage command of
    the plan (build_plan with check_paths=False) runs its intended argv, also after a round trip through YAML."""
    if name in ("own", "inet"):
        name = f"x{name}"
    config = _config(source, folder, imagenet, name)
    refused = _refused(source, folder, imagenet, name)
    try:
        validate_config(config, SCHEMA)
        plan = build_plan(config, check_paths=False)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and "Traceback" not in message
        key = message.removeprefix("config: ").split(":")[0]
        assert key in refused, (message, refused)
        event(f"refused: {key}")
        return
    assert not refused, f"accepted although {refused} should be refused"
    event("accepted")
    intended = _intended(plan, source, folder, imagenet)
    stages = dvc_stages(plan)
    assert set(stages) == set(intended)
    for stage, definition in stages.items():
        assert dvc_argv(definition["cmd"]) == intended[stage], stage
    written = yaml.safe_load(dvc_yaml_text(plan))["stages"]
    assert {stage: d["cmd"] for stage, d in written.items()} == {stage: d["cmd"] for stage, d in stages.items()}


def test_a_source_is_checked_when_the_config_is() -> None:
    config = _config("ftp://mirror/cifar-10-python.tar.gz", "imgs", "/inet", "cifar")
    with pytest.raises(ConfigError, match=r"^config: datasets\.cifar10\.source: unsupported source 'ftp://"):
        build_plan(config, check_paths=False)
    config = _config("/nowhere/cifar-10-python.tar.gz", "imgs", "/inet", "cifar")
    build_plan(config, check_paths=False)  # existence is a question for check_paths only
    del config["experiments"]["inet"], config["experiments"]["own"]
    config["all"] = ["cifar"]
    with pytest.raises(ConfigError, match=r"^config: datasets\.cifar10\.source: /nowhere/cifar-10.* does not exist$"):
        build_plan(config, check_paths=True)


# ------------------------------------------------------------------------------------ the issue's injection
def _config_with_cifar(source: str) -> dict:
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    config["datasets"]["cifar10"] = {"source": source}
    config["experiments"]["cifar"] = {"dataset": "cifar10", "schedule": "tiny", "models": {"resnet8": {}}}
    return config


@pytest.mark.slow
def test_the_issue_injection_is_refused_and_never_executed(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "ws", _config_with_cifar(INJECTION))
    check = run_cli("pipeline", "check", cwd=workspace, check=False)
    assert check.returncode == 2 and check.stderr.count("\n") == 1, check.stderr
    assert "datasets.cifar10.source" in check.stderr and "does not exist" in check.stderr
    stage = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]["fetch-cifar10"]
    assert dvc_argv(stage["cmd"])[3:5] == ["--source", INJECTION]
    result = sh("dvc", "repro", "--single-item", "fetch-cifar10", cwd=workspace, check=False)
    assert result.returncode != 0 and "source file not found" in result.stdout + result.stderr
    assert not list(tmp_path.rglob("INJECTED"))


@pytest.mark.slow
def test_a_mirror_path_full_of_shell_syntax_is_read_as_one_path(tmp_path: Path) -> None:
    """A file:// source naming a real file behind `;`, `$(...)` and quotes: `fetch` opens that very file (and
    refuses it for its checksum: it is no official archive)."""
    archive = make_cifar_archive(tmp_path / "mirror; touch INJECTED; echo $(touch INJECTED) it's" / "c10.tar.gz")
    workspace = make_workspace(tmp_path / "ws", _config_with_cifar(f"file://{archive}"))
    run_cli("pipeline", "check", cwd=workspace)
    result = sh("dvc", "repro", "--single-item", "fetch-cifar10", cwd=workspace, check=False)
    assert result.returncode != 0 and "checksum mismatch" in result.stdout + result.stderr, result.stderr
    assert not list(tmp_path.rglob("INJECTED"))


# ------------------------------------------------------------------------- end to end: an awkward image folder
def _write_image_folder(root: Path, classes: int = 3, train: int = 6, test: int = 2) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for index in range(classes):
            folder = root / split / f"class {index}"
            folder.mkdir(parents=True)
            for k in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k}.png")


@pytest.mark.slow
def test_an_image_folder_behind_spaces_and_semicolons_prepares_and_trains_through_dvc(tmp_path: Path) -> None:
    folder = tmp_path / "my data; touch INJECTED; it's é" / "imgs"
    _write_image_folder(folder)
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    config["all"] = ["own"]
    config["datasets"] = {"mine": {"path": str(folder)}}
    config["experiments"] = {"own": {"dataset": "mine", "schedule": "tiny", "seeds": [0], "models": {"resnet8": {}}}}
    workspace = make_workspace(tmp_path / "ws", config)
    run_cli("pipeline", "check", cwd=workspace)
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    assert dvc_argv(stages["prepare-mine"]["cmd"])[4] == str(folder)
    sh("dvc", "repro", "train-mine-resnet8-seed0", cwd=workspace)
    meta = json.loads((workspace / "data/prepared/mine/meta.json").read_text())
    assert meta["classes"] == ["class 0", "class 1", "class 2"]
    run = workspace / "results/mine/resnet8/seed0"
    assert (run / "model.pt").is_file() and (run / "history.csv").is_file()
    assert not list(tmp_path.rglob("INJECTED"))
