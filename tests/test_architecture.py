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
    {"data.labels", "data.images"},  # the 18 classes, age bands; the one image reader (open_rgb)
    {"data.layout"},  # reading and checking the competition layout
    {"data.fixes", "data.split", "data.faces", "data.sample", "data.samplers", "data.summary"},
    {"data"},  # the package's own names: load_train, split_images, ...
    {"data.extra"},  # extra_data folders: read and check
    {"data.crop"},  # the crop cache, the image loaders (extra_data images routed to their folders' caches)
    {"data.dataset"},  # ImageDataset, build_dataset: an image loader and the transforms
    {"tasks", "losses", "years"},  # the task table; the loss registry; the year head (age_target=years)
    {"config"},  # reads the registries below it for its choices
    # runs: run folders, CV folders; bundle: the shipped runs
    {"models", "checkpoint", "run_log", "runs", "bundle"},
    {"engine"},
    {"infer"},  # inference: a run, what runs it, TTA, one Prediction per set of images
    {"bias", "predictions"},  # per-class biases; prediction tables: predict, vote, write, read
    {"evaluate"},  # the commands from here up; scores a submission
    {"combine"},  # scores with evaluate's score
    {"submit", "cv", "ensemble", "audit", "export", "detect"},  # SEPARATE: none imports another
    {"serve"},  # a server around detect's FaceChecker
    {"cli", "__main__"},
]
COMMANDS = {"evaluate", "combine", "submit", "cv", "ensemble", "audit", "export", "detect", "serve"}
SEPARATE = [LAYERS[-3]]  # layers whose modules never import each other


def unit(module: str) -> str:
    """The layer table's name for ``maskcls.x``: ``x``, or ``data.x`` for ``maskcls.data.x`` (``data`` for the
    package itself)."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts[:1] == ["data"] else (parts[0] if parts else "")


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
    """Every broken rule, one line each: a module in no layer, an import upwards, an import between the modules
    of a separate layer, an import loop."""
    found = []
    for module, imported in sorted(graph.items()):
        if unit(module) and layer_of(module) is None:
            found.append(f"{module}: in no layer of docs/architecture.md (add it to LAYERS)")
            continue
        for other in sorted(imported):
            if not (unit(other) and unit(module)) or unit(other) == unit(module):
                continue
            if (layer_of(other) or 0) > (layer_of(module) or 0):
                found.append(f"{module} imports {other}, a higher layer")
            elif any({unit(module), unit(other)} <= layer for layer in SEPARATE):
                found.append(f"{module} imports {other}, of its own layer: move what they share below both")
    found += [f"import loop: {' -> '.join(loop)}" for loop in loops(graph)]
    return found


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly tangled start, found by depth-first search between units (the modules of a unit
    may import each other)."""
    loop_unit = unit

    units: dict[str, set[str]] = {}
    for module, imported in graph.items():
        units.setdefault(loop_unit(module), set()).update(loop_unit(m) for m in imported
                                                          if loop_unit(m) != loop_unit(module))
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
        if unit(module).split(".")[0] == "data":
            higher = {"engine", "cli", "infer", "models", "checkpoint"} | COMMANDS
            assert not {unit(m) for m in imported} & higher, module


def test_commands_share_through_lower_modules_only():
    """A command imports another only where the drawing says so: submit uses combine, combine uses evaluate's
    scores, serve serves detect's FaceChecker."""
    graph = import_graph()
    between = {(unit(m), unit(o)) for m, imported in graph.items() for o in imported
               if unit(m) in COMMANDS and unit(o) in COMMANDS and unit(m) != unit(o)}
    assert between == {("submit", "combine"), ("combine", "evaluate"), ("serve", "detect")}


def test_infer_imports_no_command_and_nothing_imports_the_cli():
    graph = import_graph()
    assert not {unit(m) for m in graph["maskcls.infer"]} & (COMMANDS | {"cli"})
    assert [m for m, imported in graph.items() if "maskcls.cli" in imported] == ["maskcls.__main__"]


@pytest.mark.parametrize("module, source, rule", [
    ("data/labels.py", "from ..engine import Engine\n", "maskcls.data.labels imports maskcls.engine, a higher layer"),
    ("data/labels.py", "def f():\n    from .. import cli\n", "maskcls.data.labels imports maskcls.cli, a higher layer"),
    ("data/layout.py", "from .crop import x\n", "maskcls.data.layout imports maskcls.data.crop, a higher layer"),
    ("cv.py", "def f():\n    from .submit import x\n",
     "maskcls.cv imports maskcls.submit, of its own layer: move what they share below both"),
])
def test_the_checker_catches_an_upward_or_sideways_import(tmp_path, module, source, rule):
    root = tmp_path / "maskcls"
    (root / "data").mkdir(parents=True)
    for name in ("__init__.py", "engine.py", "cli.py", "submit.py", "data/__init__.py", "data/crop.py"):
        (root / name).write_text("")
    (root / module).write_text(source)
    assert violations(import_graph(root)) == [rule]


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
