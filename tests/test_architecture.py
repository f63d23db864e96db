"""The import rules of docs/architecture.md, read from the source with ``ast``: each module sits in a layer and
imports only its own layer and the layers below; no import loops; nothing imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maskcls"

# lowest first; a module may import modules of its own layer and of lower ones (docs/architecture.md)
LAYERS = [
    {"errors", "io", "progress", "metrics", "plots", "transforms", "quantize"},  # leaves
    {"data"},  # maskcls/data/: layout, labels, fixes, split, images, faces, crop cache, dataset
    {"tasks", "losses", "years"},  # the task table; the loss registry; the year head (age_target=years)
    {"config"},  # reads the registries below it for its choices
    {"models", "checkpoint", "run_log", "runs", "bundle"},  # runs: run folders, CV folders; bundle: the shipped runs
    {"engine"},
    {"infer", "bias"},  # what commands share: inference; per-class biases
    {"evaluate", "combine", "submit", "detect", "export", "cv", "ensemble", "audit", "serve"},  # the commands
    {"cli", "__main__"},
]
COMMANDS = LAYERS[-2]


def unit(module: str) -> str:
    """The layer table's name for ``maskcls.x.y``: ``data`` for anything under maskcls/data/, else ``x``."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, root: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at module level or inside functions (not under
    ``if TYPE_CHECKING``), resolved to full names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if unit(module) in layer), None)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each: a module in no layer, an import upwards, an import loop."""
    found = []
    for module, imported in sorted(graph.items()):
        if unit(module) and layer_of(module) is None:
            found.append(f"{module}: in no layer of docs/architecture.md (add it to LAYERS)")
            continue
        for other in sorted(imported):
            if unit(other) and unit(module) and (layer_of(other) or 0) > (layer_of(module) or 0):
                found.append(f"{module} imports {other}, a higher layer")
    found += [f"import loop: {' -> '.join(loop)}" for loop in loops(graph)]
    return found


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly tangled start, found by depth-first search (between units, so a package's
    ``__init__`` importing its own submodules is no loop)."""
    units: dict[str, set[str]] = {}
    for module, imported in graph.items():
        units.setdefault(unit(module), set()).update(unit(m) for m in imported if unit(m) != unit(module))
    found, done = [], set()

    def visit(node, path):
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(units.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for start in sorted(units):
        visit(start, [])
    return found


def test_the_package_keeps_the_import_rules():
    assert violations(import_graph()) == []


def test_data_imports_no_engine_cli_or_command():
    for module, imported in import_graph().items():
        if unit(module) == "data":
            assert not {unit(m) for m in imported} & ({"engine", "cli", "infer", "models", "checkpoint"} | COMMANDS), module


def test_infer_imports_no_command_and_nothing_imports_the_cli():
    graph = import_graph()
    assert not {unit(m) for m in graph["maskcls.infer"]} & (COMMANDS | {"cli"})
    assert [m for m, imported in graph.items() if "maskcls.cli" in imported] == ["maskcls.__main__"]


@pytest.mark.parametrize("source, rule", [
    ("from ..engine import Engine\n", "maskcls.data.x imports maskcls.engine, a higher layer"),
    ("def f():\n    from .. import cli\n", "maskcls.data.x imports maskcls.cli, a higher layer"),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, rule):
    root = tmp_path / "maskcls"
    (root / "data").mkdir(parents=True)
    for name in ("__init__.py", "engine.py", "cli.py", "data/__init__.py"):
        (root / name).write_text("")
    (root / "data" / "x.py").write_text(source)
    assert rule in violations(import_graph(root))


def test_the_checker_catches_a_loop_and_a_module_in_no_layer(tmp_path):
    root = tmp_path / "maskcls"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "submit.py").write_text("from .export import x\n")
    (root / "export.py").write_text("def f():\n    from .submit import y\n")
    (root / "server.py").write_text("")
    found = violations(import_graph(root))
    assert "import loop: export -> submit -> export" in found
    assert "maskcls.server: in no layer of docs/architecture.md (add it to LAYERS)" in found
