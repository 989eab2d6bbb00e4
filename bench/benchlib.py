"""What the bench scripts share: the payload loaded as a module from its file, and results written as JSON.

The payload ships as one self-contained script (it imports nothing from pgolf), so the benches load it from
model/train_gpt.py rather than import it; results go through `results.files.atomic_write` like every file
pgolf writes, so a bench killed mid-write never leaves half a JSON in bench/results/.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from results.files import atomic_write  # noqa: E402


def load_payload(path: Path = ROOT / "model" / "train_gpt.py", name: str = "train_gpt"):
    """A training script as a module, from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """`result` as indented JSON at `path`, all or nothing; says where it went."""
    out = atomic_write(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return out
