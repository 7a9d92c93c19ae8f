"""Which source files each `resnet-repro` subcommand executes, derived from the package's imports.

A stage depends on the code its command runs, so that a change in `models.py` makes the trainings it affects
stale (and everything after them) while fetching and preparing stay done, and a change in the rendering code
reruns only the renderings. The files are found by reading the imports (at module level and inside functions) of
the dispatcher (`cli.py`), of the subcommand's own module (resnet_repro.commands.<name>, the only one the
dispatcher imports) and of every module they reach; nothing is imported or executed. Modules that only decide
where a job runs (PLACEMENT_ONLY) are left out.
"""

from __future__ import annotations

import ast
import functools
import shlex
from pathlib import Path

PACKAGE = "resnet_repro"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_PACKAGE_DIR = f"src/{PACKAGE}"  # where the package lives in the repository (DVC and Snakemake paths)
ENTRY = f"{PACKAGE}.cli"
# Modules a job runs that decide where it runs, never what it computes: taking a GPU slot sets CUDA_VISIBLE_DEVICES
# before CUDA starts, nothing else. No stage depends on them (nor, through them, on their imports), so changing how
# slots are taken reruns nothing; a job on a device it cannot use stops with an error rather than compute otherwise.
PLACEMENT_ONLY = frozenset({f"{PACKAGE}.gpu"})


def module_file(module: str) -> Path | None:
    """The file of a module of this package (a package's __init__.py), or None when there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _tree(module: str) -> ast.Module:
    path = module_file(module)
    assert path is not None, module
    return ast.parse(path.read_text(), filename=str(path))


def _is_package(module: str) -> bool:
    path = module_file(module)
    return path is not None and path.name == "__init__.py"


def _imported(module: str, nodes: list[ast.AST]) -> set[str]:
    """The package's modules that the import statements among `nodes` (in `module`) load."""
    found: set[str] = set()
    here = module if _is_package(module) else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            # `from .pkg import name` loads pkg.name too when that is a module
            found |= {f"{target}.{a.name}" for a in node.names if module_file(f"{target}.{a.name}") is not None}
    return {name for name in found if module_file(name) is not None}


def _with_parents(modules: set[str]) -> set[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parents = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    return modules | parents


def _executed(tree: ast.Module) -> list[ast.AST]:
    """The nodes of `tree` that can run: all but the bodies of `if TYPE_CHECKING:` (imports for annotations only)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return [node for node in ast.walk(tree) if id(node) not in hidden]


def _closure(start: set[str], skip: frozenset[str] = frozenset()) -> set[str]:
    """Every module of the package that loading `start` can load: all their imports, however deep, except those
    only type checkers read; `skip` and what only they import left out."""
    seen: set[str] = set()
    todo = list(_with_parents(start))
    while todo:
        module = todo.pop()
        if module in seen or module in skip:
            continue
        seen.add(module)
        todo += _with_parents(_imported(module, _executed(_tree(module))))
    return seen


def package_modules() -> list[str]:
    """Every module of the package (a package's __init__.py stands for the package), sorted."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules that loading it can load directly (imports anywhere in it, and the
    packages above each)."""
    return {name: _with_parents(_imported(name, list(ast.walk(_tree(name))))) - {name} for name in package_modules()}


@functools.cache
def subcommand_modules(subcommand: str) -> tuple[str, ...]:
    """The package's modules that `resnet-repro <subcommand>` executes (those that only place the job left out),
    sorted."""
    from .cli import SUBCOMMANDS, command_module

    if subcommand not in SUBCOMMANDS:
        raise ValueError(f"resnet-repro has no subcommand {subcommand!r}")
    return tuple(sorted(_closure({ENTRY, command_module(subcommand)}, PLACEMENT_ONLY)))


def repo_path(module: str) -> str:
    """The module's file as a path in the repository."""
    path = module_file(module)
    assert path is not None, module
    return f"{REPO_PACKAGE_DIR}/{path.relative_to(PACKAGE_DIR).as_posix()}"


def subcommands(cmd: str) -> list[str]:
    """The `resnet-repro` subcommands a stage command runs: its own, and for `launch` the one after `--`."""
    argv = shlex.split(cmd.replace("\\${", "${"))
    if argv[:1] != ["resnet-repro"] or len(argv) < 2:
        return []
    found = [argv[1]]
    if argv[1] == "launch" and "--" in argv:
        found.append(argv[argv.index("--") + 1])
    return found


def subcommand_files(*names: str) -> list[str]:
    """The source files (repository paths) that the subcommands `names` execute, sorted: a rule's code inputs."""
    return sorted({repo_path(module) for name in names for module in subcommand_modules(name)})


def command_sources(cmd: str) -> list[str]:
    """The source files (repository paths) that a stage command executes, sorted: a DVC stage's code deps."""
    return subcommand_files(*subcommands(cmd))
