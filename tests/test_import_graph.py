"""The package's import graph: no cycles, and the engine layers never import a task package."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

import metadg

ROOT = Path(metadg.__file__).parent
#: layers that must stay task-agnostic (DESIGN §2): they may not import metadg.tasks.* at all
TASK_AGNOSTIC = ("metadg.engine", "metadg.algorithms", "metadg.adapters", "metadg.models")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """metadg modules imported by a file (TYPE_CHECKING blocks left out; function bodies only if asked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import) and not (top_level_only and in_function):
                found.update(a.name for a in child.names if a.name.startswith("metadg"))
            elif isinstance(child, ast.ImportFrom) and not (top_level_only and in_function):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                if base.startswith("metadg"):
                    found.add(base)
                    # `from metadg.tasks import spoof` imports the submodule metadg.tasks.spoof
                    found.update(f"{base}.{a.name}" for a in child.names if (ROOT.parent / f"{base}.{a.name}".replace(".", "/")).exists()
                                 or (ROOT.parent / (f"{base}.{a.name}".replace(".", "/") + ".py")).exists())
            visit(child, nested)

    visit(tree, False)
    return found


FILES = sorted(ROOT.rglob("*.py"))


#: entry points of the layers: each must import in a fresh interpreter (a cycle can hide behind import order)
ENTRY_MODULES = ("metadg.cli", "metadg.engine.trainer", "metadg.algorithms.base", "metadg.tasks.base", "metadg.tasks.audio.corpus",
                 "metadg.search")


def test_entry_modules_import_on_their_own():
    import subprocess

    procs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True)
             for name in ENTRY_MODULES}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"importing {name} alone fails:\n{err[-2000:]}"


def test_no_import_cycles_at_module_level():
    graph = {module_name(p): {m for m in imports(p, top_level_only=True)} for p in FILES}
    known = set(graph)
    # A module importing `metadg.x.y` also runs metadg.x's __init__: edges to every parent package.
    edges = {m: {t for dep in deps for t in _with_parents(dep) if t in known and t != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            # A package's own __init__ importing its submodules is not a cycle with them.
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(1, len(parts))]


@pytest.mark.parametrize("layer", TASK_AGNOSTIC)
def test_task_agnostic_layers_import_no_task_package(layer):
    offenders = {}
    for path in FILES:
        name = module_name(path)
        if name == layer or name.startswith(layer + "."):
            bad = sorted(m for m in imports(path, top_level_only=False) if m == "metadg.tasks" or m.startswith("metadg.tasks."))
            if bad:
                offenders[name] = bad
    assert not offenders, f"{layer} imports task packages: {offenders}"


def test_engine_layers_do_not_speak_spoof():
    # Not in code, docstrings or comments: what a class means is the task's business.
    word = re.compile(r"\b(bona[ _-]?fide|spoof\w*|eer)\b", re.IGNORECASE)
    found = []
    for path in FILES:
        name = module_name(path)
        if not name.startswith(("metadg.engine", "metadg.algorithms", "metadg.adapters")):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if word.search(line):
                found.append(f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_old_module_paths_still_import_with_a_deprecation_warning():
    for old, new in metadg.MOVED_MODULES.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        if not (ROOT.parent / (old.replace(".", "/") + ".py")).exists():
            assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old


def test_moved_names_say_where_they_went():
    from metadg.engine import evaluate
    from metadg.tasks.audio import file_corpus

    with pytest.raises(AttributeError, match="metadg.tasks.spoof.labels"):
        file_corpus.normalize_label  # noqa: B018
    with pytest.raises(AttributeError, match="metadg.tasks.audio.score_files"):
        evaluate.score_files  # noqa: B018
