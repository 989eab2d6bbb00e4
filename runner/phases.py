"""What a streamed log line says about its seed: the phase it is in, a training step, a score, its tokenizer.

The phases of one attempt, in order (the reference payload's lines, docs/CHALLENGE.md "Log lines", and the
public record's formats):

    queued         waiting for a machine (no node or pod yet)
    set-up         a machine is there: pod start, data, the script's own set-up (`seed:`, hyperparameters)
    compile        compilation and warm-up before the timer (`compile:`, `warmup_step`, `loop_warmup`)
    training       `step:N/M train_loss:... train_time:...ms` (or `N/M train_loss: X train_time: Ym`)
    evaluation     after `stopping_early` / the last step: pre-quantisation diagnostics, and the final
                   evaluations (`final_*`, `legal_ttt_exact`, `quantized_ttt*`) after serialisation
    serialisation  quantisation and compression (`quant_step_mult`, `GPTQ`, `Serialized model`)
    collecting     the job is done; logs and artifacts come back (`pgolf-pod: ... done`, the last score)

Phases never go back except from evaluation to serialisation and back (the payload evaluates before and
after it quantises). Lines from pgolf itself (`pgolf-runpod:`, `pgolf-pod:`) are events, never job output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PHASES = ("queued", "set-up", "compile", "training", "evaluation", "serialisation", "collecting")

_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_STEP = re.compile(r"^step:(\d+)/(\d+)\s+(?:train_)?loss:\s*(" + _NUM + r")\b.*?\btrain_time:\s*([\d.]+)ms")
_STEP_NEW = re.compile(r"^(\d+)/(\d+)\s+train_loss:\s*(" + _NUM + r")\s+train_time:\s*([\d.]+)(ms|m|s)\b")
_STOP = re.compile(r"^stopping_early:.*?train_time:\s*([\d.]+)ms")
_SCORE = re.compile(r"^(\w+)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")")
_BPT = re.compile(r"^val_bytes_per_token:\s*([\d.]+)")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0}

_COMPILE = re.compile(r"^(compile:|warmup_step|warmup_cu_buckets|loop_warmup|warmup_time|ttt_lora:compile)")
_SERIAL = re.compile(r"^(quant_step_mult|GPTQ|Serialized model|Code size|serialize)", re.I)
_EVAL_AFTER = re.compile(r"^(Total submission size|final_weights|diagnostic|train_time:\d)")
_FINAL = ("legal_ttt", "quantized_ttt")            # the last evaluation the payloads print
_POD_DONE = re.compile(r"^pgolf-pod:.*\b(done|job (exited|ended))\b")


@dataclass
class Step:
    step: int
    iterations: int
    loss: float
    train_ms: float


@dataclass
class LineInfo:
    """What one line says; every field None when it says nothing of interest."""
    phase: str | None = None            # the phase this line starts or belongs to
    step: Step | None = None
    score: tuple[str, float] | None = None      # (label, val_bpb) of a final evaluation
    bytes_per_token: float | None = None
    stopped_ms: float | None = None     # `stopping_early`: training ended at the wall-clock cap
    event: bool = False                 # a line of pgolf itself (pod created, no capacity, ...)


def read_line(text: str) -> LineInfo:
    """Classify one streamed line (cheap: called for every line of every seed)."""
    line = text.strip()
    info = LineInfo()
    if line.startswith(("pgolf-runpod:", "pgolf-pod:")):
        info.event = True
        info.phase = "collecting" if _POD_DONE.match(line) else None
        return info
    m = _STEP.match(line)
    if m:
        info.phase, info.step = "training", _step(m.group(1), m.group(2), m.group(3), float(m.group(4)))
        return info
    m = _STEP_NEW.match(line)
    if m:
        ms = float(m.group(4)) * _UNIT_MS[m.group(5)]
        info.phase, info.step = "training", _step(m.group(1), m.group(2), m.group(3), ms)
        return info
    m = _STOP.match(line)
    if m:
        info.phase, info.stopped_ms = "evaluation", float(m.group(1))
        return info
    m = _SCORE.match(line)
    if m and not m.group(1).startswith(("step", "diagnostic")) and "pre" not in m.group(1):
        try:
            info.score = (m.group(1), float(m.group(3)))
        except ValueError:
            pass
        info.phase = "collecting" if m.group(1).startswith(_FINAL) else "evaluation"
        return info
    m = _BPT.match(line)
    if m:
        info.bytes_per_token = float(m.group(1))
        return info
    if _COMPILE.match(line):
        info.phase = "compile"
    elif _SERIAL.match(line):
        info.phase = "serialisation"
    elif _EVAL_AFTER.match(line):
        info.phase = "evaluation"
    return info


def _step(step: str, iterations: str, loss: str, train_ms: float) -> Step:
    try:
        value = float(loss)
    except ValueError:
        value = float("nan")
    return Step(int(step), int(iterations), value, train_ms)


def advance(current: str, new: str | None) -> str:
    """The phase after a line that says `new`: forward only, except evaluation <-> serialisation."""
    if new is None or new == current:
        return current
    if {current, new} == {"evaluation", "serialisation"}:
        return new
    return new if PHASES.index(new) > PHASES.index(current) else current
