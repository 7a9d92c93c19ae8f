"""The package's shape: every module says its one job on its docstring's first line, and no imports form a cycle
(imports inside functions included: a lazy import hides a cycle from Python, not from the reader)."""

from __future__ import annotations

import ast

from resnet_repro.sources import import_graph, module_file, package_modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_and_lazy_imports() -> None:
    graph = import_graph()
    assert "resnet_repro.render.outputs" in graph["resnet_repro.stages"]
    assert {"resnet_repro.paths", "resnet_repro.render.report"} <= graph["resnet_repro.commands.render"]  # in functions
    assert "resnet_repro.render" in graph["resnet_repro.stages"]  # a module's packages run first
    assert "resnet_repro.catalog" in graph["resnet_repro.render.names"]  # `from ..catalog import`


def test_every_module_names_its_job() -> None:
    for name in package_modules():
        path = module_file(name)
        assert path is not None
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and docstring.splitlines()[0].strip(), f"{name}: no docstring saying what it is for"


def test_the_render_package_has_no_cycle() -> None:
    graph = import_graph()
    render = {name: {t for t in targets if t.startswith("resnet_repro.render")} for name, targets in graph.items()}
    assert cycles(render) == []


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def run_file_literals() -> list[str]:
    """Every string literal in the package equal to a run-file name, outside paths.py (their one definition), as
    'path:line: name'. F-string parts count: `f"{run}/model.pt"` holds the literal "/model.pt", not "model.pt"."""
    from resnet_repro import paths

    names = {*paths.TRAINING_FILES, paths.CHECKPOINT_FILE, paths.METRICS_FILE, paths.DETAILS_FILE, paths.RESPONSES_FILE}
    assert names == {
        "model.pt",
        "checkpoint.pt",
        "history.csv",
        "epochs.csv",
        "metrics.json",
        "details.json",
        "responses.json",
    }
    found: list[tuple[str, int, str]] = []
    for name in package_modules():
        path = module_file(name)
        assert path is not None
        if name == "resnet_repro.paths":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append((str(path.relative_to(path.parents[2])), node.lineno, node.value))
    return [f"{where}:{line}: {value}" for where, line, value in sorted(found)]


def test_run_file_names_are_defined_once_in_paths() -> None:
    """cli.py, render/ and the rest name run files through resnet_repro.paths, never as literals."""
    found = run_file_literals()
    assert found == [], "run-file names typed as literals (use resnet_repro.paths):\n" + "\n".join(found)


def test_the_render_package_documents_exactly_its_modules() -> None:
    docstring = ast.get_docstring(ast.parse(module_file("resnet_repro.render").read_text()))  # type: ignore[union-attr]
    listed = {line.split()[0] for line in docstring.splitlines() if line.startswith("    ") and line.strip()}
    modules = {name.rsplit(".", 1)[1] for name in package_modules() if name.startswith("resnet_repro.render.")}
    assert listed == modules
