"""Canonical bytes-per-token table (docs/CHALLENGE.md, "Bytes per token") and tokenizer inference from a
log's hints.

bpb is tokenizer-agnostic only when bytes are counted the canonical way; the ratio
val_loss / (ln 2 · val_bpb) of a run is its bytes per token, which must match this table.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

BPB_TOLERANCE = 0.0005          # 0.05 % relative: the bpb_consistency check
BYTE_TOLERANCE = 0.01           # byte-level tables are "≈1.0": allow 1 % (BOS/specials)
EXPORT_TOLERANCE = 0.02         # beyond this a deviation is a counting bug, not another validation export


@dataclass(frozen=True)
class Canon:
    name: str
    bytes_per_token: float
    val_tokens: int | None          # None: approximate only
    approx: bool = False


TABLE: dict[str, Canon] = {
    "sp1024": Canon("sp1024", 2.43593, 62_021_632),
    "sp4096": Canon("sp4096", 3.31968, 45_508_608),
    "sp8192": Canon("sp8192", 3.72663, 40_540_160),
    "sp8192_caseops": Canon("sp8192_caseops", 3.15715, 47_851_520),
    "byte": Canon("byte", 1.0, None, approx=True),      # ≈151.1M tokens
}
BYTE_VAL_TOKENS_APPROX = 151_100_000


@dataclass(frozen=True)
class Export:
    """An older export of a tokenizer's validation split: other documents, other bytes per token."""
    tokenizer: str
    val_tokens: int
    bytes_per_token: float
    description: str


OLDER_EXPORTS = (
    Export("sp1024", 63_779_840, 2.44230, "the first sp1024 validation export (63,779,840 tokens, March 2026; "
                                          "the official baseline was scored on it)"),
)


def known_export(name: str, val_tokens: int | None) -> Export | None:
    """The older export a run was scored on, recognised by its token count."""
    return next((e for e in OLDER_EXPORTS if e.tokenizer == name and e.val_tokens == val_tokens), None)


def bytes_per_token(val_loss: float | None, val_bpb: float | None) -> float | None:
    """val_loss / (ln 2 · val_bpb); None when either is missing, zero or not finite."""
    if val_loss is None or val_bpb is None:
        return None
    if not (math.isfinite(val_loss) and math.isfinite(val_bpb)) or val_bpb <= 0:
        return None
    return val_loss / (math.log(2) * val_bpb)


_CASEOPS = re.compile(r"caseops|lossless_caps", re.I)
_SP = re.compile(r"(?:fineweb_(\d+)_bpe|_sp(\d+)\b|_sp(\d+)_|sp(\d+)(?![\d]))", re.I)
_BYTE = re.compile(r"byte(?:260|256|_level|s)?\b|_bytes\b|byte260|byte256", re.I)


def _vocab_from_text(text: str) -> int | None:
    m = _SP.search(text)
    if not m:
        return None
    return int(next(g for g in m.groups() if g))


def infer(hints: dict[str, str]) -> str | None:
    """Canonical tokenizer name from log hints: tokenizer path, dataset path, tokenizer kind,
    vocab size, validation token count (in that order of trust). None when nothing says."""
    kind = (hints.get("tokenizer_kind") or "").lower()
    paths = " ".join(hints.get(k, "") for k in ("tokenizer_path", "dataset", "val_files"))
    if _CASEOPS.search(paths) or hints.get("byte_sidecar"):
        return "sp8192_caseops"
    if kind.startswith("byte"):
        return "byte"
    custom = False
    for key in ("tokenizer_path", "dataset", "val_files"):
        text = hints.get(key, "")
        if not text:
            continue
        if "fineweb" not in text.lower():
            custom = True          # our own data (e.g. the tiny smoke dataset): no canonical table applies
            continue
        v = _vocab_from_text(text)
        if v in (1024, 4096, 8192):
            return f"sp{v}"
        if _BYTE.search(text):
            return "byte"
    if custom:
        return None
    vocab = hints.get("vocab_size")
    if vocab and vocab.isdigit():
        v = int(vocab)
        if v in (1024, 4096, 8192):
            return f"sp{v}"
        if v in (256, 257, 258, 259, 260):
            return "byte"
    tokens = hints.get("val_tokens")
    if tokens and tokens.isdigit():
        for c in TABLE.values():
            if c.val_tokens == int(tokens):
                return c.name
    return None


def nearest(bpt: float) -> tuple[str, float]:
    """The table entry closest to a measured bytes/token, with its relative deviation."""
    best = min(TABLE.values(), key=lambda c: abs(bpt / c.bytes_per_token - 1))
    return best.name, bpt / best.bytes_per_token - 1


def tolerance(name: str) -> float:
    return BYTE_TOLERANCE if TABLE[name].approx else BPB_TOLERANCE
