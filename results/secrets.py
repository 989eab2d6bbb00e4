"""Secrets: which names are secret, and the one masker for every file and line pgolf writes.

A name is secret when it ends in _KEY, _TOKEN, _SECRET, _APIKEY or _PASSWD, or contains PASSWORD or
CREDENTIAL (any case). Such variables reach the job but never batch.json, the ledger, logs, reports or
record folders. A `Scrubber` masks, in any text, (1) the VALUES of secret variables it was given (a payload
that prints its environment must not leak a key into train.log) and (2) secret-looking `NAME=value` /
`NAME: value` assignments whatever the value (a key typed into a script or a config dump). One threshold
for both: values shorter than MIN_SECRET_LEN are left alone, since masking "1" or "no" would mangle
ordinary text and no real credential is that short. Standard library only (the ledger imports this).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

MASK = "***"
MIN_SECRET_LEN = 6
_SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|APIKEY|PASSWD)$|PASSWORD|CREDENTIAL", re.I)
_ASSIGN = re.compile(r"""(?P<name>\b[A-Za-z0-9_]*(?:KEY|TOKEN|SECRET|PASSWD|PASSWORD|CREDENTIALS?)[A-Za-z0-9_]*)"""
                     r"""(?P<sep>\s*[=:]\s*)(?P<q>["']?)(?P<val>[^\s"',;]+)(?P=q)""", re.I)
_TOKEN_LIKE = re.compile(r"^[A-Za-z0-9_\-./+=:@]+$")      # credentials: no brackets, no code
_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?$")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(env: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping with the values of secret-named keys replaced by the mask."""
    return {k: (MASK if is_secret_name(k) else v) for k, v in env.items()}


def secret_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret-named variables of an environment (default: this process's), to pass to jobs."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if is_secret_name(k)}


def _looks_secret(name: str, val: str) -> bool:
    """A secret-named NAME whose value could be a credential: not code, not a number, not already masked.
    Lower-case names (hyperparameter dumps, Python code) need a long value to count."""
    if not is_secret_name(name) or val == MASK or _NUMBER.match(val) or not _TOKEN_LIKE.match(val):
        return False
    return len(val) >= (MIN_SECRET_LEN if name.isupper() else 12)


def _mask_assignment(m: re.Match) -> str:
    if not _looks_secret(m.group("name"), m.group("val")):
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{m.group('q')}{MASK}{m.group('q')}"


class Scrubber:
    """Masks known secret values (longest first, so overlapping values mask fully) and secret assignments."""

    def __init__(self, *envs: Mapping[str, Any]):
        vals: set[str] = set()
        for env in envs:
            for k, v in env.items():
                if is_secret_name(k) and v is not None and len(str(v)) >= MIN_SECRET_LEN:
                    vals.add(str(v))
        self.values = tuple(sorted(vals, key=len, reverse=True))     # the known secret values, longest first
        self._values = re.compile("|".join(re.escape(v) for v in self.values)) if vals else None

    @classmethod
    def from_environ(cls, *extra: Mapping[str, Any]) -> "Scrubber":
        """A scrubber for this process's secret variables plus `extra` mappings (e.g. the spec's env)."""
        return cls(os.environ, *extra)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._values is not None:
            text = self._values.sub(MASK, text)
        return _ASSIGN.sub(_mask_assignment, text)

    def obj(self, o: Any) -> Any:
        """Scrub every string inside a JSON-like object (dicts, lists); secret-named keys are masked."""
        if isinstance(o, str):
            return self(o)
        if isinstance(o, Mapping):
            return {k: (MASK if isinstance(k, str) and is_secret_name(k) and isinstance(v, (str, int, float))
                        else self.obj(v)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(v) for v in o]
        return o


def scrub(text: str) -> str:
    """Mask secrets in `text` with this process's environment: what every results file goes through."""
    return Scrubber.from_environ()(text)


def secret_lines(text: str) -> list[int]:
    """1-based line numbers where `scrub` would mask something."""
    sc = Scrubber.from_environ()
    return [i for i, line in enumerate(text.splitlines(), 1) if sc(line) != line]
