"""The package is a strict stack (docs/design.md, "Layers"): every module imports only from lower
layers, engine/ and search/ never import each other, and no import of the package hides inside a
function."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "detnas_d2")

# Bottom to top. A module (or a subpackage, for imports of it) may import only from lower rows; the
# modules of one subpackage may also import each other (checked for loops separately).
LAYERS = [
    ["user_errors"],
    [
        "compat",
        "file_io",
        "output_files",
        "config",
        "solver",
        "data",
        "evaluation",
        "rank_stats",
        "input_size",
        "process",
        "config_files",
        "run_lock",
    ],
    ["search_space"],
    ["arch_io"],
    ["modeling"],
    ["flops", "tasks", "checkpoint", "pipeline", "latency", "zero_shot"],
    ["recalibration", "export"],
    ["arch_info"],
    ["engine", "search"],
    ["audit", "train_net", "search_net", "lazy_train_net", "run_pipeline"],
    ["gpu_check", "submit_net"],
]
RANK = {name: rank for rank, row in enumerate(LAYERS) for name in row}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                yield ".".join(rel[:-1] if rel[-1] == "__init__" else rel), path


def _imports(module, path):
    """(imported detnas_d2 module, line, inside a function) for every import of the package."""
    tree = ast.parse(open(path).read())
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    functions = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if n is not f
    }
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            target = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(target + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name == "detnas_d2" or name.startswith("detnas_d2."):
                yield name, node.lineno, id(node) in functions


def _top(name):
    """detnas_d2.search.scoring -> 'search' (the unit LAYERS ranks)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = dict(_modules())


def test_every_module_has_a_layer():
    unranked = sorted({_top(m) for m in MODULES if _top(m) and _top(m) not in RANK})
    assert not unranked, f"add {unranked} to LAYERS in this test (and to docs/design.md, Layers)"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m)))
def test_imports_go_down_only(module):
    own = _top(module)
    for name, line, in_function in _imports(module, MODULES[module]):
        target = _top(name)
        where = f"{MODULES[module]}:{line} imports {name}"
        assert not in_function, (
            f"{where} inside a function: import it at the top (a loop means a wrong layer)"
        )
        if target == own or not target:
            continue
        assert RANK[target] < RANK[own], f"{where}: '{target}' is not below '{own}' in the stack"


def test_no_import_loop_inside_subpackages():
    graph = {
        m: {n for n, _, _ in _imports(m, p) if n in MODULES and n != m} for m, p in MODULES.items()
    }
    for package in (
        "detnas_d2.engine",
        "detnas_d2.search",
        "detnas_d2.modeling",
        "detnas_d2.data",
        "detnas_d2.latency",
        "detnas_d2.export",
        "detnas_d2.checkpoint",
        "detnas_d2.audit",
        "detnas_d2.zero_shot",
    ):
        nodes = {m for m in graph if m.startswith(package + ".")}
        state = {}

        def visit(m, trail):
            state[m] = "open"
            for n in graph[m] & nodes:
                assert state.get(n) != "open", f"import loop: {' -> '.join(trail + [m, n])}"
                if n not in state:
                    visit(n, trail + [m])
            state[m] = "done"

        for m in sorted(nodes):
            if m not in state:
                visit(m, [])
