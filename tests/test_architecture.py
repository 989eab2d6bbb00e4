"""The import rules of docs/ARCHITECTURE.md ("Layers"), checked by walking every import with `ast`.

model/train_gpt.py ships alone (the challenge counts its bytes); results/ works on any record folder
without the runner; the pod's bootstrap runs before anything is installed; the driver and the CLI reach
a backend only through the factory and the protocol; the small modules the ledger needs load nothing heavy.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"runner", "results", "model", "tests", "bench"}


def is_project_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (functions and TYPE_CHECKING blocks included);
    `from package import module` counts as importing package.module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute ones)"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if is_project_module(f"{node.module}.{a.name}"))
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offenders(paths: list[Path], bad) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {m}" for p in paths for m in sorted(imports(p)) if bad(m)]


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_walk_sees_every_kind_of_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import a.b\nfrom runner import spec, run\ndef f():\n    import e\nif False:\n    from g.h import i\n")
    assert imports(f) == {"a.b", "runner", "runner.spec", "e", "g.h"}


def test_results_never_imports_the_runner():
    assert files("results") and offenders(files("results"), lambda m: top(m) == "runner") == []


def test_the_payload_imports_nothing_of_the_project():
    assert offenders([ROOT / "model" / "train_gpt.py"], lambda m: top(m) in PROJECT) == []


def test_the_pod_bootstrap_needs_only_the_standard_library():
    boot = ROOT / "runner" / "backends" / "runpod" / "bootstrap.py"
    assert offenders([boot], lambda m: top(m) not in sys.stdlib_module_names | {"__future__"}) == []


def test_outside_the_backends_a_backend_is_reached_through_the_factory_and_the_protocol():
    outside = [p for p in files("runner") if "backends" not in p.relative_to(ROOT / "runner").parts]
    assert offenders(outside, lambda m: m.startswith("runner.backends.") and m != "runner.backends.base") == []


@pytest.mark.parametrize("module", ["runner.ledger", "runner.spec", "runner.backends.base", "runner.backends"])
def test_small_modules_load_nothing_heavy(module):
    """`pgolf status`, resume's checks and gc read the ledger: they must not pay for pandas, scipy, torch, Ray."""
    code = (f"import sys, {module}; "
            "print(' '.join(m for m in ('pandas', 'scipy', 'torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} loads {out.stdout.strip()}"
