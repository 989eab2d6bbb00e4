"""The results engine's import rules, read from the source with ast (lazy imports inside functions count):
results/ never imports runner/, and no two results modules import each other, directly or round a loop."""
import ast
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "results":
                names |= {f"results.{a.name}" for a in node.names}
    return names


GRAPH = {f"results.{p.stem}": imports_of(p) for p in RESULTS.glob("*.py") if p.stem != "__init__"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_results_never_imports_runner(module):
    assert not [m for m in GRAPH[module] if m == "runner" or m.startswith("runner.")], module


def test_no_import_cycle_inside_results():
    deps = {m: {d for d in ds if d in GRAPH} for m, ds in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(deps[m]):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(deps):
        visit(m, [])
