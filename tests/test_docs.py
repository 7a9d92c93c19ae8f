"""The documentation against the code: every `resnet-repro` subcommand and option, repository file, script, script
option and config key that README.md and docs/*.md name exists; every docs page is linked from the README, which
stays a front page (under 10 KB). Commands are read from fenced code blocks and inline code spans."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from resnet_repro.cli import build_parser
from resnet_repro.paths import SETTINGS_FILE

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_LIMIT = 10 * 1024
# Top-level folders whose files are made by the pipeline or the set-up, not committed: a path there is not checked,
# except under a committed folder of results/ (results/cifar10_short/... is; results/demo/... is made by the demo).
GENERATED_ROOTS = {"results", "data", "logs", "runs", ".snakemake", "dvc_plots", ".venv", ".cache"}
FILE_SUFFIXES = (".py", ".sh", ".smk", ".yaml", ".yml", ".toml", ".md", ".png", ".lock", ".rst", ".cfg")

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def strip_fences(text: str) -> str:
    return FENCE.sub("", text)


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def code_spans(text: str) -> list[str]:
    return SPAN.findall(strip_fences(text))


def commands(text: str) -> list[list[str]]:
    """Every shell command of the page, as words: the lines of fenced blocks (continuations joined, comments
    dropped) and the inline spans, each split at `&&`, `;` and `|`."""
    pieces = []
    for block in code_blocks(text):
        pieces += block.replace("\\\n", " ").splitlines()
    pieces += code_spans(text)
    found = []
    for piece in pieces:
        try:
            words = shlex.split(piece, comments=True)
        except ValueError:  # not shell (an unbalanced quote in prose or YAML)
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


def after(words: list[str], program: str) -> list[str] | None:
    """The words after `program` when the command runs it (directly, or as `python PROGRAM`, `bash PROGRAM`)."""
    for index, word in enumerate(words):
        if word == program or word.endswith("/" + program):
            return words[index + 1 :]
    return None


@functools.cache
def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def first_positional_choices(parser: argparse.ArgumentParser) -> set[str] | None:
    for action in parser._actions:
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
            return {str(choice) for choice in action.choices}
    return None


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def flags_of(words: list[str]) -> list[str]:
    """The long options among words, up to a `--` that ends them (launch's inner command follows it)."""
    flags = []
    for word in words:
        if word == "--":
            break
        word = word.lstrip("[").split("]", 1)[0]  # a usage line's optional part: [--threads 1,all]
        if word.startswith("--") and len(word) > 2:
            flags.append(word.split("=", 1)[0])
    return flags


# ---------------------------------------------------------------------------------------------- resnet-repro
def resnet_repro_uses(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, words after it) for every `resnet-repro SUB ...` on the page; `launch -- SUB ...` counts twice."""
    uses = []
    for words in commands(text):
        rest = after(words, "resnet-repro")
        if rest is None:
            continue
        if not rest or rest[0].startswith("-"):
            uses.append(("", rest))
            continue
        uses.append((rest[0], rest[1:]))
        if rest[0] == "launch" and "--" in rest:
            inner = rest[rest.index("--") + 1 :]
            if inner:
                uses.append((inner[0], inner[1:]))
    return uses


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_resnet_repro_subcommand_and_option_exists(page: Path) -> None:
    known = subparsers()
    for sub, words in resnet_repro_uses(page.read_text()):
        if sub == "":
            assert set(flags_of(words)) <= options(build_parser()), (page.name, words)
            continue
        assert sub in known, f"{page_id(page)}: `resnet-repro {sub}` is not a subcommand (see build_parser)"
        parser = known[sub]
        for flag in flags_of(words):
            assert flag in options(parser), f"{page_id(page)}: `resnet-repro {sub}` has no option {flag}"
        choices = first_positional_choices(parser)
        positionals = [w for w in words if not w.startswith("-")]
        if choices and positionals and not positionals[0].startswith(("<", "...")) and words[0] == positionals[0]:
            where = f"{page_id(page)}: `resnet-repro {sub} {positionals[0]}`"
            assert positionals[0] in choices, f"{where}: not one of {sorted(choices)}"


def test_command_line_page_names_every_subcommand() -> None:
    page = (REPO / "docs" / "command-line.md").read_text()
    spans = set(code_spans(page))
    missing = sorted(set(subparsers()) - spans)
    assert not missing, f"docs/command-line.md does not name these subcommands: {missing}"
    assert f"{len(subparsers())} subcommands" in page


# ----------------------------------------------------------------------------------------- files and scripts
@functools.cache
def tracked_files() -> frozenset[str]:
    """Every file git tracks here: what a fresh clone holds, whatever the demo or a run has added since."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return frozenset(listed.splitlines())


def committed_folder(path: str, tracked: frozenset[str] | None = None) -> bool:
    """Whether a path under results/ lies in a folder of committed results (so the path must exist): a folder in
    which git tracks more than the settings.json every planned run has. Untracked outputs (the demo's runs) do not
    count: a fresh clone lacks them."""
    parts = path.split("/")
    if parts[0] != "results" or len(parts) <= 2:
        return False
    folder = "/".join(parts[:-1]) + "/"
    files = tracked_files() if tracked is None else tracked
    return any(f.startswith(folder) and f != folder + SETTINGS_FILE for f in files)


def repository_paths(text: str) -> set[str]:
    """Repository paths named on the page: code spans and command words with a slash or a file suffix, relative to
    the root, without placeholders (<model>, {train,test}, *, ...)."""
    candidates = set(code_spans(text))
    for words in commands(text):
        candidates.update(words)
    paths = set()
    for item in candidates:
        item = item.strip().rstrip(".,:)")
        item = re.sub(r"(\.(?:json|ya?ml|csv)):[\w.-]+$", r"\1", item)  # DVC's `file:key` metric selector
        if " " in item or "://" in item or item.startswith(("-", "$", "~", "/", "../", "<", ".*")):
            continue
        if re.search(r"[<>{}*$|\\\[\]'\"=]|\.\.\.", item):
            continue
        first = item.split("/", 1)[0]
        if "/" in item:
            if first in GENERATED_ROOTS and not committed_folder(item):
                continue
            if not ((REPO / first).exists() or first in GENERATED_ROOTS):
                continue  # not a repository path (a Python module path such as render/, or torch.distributed.run)
            paths.add(item.rstrip("/"))
        elif item.endswith(FILE_SUFFIXES) and re.fullmatch(r"[\w.-]+", item):
            paths.add(item)
    return paths


@functools.cache
def tracked_names() -> set[str]:
    """Base names of every file in the repository (what a bare `core.py` or `gpu_check.sh` may refer to)."""
    skip = {".git", ".venv", "__pycache__", ".snakemake", "data", ".dvc"}
    names = set()
    for path in REPO.rglob("*"):
        if not skip.intersection(path.relative_to(REPO).parts):
            names.add(path.name)
    return names


def test_only_committed_results_make_a_named_path_required() -> None:
    """A run folder counts by what git tracks in it, not by what the demo or a run left on disk; and a DVC metric
    selector (`metrics.json:test_error`) names its file."""
    tracked = frozenset({"results/digits/resnet8/seed0/settings.json", "results/cifar10_short/tables/runs.md"})
    assert not committed_folder("results/digits/resnet8/seed0/metrics.json", tracked)
    assert committed_folder("results/cifar10_short/tables/verdict.md", tracked)
    assert not committed_folder("results/cifar10_long/tables/verdict.md", tracked)
    assert repository_paths("`results/cifar10_short/tables/results.csv:error_mean`") == {
        "results/cifar10_short/tables/results.csv"
    }


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = []
    for path in sorted(repository_paths(page.read_text())):
        if "/" in path:
            if not (REPO / path).exists():
                missing.append(path)
        elif path not in tracked_names():
            missing.append(path)
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        assert resolved.exists(), f"{page_id(page)} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page_id(page)}: {target}: no heading with that anchor"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in strip_fences(page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@functools.cache
def script_options(script: str) -> frozenset[str]:
    """The long options a benchmark or workflow script accepts: from `--help` for Python, the script text for shell."""
    path = REPO / script
    if path.suffix == ".py":
        result = subprocess.run(
            [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert result.returncode == 0, f"{script} --help failed:\n{result.stderr[-2000:]}"
        return frozenset(re.findall(r"--[\w-]+", result.stdout))
    return frozenset(re.findall(r"--[\w-]+", path.read_text()))


def script_uses(text: str) -> list[tuple[str, list[str]]]:
    uses = []
    for words in commands(text):
        for index, word in enumerate(words):
            if re.fullmatch(r"(workflow/scripts|benchmarks|containers|\.ci)/[\w.-]+\.(sh|py)|\.ci/run", word):
                uses.append((word, words[index + 1 :]))
                break
    return uses


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_script_and_its_options_exist(page: Path) -> None:
    for script, words in script_uses(page.read_text()):
        assert (REPO / script).is_file(), f"{page_id(page)}: {script} does not exist"
        unknown = [flag for flag in flags_of(words) if flag not in script_options(script)]
        assert not unknown, f"{page_id(page)}: {script} has no option {unknown}"


# ------------------------------------------------------------------------------------------------ config keys
@functools.cache
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@functools.cache
def known_keys() -> frozenset[str]:
    """Every key that config.yaml, its schema or the shipped schedules may hold."""
    keys: set[str] = set()

    def walk(node: object, in_properties: bool = False) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if in_properties or not isinstance(key, str) or not key.startswith("$"):
                    keys.add(str(key))
                walk(value, in_properties=key == "properties")
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config())
    walk(yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text()))
    walk(yaml.safe_load((REPO / "src/resnet_repro/schedules.yaml").read_text()))
    walk(yaml.safe_load((REPO / "dvc.yaml").read_text()))  # the stages' own keys (`cache: false`)
    for rules in [REPO / "Snakefile", *REPO.glob("workflow/rules/*.smk")]:  # rule directives (`resources:`)
        keys.update(re.findall(r"^\s+([a-z_]+):$", rules.read_text(), re.M))
    return frozenset(keys)


@functools.cache
def project_names() -> frozenset[str]:
    """Every identifier in the code, the workflow and the config: what a snake_case name in the docs may be."""
    names: set[str] = set()
    files = [*REPO.glob("src/resnet_repro/**/*.py"), *REPO.glob("src/resnet_repro/*.yaml"), REPO / "Snakefile"]
    files += [*REPO.glob("workflow/**/*.smk"), *REPO.glob("workflow/**/*.yaml"), REPO / "config.yaml"]
    files += [*REPO.glob("workflow/scripts/*.sh"), *REPO.glob("benchmarks/*")]
    for path in files:
        names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text()))
    from resnet_repro.catalog import CATALOG  # model names, some of them made from a depth table

    return frozenset(names | set(CATALOG))


def dotted_key_exists(key: str) -> bool:
    """`datasets.cifar10.source` exists in config.yaml; `experiments.demo.models.resnet8.settings.lr` goes as far
    as config.yaml does and continues with keys the schema or schedules know (a value given a place first)."""
    node: object = config()
    parts = key.split(".")
    for index, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif part.startswith("<"):
            return True  # a placeholder (`datasets.<name>.path`): the rest is a pattern
        else:
            return index > 0 and all(p in known_keys() for p in parts[index:])
    return True


def config_names(text: str) -> tuple[list[str], list[str], list[str]]:
    """(dotted config keys, `key: value` keys, bare snake_case names) among the page's inline spans and the
    config.yaml paths of its commands (`-S 'config.yaml:KEY=VALUE'`)."""
    top = set(config())
    dotted, yaml_keys, bare = [], [], []
    spans = code_spans(text)
    for words in commands(text):
        for word in words:
            if word.startswith("config.yaml:"):
                dotted.append(word.removeprefix("config.yaml:").split("=", 1)[0])
    for span in spans:
        span = span.strip()
        if span.endswith(FILE_SUFFIXES):
            continue  # a file (`schedules.yaml`), not a key
        if re.fullmatch(r"[a-z_][\w<>]*(\.[\w<>]+)+", span) and span.split(".")[0] in top:
            dotted.append(span)
        elif match := re.fullmatch(r"([a-z_][a-z0-9_]*):( .*)?", span):
            yaml_keys.append(match.group(1))
        elif re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", span):
            bare.append(span)
    return dotted, yaml_keys, bare


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_config_key_and_name_exists(page: Path) -> None:
    dotted, yaml_keys, bare = config_names(page.read_text())
    assert not [k for k in dotted if not dotted_key_exists(k)], f"{page_id(page)}: config keys not in config.yaml"
    unknown = [k for k in yaml_keys if k not in known_keys()]
    assert not unknown, f"{page_id(page)}: keys neither in config.yaml, its schema nor the schedules: {unknown}"
    unknown = [name for name in bare if name not in project_names()]
    assert not unknown, f"{page_id(page)}: names that appear nowhere in the code or the config: {unknown}"


def test_the_checks_catch_what_they_look_for() -> None:
    """The extractors above find a wrong subcommand, option, path and key (so a passing page means something)."""
    text = (
        "```bash\nresnet-repro trian --model x\nresnet-repro train --modle x\npython benchmarks/nope.py\n```\n"
        "See `workflow/rules/nope.smk`, `datasets.cifar10.sorce`, `train_thread: 2` and `check_everyy`."
    )
    assert ("trian", ["--model", "x"]) in resnet_repro_uses(text)
    assert "--modle" in flags_of(dict(resnet_repro_uses(text))["train"])
    assert ("benchmarks/nope.py", []) in script_uses(text)
    assert "workflow/rules/nope.smk" in repository_paths(text)
    dotted, yaml_keys, bare = config_names(text)
    assert not dotted_key_exists(dotted[0]) and yaml_keys == ["train_thread"] and bare == ["check_everyy"]
    assert "train_thread" not in known_keys() and "check_everyy" not in project_names()
    assert dotted_key_exists("datasets.cifar10.source") and dotted_key_exists("experiments.demo.models.resnet8")


# ------------------------------------------------------------------------------------------------ the front page
def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.encode()) < README_LIMIT, f"README.md is {len(text.encode())} bytes (limit {README_LIMIT})"
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Results of record", "## Set up and check"], headings
    blocks = code_blocks(text)
    assert "bash workflow/scripts/demo.sh" in blocks[0] and "bash workflow/scripts/test.sh" in blocks[0]


def test_readme_links_every_docs_page() -> None:
    links = {target.partition("#")[0] for target in LINK.findall(README.read_text())}
    assert DOCS, "docs/ holds no page"
    missing = [page_id(page) for page in DOCS if page_id(page) not in links]
    assert not missing, f"README.md does not link: {missing}"


def test_readme_experiment_table_lists_the_configs_experiments() -> None:
    """The README's experiment table names exactly the experiments of config.yaml (and those named ahead)."""
    section = README.read_text().split("## Experiments", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {re.match(r"\| `([\w]+)`", row).group(1) for row in rows}
    assert set(config()["experiments"]) == named, named
