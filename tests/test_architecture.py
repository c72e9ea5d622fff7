"""The tree's dependency rule holds: the import contracts, no import cycles, a thin CLI.

The layer contracts live in pyproject.toml (``[tool.importlinter]``) and run here and in
``make lint``; cycles and the CLI's use of private names are checked on the same import graph
(grimp, import-linter's engine, which also sees imports made inside functions).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("sd3d", "recon", "cli")


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    res = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def _strongly_connected(graph) -> list[set[str]]:
    """Tarjan's components of the module graph with more than one member (an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles(graph):
    # A package's __init__ importing its own submodules is not a cycle of the code's layers.
    cycles = [c for c in _strongly_connected(graph) if not any(m.count(".") == 0 for m in c)]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        planted.add_import(importer=a, imported=b)
    assert _strongly_connected(planted) == [{"p.a", "p.b", "p.c"}]


def test_cli_uses_only_public_library_names():
    private = []
    for path in sorted((REPO / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in ("sd3d", "recon")
            ):
                private += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
                if any(part.startswith("_") for part in node.module.split(".")):
                    private.append(f"{path.name}: {node.module}")
    assert not private, private
