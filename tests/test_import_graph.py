"""Import structure: no import cycle in the model and data-module packages; no test imports another test.

Read from the source (ast), not by importing: an import inside a function counts (it runs on first call and
closes the cycle then); one under ``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT

PACKAGES = {"modules": "plexlab.modules", "datamodules": "plexlab.datamodules"}


def module_name(path: Path) -> str:
    """The import name of a file under modules/ or datamodules/ (a package's __init__.py is the package)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, less the bodies of `if TYPE_CHECKING:` (their `else` kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield other
                yield from runtime_nodes(other)
            continue
        yield child
        yield from runtime_nodes(child)


def runtime_imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Every dotted name imported anywhere in `tree` except under `if TYPE_CHECKING:` (relative resolved).

    `from a import b` yields both `a` and `a.b`: b may be a submodule.
    """
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def package_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, over modules/ and datamodules/."""
    files = {module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set(runtime_imports(ast.parse(path.read_text()), package))
        graph[name] = {target for target in imported if target in files and target != name}
    return graph


def test_model_and_data_packages_have_no_import_cycle() -> None:
    graph = package_graph()
    assert "plexlab.modules.single_cell.svae" in graph and "plexlab.datamodules.affinity.datamodule" in graph
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_runtime_imports_skip_type_checking_and_resolve_relative() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import a.b\n"
        "from .c import d\n"
        "def f():\n    from e import g\n"
        "if TYPE_CHECKING:\n    from h import i\n"
    )
    found = set(runtime_imports(ast.parse(source), "pkg.sub"))
    assert {"a.b", "pkg.sub.c", "pkg.sub.c.d", "e", "e.g"} <= found
    assert not {"h", "h.i"} & found


def test_no_test_module_imports_another() -> None:
    tests = ROOT / "tests"
    offenders = []
    for path in sorted([*tests.glob("*.py"), *tests.glob("bench/*.py")]):
        top = {name.split(".")[0] for name in runtime_imports(ast.parse(path.read_text()), "")}
        rel = path.relative_to(ROOT)
        offenders += [f"{rel} imports {name}" for name in sorted(top) if name.startswith("test_")]
    assert not offenders, "; ".join(offenders) + " (shared builders belong in tests/_*.py)"
