"""The package's structure, read from its source: no import cycle, layers that point one way, and
functions short enough to read at once.

The import graph holds every import statement inside gradwell, at module level or inside a
function (a lazy import closes a cycle just the same), except those under ``if TYPE_CHECKING:``,
which never run. ``from gradwell.train import fit`` is an edge to gradwell.train (its __init__),
``from gradwell.train import loop`` one to gradwell.train.loop.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "gradwell"
LONGEST_FUNCTION = 60  # lines of code, blank lines and docstrings left out

# Each layer may import the layers listed for it, and itself. What is not named is a top layer
# (commands, cli, the package's __init__), which may import anything.
TOOLBOX = {"errors", "activations", "init", "norm", "fold", "clip", "optim", "regularize", "selfnorm", "data"}
TOOLBOX |= {"plots", "memory", "files"}
LAYERS = {
    "toolbox": (TOOLBOX, set()),
    "models": ({"models"}, {"toolbox"}),
    "train": ({"train"}, {"toolbox"}),
    "recipe": ({"config", "build", "run_folder", "guidelines"}, {"toolbox", "models", "train"}),
    "users": (
        {"diagnose", "experiment", "transfer", "pretrain", "inference", "job", "integrations"},
        {"toolbox", "models", "train", "recipe"},
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imports(tree: ast.AST, module: str) -> set[str]:
    """The gradwell modules that `tree` (the source of `module`) imports anywhere."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else resolve_relative(module, node)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in MODULES and name != module}


def resolve_relative(module: str, node: ast.ImportFrom) -> str:
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


GRAPH = {name: imports(ast.parse(path.read_text()), name) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    parts: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [one_cycle(graph, set(part)) for part in parts]


def one_cycle(graph: dict[str, set[str]], part: set[str]) -> list[str]:
    """A shortest way from the part's first module back to itself, inside the part."""
    start = min(part)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for other in sorted(graph[node] & part):
                if other == start:
                    return [*paths[node], start]
                if other not in paths:
                    paths[other] = [*paths[node], other]
                    nxt.append(other)
        frontier = nxt
    raise AssertionError(f"no cycle in {part}")


def layer_of(module: str) -> str | None:
    top = module.split(".")[1] if "." in module else ""
    return next((name for name, (members, _) in LAYERS.items() if top in members), None)


def test_the_cycle_finder_finds_and_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports_and_leaves_type_checking_ones_out():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gradwell.train.loop import Run\n"
        "def f():\n    from gradwell import build\n    import gradwell.errors\n"
    )
    assert imports(ast.parse(source), "gradwell.models") == {"gradwell.build", "gradwell.errors"}


def test_no_import_cycles_in_the_package():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_layers_point_one_way():
    allowed = {name: {name, *below} for name, (_, below) in LAYERS.items()}
    wrong = [
        f"{module} ({layer}) imports {other} ({layer_of(other) or 'top'})"
        for module, targets in GRAPH.items()
        if (layer := layer_of(module)) is not None
        for other in sorted(targets)
        if layer_of(other) not in allowed[layer]
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def function_lengths() -> list[tuple[int, str]]:
    """(lines of code, where) of every function in the package: docstrings and blank lines left out."""
    lengths = []
    for name, path in MODULES.items():
        source = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                lines = {
                    n
                    for statement in body
                    for n in range(statement.lineno, statement.end_lineno + 1)
                    if source[n - 1].strip() and not source[n - 1].strip().startswith("#")
                }
                lengths.append((len(lines), f"{name}.{node.name} (line {node.lineno})"))
    return sorted(lengths, reverse=True)


@pytest.mark.parametrize("limit", [LONGEST_FUNCTION])
def test_no_function_is_longer_than_the_limit(limit):
    long = [f"{where}: {n} lines" for n, where in function_lengths() if n > limit]
    assert not long, f"functions over {limit} lines of code:\n" + "\n".join(long)
