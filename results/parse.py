"""Parse one training log into `Run`s: one pass over the lines, one table of small line handlers.

Every Parameter Golf log format seen in the public records is understood: official
`step:N/M ...` lines and the newer `N/M train_loss: X train_time: Ym` ones, optional
unix-time prefixes, final metric lines under any label (`final_int8_zlib_roundtrip_exact`,
`quantized_ttt_phased`, `legal_ttt_exact`, `final_sliding`, ...), size lines, seeds in headers
or argument dumps, tokenizer/dataset hints. A log holding several runs is split at each new
run header. Anything odd becomes a warning on the run, never an exception.

How it works: `RULES` is an ordered table of `Rule(needle, pattern, handle)`. For each line the
rules are tried in order; a rule applies when its needle (a plain substring, cheap to test) is in
the line and its pattern matches; its handler records the fact on the current run and returns True
when the line is fully explained (later rules are skipped) or False to let later rules look too.
The line formats themselves are listed in docs/CHALLENGE.md ("Log lines").
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Callable, NamedTuple

from results.tokenizers import bytes_per_token, infer
from results.types import CurvePoint, Metric, Run

# ---- line patterns ---------------------------------------------------------------------------
_TS_PREFIX = re.compile(r"^\d{9,}(?:\.\d+)? ")
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|NaN|Inf)"

_STEP_TRAIN = re.compile(
    r"^step:(\d+)/(\d+)\s+(?:\[[^\]]*\]\s+)?(?:train_)?loss:\s*(" + _NUM + r")(?:.*?\b(?:train_time|t):\s*([\d.]+)ms)?")
_STEP_VAL = re.compile(
    r"^step:(\d+)/(\d+)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")(?:.*?train_time:\s*([\d.]+)ms)?")
_NEW_TRAIN = re.compile(r"^(\d+)/(\d+)\s+train_loss:\s*(" + _NUM + r")(?:\s+train_time:\s*([\d.]+)(ms|m|s))?")
_NEW_VAL = re.compile(r"^(\d+)/(\d+)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")")
_TTT_PROGRESS = re.compile(r"^(?:  ttt_chunk \[|ttt_progress:|tttg:)")
_STOP = re.compile(r"^stopping_early:.*?train_time:\s*([\d.]+)ms\s+step:\s*(\d+)/(\d+)")
_METRIC = re.compile(
    r"^(?P<label>[A-Za-z][A-Za-z0-9_\-+.]*(?: [A-Za-z][A-Za-z0-9_\-+.]*)*?)\s+(?:stride:\d+\s+)?"
    r"val_loss[:=]\s*(?P<loss>" + _NUM + r")\s+val_bpb[:=]\s*(?P<bpb>" + _NUM + r")(?P<rest>.*)$")
_EVAL_TIME = re.compile(r"\b(?:eval_time|time):\s*([\d.]+)ms")
_TOTAL = re.compile(r"^Total submission size(?: ([^:]+))?:\s*(\d+) bytes")
_MODEL = re.compile(r"^Serialized model(?: ([^:]+))?:\s*(\d+) bytes")
_CODE = re.compile(r"^Code size(?: \((compressed|uncompressed)\))?:\s*(\d+) bytes")
_BUDGET = re.compile(r"\bbudget:(\d+)/16000000\b")
_ARTIFACT_MB = re.compile(r"=\s*(\d+\.\d+)/16\.00MB\b")                 # "... = 15.50/16.00MB FITS" (2 decimals)
_ARTIFACT_BYTES = re.compile(r"^artifact_bytes:\s*(\d+)")
_TOTAL_SUB = re.compile(r"model:.*\bTotal submission:\s*(\d+) bytes")
_QMODEL = re.compile(r"^(\S+) model:\s*(\d+) bytes \|")
_RAW_CODE = re.compile(r"model:.*\|\s*Code:\s*(\d+) bytes")
_ART_CODE = re.compile(r"^artifact:.*\bcode:(\d+)")
_SCRIPT_SIZE = re.compile(r"^\[modal\] Script size:\s*(\d+) bytes")
_SEED_OFFICIAL = re.compile(r"^seed:\s*(\d+)\s*$")
_SEED_DUMP = re.compile(r"^\s+seed:\s*(\d+)\s*$")
_SEED_ARGS = re.compile(r"(?:^|[\s,(])(?:seed|SEED)=(\d+)\b")
_SEED_PARAMS = re.compile(r"^params:\d+\b.*\bs:(\d+)\s*$")
_SHA = re.compile(r"^script_sha256:\s*([0-9a-fA-F]{64})\b")
_COMMENT = re.compile(r"^#")
_CORPUS = re.compile(r"^# \[corpus: \d+ lines of embedded training-script source removed; sha256/16=([0-9a-f]{16})\]")
_PHASE_EVAL = re.compile(r"^[a-z_]+_eval_time:\s*([\d.]+)ms")
_TOTAL_EVAL = re.compile(r"^total_eval_time:(?:\s*([\d.]+)s)?")
_TOK_PATH = re.compile(r"tokenizer_path(?::\s*|=)(\S+)")          # `=` takes no spaces: `a= b=1` is empty
_TOK_KIND = re.compile(r"tokenizer_kind=(\S+)")
_TOKENIZER_ARG = re.compile(r"(?:^|\s)tokenizer=byte(?:\s|$)")
_VOCAB = re.compile(r"\bvocab_size[:=]\s*(\d+)")
_VAL_BPT = re.compile(r"^val_bytes_per_token:\s*(" + _NUM + r")")
_SIDECAR = re.compile(r"^val_bpb:byte_sidecar")
_VAL_PATTERN = re.compile(r"^val_loader:shards pattern=(\S+)\s+tokens:(\d+)")
_VAL_FILES = re.compile(r"^\s+val_files:\s*(\S+)")
_VAL_TOKENS = re.compile(r"^(?:\s*val_tokens:|val tokens:)\s*(\d+)")
_TRAIN_SHARDS = re.compile(r"\btrain_shards:\s*(\d+)")
_DUMP_START = re.compile(r"^(?:Hyperparameters:|--- Hyperparameters ---)\s*$")
_DUMP_LINE = re.compile(r"^\s{2,}([a-z][a-z0-9_]*):[ \t]?(.*)$")                  # "  name: value" under the header
_KV_LINE = re.compile(r"^[A-Za-z_]\w*=\S*(?:\s+[A-Za-z_]\w*=\S*)+\s*$")        # "a=1 b=2 ..." under the header
_COLON_LINE = re.compile(r"^[a-z_][a-z0-9_]*:[^\s:]+(?:\s+[a-z_][a-z0-9_]*:[^\s:]+)+\s*$")  # "a:1 b:2" in the header
_SMI_GPU = re.compile(r"^\|\s+(\d+)\s+(NVIDIA [^|]*?)\s+(?:On|Off)\s+\|")     # nvidia-smi: "|   0  NVIDIA H100 80GB HBM3  On |"
_GPU_NAME = re.compile(r"^(?:gpu|GPU|gpu_name|device_name|cuda_device_name)\s*[:=]\s*(NVIDIA .+?)\s*$")  # get_device_name()
_WORLD = re.compile(r"(?:^|\s)(?:world_size|WORLD_SIZE)[:=]\s*(\d+)\b")
# GPTQ calibration on training data (AR self-generated calibration reads no data and is not listed)
_CALIB_START = re.compile(r"^(?:GPTQ|gptq):(?:collecting Hessians from calibration data|calibrating with \d+ batches \(training data\))")
_CALIB_DONE = re.compile(r"^(?:GPTQ|gptq):(?:collected \d+ Hessians|calibrated \d+ layers) in ([\d.]+)s")
_PARTIAL_EVAL = re.compile(r"^\s*(eval\w*:.*\(limited\))")                       # "  eval: 100 batches (limited)"
_DATASET = re.compile(r"(?:train_loader:dataset:|data_path[:=]\s*|datasets_dir:\s*)(\S+)")

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


def filename_seed(name: str) -> int | None:
    """The seed a log's file name states (train_seed42.log, train_42.txt, ternary_log_7.txt), else None."""
    m = re.search(r"seed[_-]?(\d+)", name, re.I)
    if m:
        return int(m.group(1))
    m = re.match(r"^(?:train|log|ternary_log|run)[_-]?(\d+)\.(?:log|txt)$", name, re.I)
    return int(m.group(1)) if m else None


# ---- one run's facts ------------------------------------------------------------------------------
class _Builder:
    """Accumulates the facts of one run while lines stream past; `finish` resolves them into the Run."""

    def __init__(self, log: str, first_line: int, fseed: int | None):
        self.run = Run(log=log, first_line=first_line, filename_seed=fseed)
        self.body = False                      # steps or metrics seen: a real run, not a header fragment
        # size lines by kind: total_schemed, total_plain, model_schemed, model_plain, alt_total,
        # code_plain, code_compressed, code_other -> (bytes, line); `finish` decides which counts
        self.sizes: dict[str, tuple[int, int]] = {}
        self.last_train_time: tuple[float, int] | None = None
        self.last_step: tuple[int, int, int] | None = None  # step, iterations, line

    def ref(self, key: str, line: int, overwrite: bool = True):
        if overwrite or key not in self.run.refs:
            self.run.refs[key] = line

    def step(self, step: int, iterations: int, n: int, loss: float | None = None, train_ms: float | None = None):
        self.body = True
        self.last_step = (step, iterations, n)
        if loss is not None:
            self.run.curve.append(CurvePoint(step, loss, train_ms))
        if train_ms is not None:
            self.last_train_time = (train_ms, n)

    def finish(self) -> Run:
        r, size = self.run, self.sizes.get
        # artifact: schemed total > budget/artifact_bytes lines > compressed model + code > plain total
        total = size("total_schemed") or size("alt_total")
        if total:
            r.artifact_bytes, line = total
            self.ref("artifact_bytes", line)
        model = size("model_schemed") or (size("model_plain") if not size("total_schemed") else None)
        if model:
            r.model_bytes, line = model
            self.ref("model_bytes", line)
        if size("code_plain"):
            r.script_bytes_logged, line = size("code_plain")
            self.ref("script_bytes_logged", line)
        code = size("code_compressed") or size("code_plain") or size("code_other")
        if code:
            r.code_bytes, line = code
            self.ref("code_bytes", line)
        if r.artifact_bytes is None:
            if size("model_schemed") and r.code_bytes is not None:
                r.artifact_bytes = size("model_schemed")[0] + r.code_bytes
                self.ref("artifact_bytes", size("model_schemed")[1])
            elif size("total_plain") and not size("model_schemed"):
                r.artifact_bytes, line = size("total_plain")
                self.ref("artifact_bytes", line)
        if r.train_time_ms is None and self.last_train_time:
            r.train_time_ms, line = self.last_train_time
            self.ref("train_time", line)
        if r.steps is None and self.last_step:
            r.steps, r.iterations, line = self.last_step
            self.ref("steps", line)
        r.tokenizer = infer(r.hints)
        _settle_seed(r)
        choose_score(r)
        return r


def _settle_seed(r: Run):
    """The log's own header is the best witness of its seed; the file name is only a label."""
    r.seed = r.header_seed if r.header_seed is not None else r.filename_seed


class _Parser:
    """The state while one log is read: the runs found so far and the one lines belong to now."""

    def __init__(self, log: str):
        self.log = log
        self.fseed = filename_seed(Path(log).name)
        self.builders = [_Builder(log, 1, self.fseed)]
        self.dump_line = -1                  # last line of a hyperparameter dump block, while one is being read

    @property
    def b(self) -> _Builder:
        return self.builders[-1]

    def new_run(self, n: int):
        self.builders.append(_Builder(self.log, n, self.fseed))


# ---- line handlers: (parser, match, line number) -> True when the line is fully explained --------
Handler = Callable[[_Parser, re.Match, int], bool]


class Rule(NamedTuple):
    needle: str          # substring the line must contain before the pattern is tried ("" = any line)
    pattern: re.Pattern
    handle: Handler


def _on_step_val(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.step(int(m.group(1)), int(m.group(2)), n, train_ms=float(m.group(5)) if m.group(5) else None)
    return True


def _on_step_train(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.step(int(m.group(1)), int(m.group(2)), n, _f(m.group(3)), float(m.group(4)) if m.group(4) else None)
    return True


_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60000.0}


def _on_new_train(p: _Parser, m: re.Match, n: int) -> bool:
    ms = float(m.group(4)) * _UNIT_MS[m.group(5)] if m.group(4) else None
    p.b.step(int(m.group(1)), int(m.group(2)), n, _f(m.group(3)), ms)
    return True


def _on_new_val(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.step(int(m.group(1)), int(m.group(2)), n)
    return True


def _skip(p: _Parser, m: re.Match, n: int) -> bool:
    return True


def _on_run_start(p: _Parser, m: re.Match, n: int) -> bool:
    if p.b.body:
        p.new_run(n)
    return False                             # the header line may carry hints too


def _on_dump_start(p: _Parser, m: re.Match, n: int) -> bool:
    p.dump_line = n
    return True


def _on_dump_line(p: _Parser, m: re.Match, n: int) -> bool:
    """`  name: value` right under `Hyperparameters:` (or under another such line): the run's configuration."""
    if p.dump_line != n - 1:
        return False
    p.dump_line = n
    p.b.run.hparams.setdefault(m.group(1), m.group(2).strip())
    return False                             # seed, val_files, tokenizer_path lines are hints too


def _on_kv_line(p: _Parser, m: re.Match, n: int) -> bool:
    """`a=1 b=2 ...` right under `--- Hyperparameters ---`."""
    if p.dump_line != n - 1:
        return False
    _pairs(p.b.run.hparams, m.string.split(), "=")
    return False


def _on_colon_line(p: _Parser, m: re.Match, n: int) -> bool:
    """`a:1 b:2 ...` lines before training starts (the official script's header)."""
    if not p.b.body:
        _pairs(p.b.run.hparams, m.string.split(), ":")
    return False


def _pairs(into: dict[str, str], tokens: list[str], sep: str):
    for tok in tokens:
        key, _, value = tok.partition(sep)
        into.setdefault(key, value)


def _on_comment(p: _Parser, m: re.Match, n: int) -> bool:
    c = _CORPUS.match(m.string)
    if c:
        p.b.run.source_sha16 = c.group(1)
        p.b.ref("source", n)
    return True


def _on_metric(p: _Parser, m: re.Match, n: int) -> bool:
    r = p.b.run
    label, loss, bpb = m.group("label"), _f(m.group("loss")), _f(m.group("bpb"))
    if bpb is None or not math.isfinite(bpb) or (loss is not None and not math.isfinite(loss)):
        r.warnings.append(f"{p.log}:{n}: {label} has a non-finite value ({m.group('loss')}, {m.group('bpb')})")
    if bpb is not None:
        et = _EVAL_TIME.search(m.group("rest"))
        text = m.group("bpb")
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 8
        r.metrics.append(Metric(label, loss, bpb, n, float(et.group(1)) if et else None, decimals))
        p.b.body = True
    return True


def _on_stop(p: _Parser, m: re.Match, n: int) -> bool:
    r = p.b.run
    r.stopped_early = True
    r.train_time_ms = float(m.group(1))
    r.steps, r.iterations = int(m.group(2)), int(m.group(3))
    p.b.ref("train_time", n)
    p.b.ref("steps", n)
    p.b.body = True
    return True


def _on_seed(p: _Parser, m: re.Match, n: int) -> bool:
    _set_seed(p.b, int(m.group(1)), n)
    return True


def _on_weak_seed(p: _Parser, m: re.Match, n: int) -> bool:
    _set_seed(p.b, int(m.group(1)), n, weak=True)
    return False


def _on_sha(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.run.script_sha256 = m.group(1).lower()
    p.b.ref("script_sha256", n)
    return True


def _size(slot: Callable[[str | None], str], body: bool = True) -> Handler:
    """A handler for a size line whose group 1 says which kind it is (a scheme, "compressed") and whose
    last group is the byte count; `slot(group 1)` names the kind."""
    def handle(p: _Parser, m: re.Match, n: int) -> bool:
        p.b.sizes[slot(m.group(1) if m.re.groups > 1 else None)] = (int(m.group(m.re.groups)), n)
        p.b.body = p.b.body or body
        return True
    return handle


def _on_total_sub(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.sizes["alt_total"] = (int(m.group(1)), n)
    q = _QMODEL.match(m.string)
    if q:
        p.b.sizes["model_schemed"] = (int(q.group(2)), n)
    return True


def _on_script_size(p: _Parser, m: re.Match, n: int) -> bool:
    if "code_other" in p.b.sizes:
        return False
    p.b.sizes["code_other"] = (int(m.group(1)), n)
    return True


def _on_phase_eval(p: _Parser, m: re.Match, n: int) -> bool:
    """Our payload prints `sliding_eval_time:Nms` after its metric line: that metric's evaluation time."""
    metrics = p.b.run.metrics
    if metrics and metrics[-1].eval_time_ms is None:
        metrics[-1].eval_time_ms = float(m.group(1))
        return True
    return False


def _on_total_eval(p: _Parser, m: re.Match, n: int) -> bool:
    if m.group(1):
        p.b.run.total_eval_time_ms = round(float(m.group(1)) * 1000, 3)
        p.b.ref("total_eval_time", n)
    return True


def _hint(key: str, ref: str | None = None, first: bool = True, consume: bool = False) -> Handler:
    """A handler that records group 1 as hints[key] (the first value seen, unless first=False)."""
    def handle(p: _Parser, m: re.Match, n: int) -> bool:
        h = p.b.run.hints
        if first:
            h.setdefault(key, m.group(1))
        else:
            h[key] = m.group(1)
        if ref:
            p.b.ref(ref, n, overwrite=not first)
        return consume
    return handle


def _on_tokenizer_path(p: _Parser, m: re.Match, n: int) -> bool:
    if m.group(1) not in ("", "./"):
        p.b.run.hints.setdefault("tokenizer_path", m.group(1))
        p.b.ref("tokenizer", n, overwrite=False)
    return False


def _on_byte_arg(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.run.hints.setdefault("tokenizer_kind", "byte")
    p.b.ref("tokenizer", n, overwrite=False)
    return False


def _on_sidecar(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.run.hints["byte_sidecar"] = "1"
    p.b.ref("tokenizer", n, overwrite=False)
    return False


def _on_val_tokens(p: _Parser, m: re.Match, n: int) -> bool:
    tokens = m.group(m.lastindex)
    p.b.run.hints["val_tokens"] = tokens
    p.b.run.val_tokens = int(tokens)
    p.b.ref("val_tokens", n)
    if m.re is _VAL_PATTERN:
        p.b.run.hints.setdefault("val_files", m.group(1))
    return True


def _on_smi_gpu(p: _Parser, m: re.Match, n: int) -> bool:
    gpus = p.b.run.gpus
    if not gpus:
        p.b.ref("gpus", n)
    gpus.setdefault(int(m.group(1)), m.group(2).strip())
    return True


def _on_gpu_name(p: _Parser, m: re.Match, n: int) -> bool:
    if not p.b.run.gpus:
        p.b.ref("gpus", n)
        p.b.run.gpus[0] = m.group(1)
    return True


def _on_world(p: _Parser, m: re.Match, n: int) -> bool:
    if p.b.run.world_size is None:
        p.b.run.world_size = int(m.group(1))
        p.b.ref("world_size", n)
    return False                             # the line may be a hyperparameter dump line too


def _on_calib_start(p: _Parser, m: re.Match, n: int) -> bool:
    p.b.ref("calibration", n, overwrite=False)
    return True


def _on_calib_done(p: _Parser, m: re.Match, n: int) -> bool:
    if "calibration" in p.b.run.refs and p.b.run.calibration_s is None:
        p.b.run.calibration_s = float(m.group(1))
        p.b.ref("calibration_time", n)
    return True


RULES: tuple[Rule, ...] = (
    # the bulk of every log first: training and validation step lines
    Rule("step:", _STEP_VAL, _on_step_val),
    Rule("step:", _STEP_TRAIN, _on_step_train),
    Rule("train_loss", _NEW_TRAIN, _on_new_train),
    Rule("val_loss", _NEW_VAL, _on_new_val),
    Rule("ttt", _TTT_PROGRESS, _skip),
    Rule("", _RUN_START, _on_run_start),
    Rule("Hyperparameters", _DUMP_START, _on_dump_start),
    Rule("  ", _DUMP_LINE, _on_dump_line),
    Rule("=", _KV_LINE, _on_kv_line),
    Rule(":", _COLON_LINE, _on_colon_line),
    Rule("#", _COMMENT, _on_comment),
    Rule("val_bpb", _METRIC, _on_metric),
    Rule("stopping_early", _STOP, _on_stop),
    Rule("seed:", _SEED_OFFICIAL, _on_seed),
    Rule("script_sha256:", _SHA, _on_sha),
    # sizes
    Rule("Total submission size", _TOTAL, _size(lambda scheme: "total_schemed" if scheme else "total_plain")),
    Rule("Serialized model", _MODEL, _size(lambda scheme: "model_schemed" if scheme else "model_plain")),
    Rule("Code size", _CODE, _size(lambda kind: "code_compressed" if kind == "compressed" else "code_plain",
                                   body=False)),
    Rule("budget:", _BUDGET, _size(lambda _: "alt_total", body=False)),
    Rule("artifact_bytes:", _ARTIFACT_BYTES, _size(lambda _: "alt_total", body=False)),
    Rule("artifact:", _ART_CODE, _size(lambda _: "code_other", body=False)),
    Rule("Total submission:", _TOTAL_SUB, _on_total_sub),
    Rule("Code:", _RAW_CODE, _size(lambda _: "code_other", body=False)),
    Rule("[modal]", _SCRIPT_SIZE, _on_script_size),
    Rule("/16.00MB", _ARTIFACT_MB, _hint("artifact_mb", "artifact_mb", first=False, consume=True)),
    # seeds stated other ways, evaluation times
    Rule("seed:", _SEED_DUMP, _on_seed),
    Rule("=", _SEED_ARGS, _on_weak_seed),
    Rule("params:", _SEED_PARAMS, _on_weak_seed),
    Rule("_eval_time:", _PHASE_EVAL, _on_phase_eval),
    Rule("total_eval_time:", _TOTAL_EVAL, _on_total_eval),
    # hints: tokenizer, data, validation set, hyperparameter dumps
    Rule("tokenizer", _TOK_PATH, _on_tokenizer_path),
    Rule("tokenizer_kind=", _TOK_KIND, _hint("tokenizer_kind", "tokenizer")),
    Rule("tokenizer=", _TOKENIZER_ARG, _on_byte_arg),
    Rule("vocab_size", _VOCAB, _hint("vocab_size")),
    Rule("train_shards", _TRAIN_SHARDS, _hint("train_shards", "train_shards")),
    Rule("val_bytes_per_token:", _VAL_BPT, _hint("val_bytes_per_token", "val_bytes_per_token", first=False,
                                                  consume=True)),
    Rule("val_bpb:byte_sidecar", _SIDECAR, _on_sidecar),
    Rule("val_loader:", _VAL_PATTERN, _on_val_tokens),
    Rule("val_files:", _VAL_FILES, _hint("val_files", consume=True)),
    Rule("tokens:", _VAL_TOKENS, _on_val_tokens),
    Rule("dat", _DATASET, _hint("dataset", "dataset")),
    Rule("NVIDIA", _SMI_GPU, _on_smi_gpu),
    Rule("NVIDIA", _GPU_NAME, _on_gpu_name),
    Rule("orld_size", _WORLD, _on_world),
    Rule("alibrat", _CALIB_START, _on_calib_start),
    Rule("in ", _CALIB_DONE, _on_calib_done),
    Rule("(limited)", _PARTIAL_EVAL, _hint("partial_eval", "partial_eval", consume=True)),
)


def _first_char(pattern: re.Pattern) -> str | None:
    """The one character a line must start with for an anchored pattern (`^step:` -> "s"), else None."""
    src = pattern.pattern
    if src.startswith("^\\[") or src.startswith("^\\d"):
        return "[" if src[2] == "[" else None
    if len(src) > 1 and src[0] == "^" and (src[1].isalnum() or src[1] in "#_-") and src[2:3] not in ("*", "?", "+", "{", "|"):
        return src[1]
    return None


_FINDERS = tuple((r.needle, r.pattern.match if r.pattern.pattern.startswith("^") else r.pattern.search, r.handle,
                  _first_char(r.pattern)) for r in RULES)
_BY_FIRST: dict[str, tuple] = {}


def _finders(c: str) -> tuple:
    """The rules that can apply to a line starting with `c`, in table order (computed once per character):
    a rule anchored to another first character is skipped without a look, which keeps a pass fast."""
    found = _BY_FIRST.get(c)
    if found is None:
        found = _BY_FIRST[c] = tuple((n, f, h) for n, f, h, first in _FINDERS if first is None or first == c)
    return found


# ---- reading files ------------------------------------------------------------------------------
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
    """All runs in a log's text; `log` names it in refs and warnings (its file name may carry a seed)."""
    lines = text.splitlines()
    p = _Parser(log)
    start = _embedded_source_end(lines) or 0
    if start:
        _attach_source(p.b, lines[:start], 1)
    skip_to = start
    for i in range(start, len(lines)):
        if i < skip_to:
            continue
        line = lines[i]
        if not line:
            continue
        if line.startswith(_SOURCE_OPENERS) and _scored(p.b):   # logs concatenated: the next run's own source
            end = _embedded_source_end(lines[i:i + _SOURCE_SCAN])   # it looks no further: no copy of the rest
            if end:
                p.new_run(i + 1)
                _attach_source(p.b, lines[i:i + end], i + 1)
                skip_to = i + end
                continue
        if line[0].isdigit():
            m = _TS_PREFIX.match(line)
            if m:
                line = line[m.end():]
                if not line:
                    continue
        for needle, find, handle in _finders(line[0]):
            if needle in line:
                m = find(line)
                if m and handle(p, m, i + 1):
                    break
    runs = _merge(p.builders, log)
    if file_warnings:
        runs[0].warnings[:0] = file_warnings
    return runs


def _set_seed(b: _Builder, seed: int, n: int, weak: bool = False):
    """Record the seed a run's log states. A weak statement (an argument dump) yields to a header line."""
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
    """Header-only fragments of one log (no run has a body) folded into one run."""
    first = runs[0]
    for r in runs[1:]:
        first.warnings.extend(r.warnings)
        first.hints = {**r.hints, **first.hints}
        if first.header_seed is None and r.header_seed is not None:
            first.header_seed, first.refs["seed"] = r.header_seed, r.refs.get("seed", 0)
    _settle_seed(first)
    return first


def _scored(b: _Builder) -> bool:
    """The run has printed a final score: a source block after it starts the next run (logs of several
    runs concatenated, each opening with the source its script logs)."""
    return any(metric_tier(m.label) > 0 for m in b.run.metrics)


def _attach_source(b: _Builder, source: list[str], n: int) -> None:
    """The source a run logged before its own lines (from line n): its text and the hash of its text."""
    src = "\n".join(source)
    b.run.source_text = src
    b.run.source_sha16 = hashlib.sha256((src + "\n").encode()).hexdigest()[:16]
    b.ref("source", n)


_SOURCE_OPENERS = ("import ", "from ", "def ", '"""')
_SOURCE_SCAN = 20000    # lines a logged source may span, its closing separator included


def _embedded_source_end(lines: list[str]) -> int | None:
    """The official script logs its own source, then a line of 100 '='. Index after that line."""
    limit = min(len(lines), _SOURCE_SCAN)
    if not lines or lines[0].startswith("# [corpus:"):
        return None
    for i in range(limit):
        if lines[i] == _SEPARATOR:
            if i >= 20 and any(l.startswith(_SOURCE_OPENERS) for l in lines[: min(i, 200)]):
                return i
            return None
        if lines[i].startswith(("step:", "seed:", "val_bpb:")):
            return None
    return None
