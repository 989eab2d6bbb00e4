"""Parse one training log into `Run`s: one pass over the lines, precompiled patterns.

Every Parameter Golf log format seen in the public records is understood: official
`step:N/M ...` lines and the newer `N/M train_loss: X train_time: Ym` ones, optional
unix-time prefixes, final metric lines under any label (`final_int8_zlib_roundtrip_exact`,
`quantized_ttt_phased`, `legal_ttt_exact`, `final_sliding`, ...), size lines, seeds in headers
or argument dumps, tokenizer/dataset hints. A log holding several runs is split at each new
run header. Anything odd becomes a warning on the run, never an exception.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from results.tokenizers import bytes_per_token, infer
from results.types import Metric, Run

# ---- line patterns ---------------------------------------------------------------------------
_TS_PREFIX = re.compile(r"^\d{9,}(?:\.\d+)?\s+")
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|NaN|Inf)"

_STEP_TRAIN = re.compile(
    r"^step:(\d+)/(\d+)\s+(?:\[[^\]]*\]\s+)?(?:train_)?loss:\s*(" + _NUM + r")(?:.*?\b(?:train_time|t):\s*([\d.]+)ms)?")
_STEP_VAL = re.compile(
    r"^step:(\d+)/(\d+)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")(?:.*?train_time:\s*([\d.]+)ms)?")
_NEW_TRAIN = re.compile(r"^(\d+)/(\d+)\s+train_loss:\s*(" + _NUM + r")(?:\s+train_time:\s*([\d.]+)(ms|m|s))?")
_NEW_VAL = re.compile(r"^(\d+)/(\d+)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")")
_STOP = re.compile(r"^stopping_early:.*?train_time:\s*([\d.]+)ms\s+step:\s*(\d+)/(\d+)")
_METRIC = re.compile(
    r"^(?P<label>[A-Za-z][A-Za-z0-9_\-+.]*(?: [A-Za-z][A-Za-z0-9_\-+.]*)*?)\s+(?:stride:\d+\s+)?"
    r"val_loss[:=]\s*(?P<loss>" + _NUM + r")\s+val_bpb[:=]\s*(?P<bpb>" + _NUM + r")(?P<rest>.*)$")
_EVAL_TIME = re.compile(r"\b(?:eval_time|time):\s*([\d.]+)ms")
_TOTAL = re.compile(r"^Total submission size(?: ([^:]+))?:\s*(\d+) bytes")
_MODEL = re.compile(r"^Serialized model(?: ([^:]+))?:\s*(\d+) bytes")
_CODE = re.compile(r"^Code size(?: \((compressed|uncompressed)\))?:\s*(\d+) bytes")
_BUDGET = re.compile(r"\bbudget:(\d+)/16000000\b")
_ARTIFACT_BYTES = re.compile(r"^artifact_bytes:\s*(\d+)")
_TOTAL_SUB = re.compile(r"\bTotal submission:\s*(\d+) bytes")
_QMODEL = re.compile(r"^(\S+) model:\s*(\d+) bytes \|")
_RAW_CODE = re.compile(r"\|\s*Code:\s*(\d+) bytes")
_ART_CODE = re.compile(r"^artifact:.*\bcode:(\d+)")
_SCRIPT_SIZE = re.compile(r"^\[modal\] Script size:\s*(\d+) bytes")
_SEED_OFFICIAL = re.compile(r"^seed:\s*(\d+)\s*$")
_SEED_DUMP = re.compile(r"^\s+seed:\s*(\d+)\s*$")
_SEED_ARGS = re.compile(r"(?:^|[\s,(])(?:seed|SEED)=(\d+)\b")
_SEED_PARAMS = re.compile(r"^params:\d+\b.*\bs:(\d+)\s*$")
_SHA = re.compile(r"^script_sha256:\s*([0-9a-fA-F]{64})\b")
_CORPUS = re.compile(r"^# \[corpus: \d+ lines of embedded training-script source removed; sha256/16=([0-9a-f]{16})\]")
_TOK_PATH = re.compile(r"tokenizer_path[:=]\s*(\S+)")
_TOK_KIND = re.compile(r"tokenizer_kind=(\S+)")
_TOKENIZER_ARG = re.compile(r"(?:^|\s)tokenizer=(\S+)")
_VOCAB = re.compile(r"\bvocab_size[:=]\s*(\d+)")
_DATASET = re.compile(r"(?:train_loader:dataset:|data_path[:=]\s*|datasets_dir:\s*)(\S+)")
_VAL_PATTERN = re.compile(r"^val_loader:shards pattern=(\S+)\s+tokens:(\d+)")
_VAL_FILES = re.compile(r"^\s+val_files:\s*(\S+)")
_VAL_TOKENS = re.compile(r"^(?:\s*val_tokens:|val tokens:)\s*(\d+)")
_VAL_BPT = re.compile(r"^val_bytes_per_token:\s*(" + _NUM + r")")
_PHASE_EVAL = re.compile(r"^[a-z_]+_eval_time:\s*([\d.]+)ms")
_TOTAL_EVAL = re.compile(r"^total_eval_time:\s*([\d.]+)s")
_VAL_BPB_SUMMARY = re.compile(r"^val_bpb:\s+(" + _NUM + r")\s*$")

# lines that open a new run; a run that already has a body (steps, metrics) ends there
_RUN_START = re.compile(
    r"^(?:# \[corpus: |val_bpb:enabled|val_bpb:byte_sidecar|Hyperparameters:|--- Hyperparameters ---|model_params:|logs/\S+\.txt$)")

_DIAGNOSTIC = ("diagnostic", "pre-quant", "pre_quant", "prequant", "post_ema", "post-ema")
_SEPARATOR = "=" * 100


def metric_tier(label: str) -> int:
    """0 = diagnostic (never a score), 1 = roundtrip/plain, 2 = sliding window, 3 = test-time training."""
    low = label.lower()
    if any(d in low for d in _DIAGNOSTIC):
        return 0
    if "ttt" in low:
        return 3
    if "sliding" in low:
        return 2
    return 1


def _f(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _filename_seed(name: str) -> int | None:
    m = re.search(r"seed[_-]?(\d+)", name, re.I)
    if m:
        return int(m.group(1))
    m = re.match(r"^(?:train|log|ternary_log|run)[_-]?(\d+)\.(?:log|txt)$", name, re.I)
    return int(m.group(1)) if m else None


class _Builder:
    """Accumulates the facts of one run while lines stream past."""

    def __init__(self, log: str, first_line: int):
        self.run = Run(log=log, first_line=first_line)
        self.body = False
        self.total_schemed: tuple[int, int] | None = None
        self.total_plain: tuple[int, int] | None = None
        self.model_schemed: tuple[int, int] | None = None
        self.model_plain: tuple[int, int] | None = None
        self.alt_total: tuple[int, int] | None = None
        self.last_train_time: tuple[float, int] | None = None
        self.last_step: tuple[int, int, int] | None = None  # step, iterations, line
        self.code_plain: tuple[int, int] | None = None
        self.code_compressed: tuple[int, int] | None = None
        self.code_other: tuple[int, int] | None = None

    def ref(self, key: str, line: int, overwrite: bool = True):
        if overwrite or key not in self.run.refs:
            self.run.refs[key] = line

    def finish(self) -> Run:
        r = self.run
        # artifact: schemed total > budget/artifact_bytes lines > compressed model + code > plain total
        if self.total_schemed:
            r.artifact_bytes, line = self.total_schemed
            self.ref("artifact_bytes", line)
        elif self.alt_total:
            r.artifact_bytes, line = self.alt_total
            self.ref("artifact_bytes", line)
        if self.model_schemed:
            r.model_bytes, line = self.model_schemed
            self.ref("model_bytes", line)
        elif self.model_plain and not self.total_schemed:
            r.model_bytes, line = self.model_plain
            self.ref("model_bytes", line)
        code = self.code_compressed or self.code_plain or self.code_other
        if code:
            r.code_bytes, line = code
            self.ref("code_bytes", line)
        if r.artifact_bytes is None:
            if self.model_schemed and r.code_bytes is not None:
                r.artifact_bytes = self.model_schemed[0] + r.code_bytes
                self.ref("artifact_bytes", self.model_schemed[1])
            elif self.total_plain and not self.model_schemed:
                r.artifact_bytes, line = self.total_plain
                self.ref("artifact_bytes", line)
        if r.train_time_ms is None and self.last_train_time:
            r.train_time_ms, line = self.last_train_time
            self.ref("train_time", line)
        if r.steps is None and self.last_step:
            r.steps, r.iterations, line = self.last_step
            self.ref("steps", line)
        r.tokenizer = infer(r.hints)
        if r.header_seed is not None:
            r.seed = r.header_seed
        elif r.filename_seed is not None:
            r.seed = r.filename_seed
        choose_score(r)
        return r


def choose_score(run: Run, claim_bpb: float | None = None, claim_tol: float = 0.0) -> bool:
    """Pick the scoring metric of a run. With a claim, the final line whose bpb matches it
    (labels lie: sliding results sometimes sit under a roundtrip label); otherwise the best
    final-evaluation line, TTT > sliding > roundtrip, `_exact` first, the last one printed.
    Returns True when the claim matched a line."""
    finals = [m for m in run.metrics if metric_tier(m.label) > 0 and math.isfinite(m.val_bpb)]
    chosen = None
    matched = False
    if claim_bpb is not None:
        hits = [m for m in finals if abs(m.val_bpb - claim_bpb) <= claim_tol]
        if hits:
            chosen = max(hits, key=lambda m: (m.label.endswith("_exact"), metric_tier(m.label), m.line))
            matched = True
    if chosen is None and finals:
        chosen = max(finals, key=lambda m: (metric_tier(m.label), m.label.endswith("_exact"), m.line))
    if chosen is None:              # no final line, or only NaN/inf ones (warned about while parsing)
        run.metric = None
        run.val_bpb = run.val_loss = run.bytes_per_token = None
        return False
    run.metric, run.val_bpb, run.val_loss = chosen.label, chosen.val_bpb, chosen.val_loss
    run.refs["metric"] = chosen.line
    run.eval_time_ms = chosen.eval_time_ms
    if run.eval_time_ms is None and chosen.label.endswith("_exact"):
        base = chosen.label[: -len("_exact")]
        twins = [m for m in run.metrics if m.label == base and m.eval_time_ms is not None and m.line < chosen.line]
        if twins:
            run.eval_time_ms = twins[-1].eval_time_ms
    if run.total_eval_time_ms is not None:
        run.eval_time_ms = run.total_eval_time_ms
    run.bytes_per_token = bytes_per_token(run.val_loss, run.val_bpb)
    return matched


def read_text(path: Path) -> tuple[str, list[str]]:
    """Log text decoded leniently; warnings say when it was not clean UTF-8 text."""
    warnings = []
    data = path.read_bytes()
    if b"\x00" in data:
        warnings.append(f"{path.name}: contains NUL bytes (binary data?); read as text anyway")
        data = data.replace(b"\x00", b"")
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        warnings.append(f"{path.name}: not valid UTF-8; undecodable bytes replaced")
    if data and not data.endswith(b"\n"):
        warnings.append(f"{path.name}: does not end with a newline (truncated?)")
    return text, warnings


def parse_log(path: Path, rel: str | None = None) -> list[Run]:
    """All runs found in one log file. Never raises for bad content (only for unreadable files)."""
    text, file_warnings = read_text(path)
    return parse_text(text, rel or path.name, file_warnings)


def parse_text(text: str, log: str, file_warnings: list[str] | None = None) -> list[Run]:
    lines = text.splitlines()
    fseed = _filename_seed(Path(log).name)
    builders: list[_Builder] = []
    b = _Builder(log, 1)
    builders.append(b)
    src_end = _embedded_source_end(lines)
    if src_end:
        b.run.source_text = "\n".join(lines[:src_end])
        import hashlib
        b.run.source_sha16 = hashlib.sha256((b.run.source_text + "\n").encode()).hexdigest()[:16]
        b.ref("source", 1)
    start = src_end or 0
    for i in range(start, len(lines)):
        raw = lines[i]
        n = i + 1
        if not raw:
            continue
        line = raw
        if line[0].isdigit():
            m = _TS_PREFIX.match(line)
            if m:
                line = line[m.end():]
        c = line[0] if line else ""
        # --- the bulk: step lines ------------------------------------------------------------
        if c == "s" and line.startswith("step:"):
            m = _STEP_VAL.match(line)
            if m:
                b.body = True
                b.last_step = (int(m.group(1)), int(m.group(2)), n)
                if m.group(5):
                    b.last_train_time = (float(m.group(5)), n)
                continue
            m = _STEP_TRAIN.match(line)
            if m:
                b.body = True
                step = int(m.group(1))
                b.last_step = (step, int(m.group(2)), n)
                loss = _f(m.group(3))
                if loss is not None:
                    b.run.curve.append((step, loss))
                if m.group(4):
                    b.last_train_time = (float(m.group(4)), n)
                continue
        if c.isdigit():
            m = _NEW_TRAIN.match(line)
            if m:
                b.body = True
                step = int(m.group(1))
                b.last_step = (step, int(m.group(2)), n)
                loss = _f(m.group(3))
                if loss is not None:
                    b.run.curve.append((step, loss))
                if m.group(4):
                    v = float(m.group(4))
                    unit = m.group(5)
                    b.last_train_time = (v * 60000 if unit == "m" else v * 1000 if unit == "s" else v, n)
                continue
            m = _NEW_VAL.match(line)
            if m:
                b.body = True
                b.last_step = (int(m.group(1)), int(m.group(2)), n)
                continue
        if c in " t" and (line.startswith("  ttt_chunk") or line.startswith("ttt_progress") or line.startswith("tttg:")):
            continue
        # --- run boundaries --------------------------------------------------------------------
        if _RUN_START.match(line) and b.body:
            builders.append(b := _Builder(log, n))
        if c == "#":
            m = _CORPUS.match(line)
            if m:
                b.run.source_sha16 = m.group(1)
                b.ref("source", n)
            continue
        # --- final metrics ---------------------------------------------------------------------
        if "val_loss" in line and "val_bpb" in line:
            m = _METRIC.match(line)
            if m:
                label = m.group("label")
                loss, bpb = _f(m.group("loss")), _f(m.group("bpb"))
                if bpb is None or not math.isfinite(bpb) or (loss is not None and not math.isfinite(loss)):
                    b.run.warnings.append(f"{log}:{n}: {label} has a non-finite value ({m.group('loss')}, {m.group('bpb')})")
                if bpb is not None:
                    et = _EVAL_TIME.search(m.group("rest"))
                    b.run.metrics.append(Metric(label, loss, bpb, n, float(et.group(1)) if et else None))
                    b.body = True
                continue
        # --- stop, sizes, seeds, hints --------------------------------------------------------
        if c == "s":
            m = _STOP.match(line)
            if m:
                b.run.stopped_early = True
                b.run.train_time_ms = float(m.group(1))
                b.run.steps, b.run.iterations = int(m.group(2)), int(m.group(3))
                b.ref("train_time", n)
                b.ref("steps", n)
                b.body = True
                continue
            m = _SEED_OFFICIAL.match(line)
            if m:
                _set_seed(b, int(m.group(1)), n)
                continue
            m = _SHA.match(line)
            if m:
                b.run.script_sha256 = m.group(1).lower()
                b.ref("script_sha256", n)
                continue
        if c == "T":
            m = _TOTAL.match(line)
            if m:
                v = (int(m.group(2)), n)
                if m.group(1):
                    b.total_schemed = v
                else:
                    b.total_plain = v
                b.body = True
                continue
        if c == "S":
            m = _MODEL.match(line)
            if m:
                v = (int(m.group(2)), n)
                if m.group(1):
                    b.model_schemed = v
                else:
                    b.model_plain = v
                b.body = True
                continue
        if c == "C":
            m = _CODE.match(line)
            if m:
                v = (int(m.group(2)), n)
                if m.group(1) == "compressed":
                    b.code_compressed = v
                else:
                    b.code_plain = v
                continue
        if "budget:" in line:
            m = _BUDGET.search(line)
            if m:
                b.alt_total = (int(m.group(1)), n)
                continue
        if c == "a":
            m = _ARTIFACT_BYTES.match(line)
            if m:
                b.alt_total = (int(m.group(1)), n)
                continue
            m = _ART_CODE.match(line)
            if m:
                b.code_other = (int(m.group(1)), n)
                continue
        if "model:" in line and "bytes" in line:
            m = _TOTAL_SUB.search(line)
            if m:
                b.alt_total = (int(m.group(1)), n)
                q = _QMODEL.match(line)
                if q:
                    b.model_schemed = (int(q.group(2)), n)
                continue
            m = _RAW_CODE.search(line)
            if m:
                b.code_other = (int(m.group(1)), n)
                continue
        if c == "[":
            m = _SCRIPT_SIZE.match(line)
            if m and not b.code_other:
                b.code_other = (int(m.group(1)), n)
                continue
        m = _SEED_DUMP.match(line)
        if m:
            _set_seed(b, int(m.group(1)), n)
            continue
        if "seed=" in line or "SEED=" in line:
            m = _SEED_ARGS.search(line)
            if m:
                _set_seed(b, int(m.group(1)), n, weak=True)
        if c == "p":
            m = _SEED_PARAMS.match(line)
            if m:
                _set_seed(b, int(m.group(1)), n, weak=True)
        if "_eval_time:" in line:         # our payload: `sliding_eval_time:Nms` after its metric line
            m = _PHASE_EVAL.match(line)
            if m and b.run.metrics and b.run.metrics[-1].eval_time_ms is None:
                b.run.metrics[-1].eval_time_ms = float(m.group(1))
                continue
        if c == "t" and line.startswith("total_eval_time:"):
            m = _TOTAL_EVAL.match(line)
            if m:
                b.run.total_eval_time_ms = round(float(m.group(1)) * 1000, 3)
                b.ref("total_eval_time", n)
            continue
        _hints(b, line, raw, n)
    runs = _merge(builders, log)
    for r in runs:
        r.filename_seed = fseed
        if r.header_seed is not None:
            r.seed = r.header_seed
        elif fseed is not None:
            r.seed = fseed
    if file_warnings:
        runs[0].warnings[:0] = file_warnings
    return runs


def _set_seed(b: _Builder, seed: int, n: int, weak: bool = False):
    r = b.run
    if r.header_seed is None or (not weak and r.refs.get("seed_weak")):
        r.header_seed = seed
        r.refs["seed"] = n
        if weak:
            r.refs["seed_weak"] = n
        else:
            r.refs.pop("seed_weak", None)
    elif r.header_seed != seed and not weak:
        r.warnings.append(f"{r.log}:{n}: second seed {seed} in the same run (first {r.header_seed} at line {r.refs['seed']})")


def _hints(b: _Builder, line: str, raw: str, n: int):
    h = b.run.hints
    if "tokenizer" in line:
        m = _TOK_PATH.search(line)
        if m and m.group(1) not in ("", "./"):
            h.setdefault("tokenizer_path", m.group(1))
            b.ref("tokenizer", n, overwrite=False)
        m = _TOK_KIND.search(line)
        if m:
            h.setdefault("tokenizer_kind", m.group(1))
            b.ref("tokenizer", n, overwrite=False)
        m = _TOKENIZER_ARG.search(line)
        if m and m.group(1) == "byte":
            h.setdefault("tokenizer_kind", "byte")
            b.ref("tokenizer", n, overwrite=False)
    if "vocab_size" in line:
        m = _VOCAB.search(line)
        if m:
            h.setdefault("vocab_size", m.group(1))
    if line.startswith("val_bytes_per_token:"):
        m = _VAL_BPT.match(line)
        if m:
            h["val_bytes_per_token"] = m.group(1)
            b.ref("val_bytes_per_token", n)
        return
    if line.startswith("val_bpb:byte_sidecar"):
        h["byte_sidecar"] = "1"
        b.ref("tokenizer", n, overwrite=False)
    m = _VAL_PATTERN.match(line)
    if m:
        h.setdefault("val_files", m.group(1))
        h["val_tokens"] = m.group(2)
        b.run.val_tokens = int(m.group(2))
        b.ref("val_tokens", n)
        return
    m = _VAL_FILES.match(raw) if raw.startswith(" ") else None
    if m:
        h.setdefault("val_files", m.group(1))
        return
    m = _VAL_TOKENS.match(line)
    if m:
        h["val_tokens"] = m.group(1)
        b.run.val_tokens = int(m.group(1))
        b.ref("val_tokens", n)
        return
    if "dataset" in line or "data_path" in line:
        m = _DATASET.search(line)
        if m:
            h.setdefault("dataset", m.group(1))
            b.ref("dataset", n, overwrite=False)


def _merge(builders: list[_Builder], log: str) -> list[Run]:
    """Finish every segment; drop header-only fragments (aborted starts) when a real run exists."""
    runs = [bb.finish() for bb in builders]
    real = [r for r, bb in zip(runs, builders) if bb.body]
    if not real:
        r = runs[-1] if len(runs) == 1 else _fold(runs)
        r.warnings.append(f"{log}: no final metric or training steps found (unknown format or empty log)")
        return [r]
    for r in real:
        if r.metric is None and not any(metric_tier(m.label) > 0 for m in r.metrics):
            r.warnings.append(f"{log}:{r.first_line}: run has no final val_bpb line (unparsed or cut short)")
    return real


def _fold(runs: list[Run]) -> Run:
    first = runs[0]
    for r in runs[1:]:
        first.warnings.extend(r.warnings)
        first.hints = {**r.hints, **first.hints}
        if first.header_seed is None and r.header_seed is not None:
            first.header_seed, first.refs["seed"] = r.header_seed, r.refs.get("seed", 0)
    return first


def _embedded_source_end(lines: list[str]) -> int | None:
    """The official script logs its own source, then a line of 100 '='. Index after that line."""
    limit = min(len(lines), 20000)
    if not lines or lines[0].startswith("# [corpus:"):
        return None
    for i in range(limit):
        if lines[i] == _SEPARATOR:
            if i >= 20 and any(l.startswith(("import ", "from ", "def ", '"""')) for l in lines[: min(i, 200)]):
                return i
            return None
        if lines[i].startswith(("step:", "seed:", "val_bpb:")):
            return None
    return None
