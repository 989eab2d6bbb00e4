"""Secrets: names that look secret reach the job but never a file pgolf writes.

A name is secret when it ends in _KEY, _TOKEN or _SECRET or contains PASSWORD (any case; the one rule is
results.submit.is_secret_name, shared with the report and submission scrubbing). `redact`
hides such values in a mapping; `Scrubber` replaces the VALUES of secret variables wherever they appear in
text (a payload that prints its environment must not leak an API key into train.log or the ledger).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

from results.submit import MASK, is_secret_name

MIN_SECRET_LEN = 4   # shorter values ("1", "no") would mangle ordinary text


def is_secret(name: str) -> bool:
    return is_secret_name(name)


def redact(env: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}


def secret_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret-named variables of an environment (default: this process's), to pass to jobs."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if is_secret(k)}


class Scrubber:
    """Replaces known secret values in text with ***. Longest values first so overlaps mask fully."""

    def __init__(self, *envs: Mapping[str, Any]):
        vals: set[str] = set()
        for env in envs:
            for k, v in env.items():
                if is_secret(k) and v is not None and len(str(v)) >= MIN_SECRET_LEN:
                    vals.add(str(v))
        self._re = re.compile("|".join(re.escape(v) for v in sorted(vals, key=len, reverse=True))) if vals else None

    @classmethod
    def from_environ(cls, *extra: Mapping[str, Any]) -> "Scrubber":
        return cls(os.environ, *extra)

    def __call__(self, text: str) -> str:
        return self._re.sub(MASK, text) if self._re and text else text

    def obj(self, o: Any) -> Any:
        """Scrub every string inside a JSON-like object (dicts, lists); secret-named keys are masked."""
        if isinstance(o, str):
            return self(o)
        if isinstance(o, Mapping):
            return {k: (MASK if isinstance(k, str) and is_secret(k) and isinstance(v, (str, int, float))
                        else self.obj(v)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(v) for v in o]
        return o
