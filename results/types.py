"""The data model shared by parsing, statistics, audit, report and submission.

One `Run` per training run found in a log (a log may hold several runs); one `RunSet` per folder.
Line numbers are 1-based so that checks can say `file:line`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


@dataclass
class Metric:
    """One final-evaluation line: `label val_loss:X val_bpb:Y [eval_time:Nms]`."""
    label: str
    val_loss: float | None
    val_bpb: float
    line: int
    eval_time_ms: float | None = None
    decimals: int = 8                          # decimals val_bpb was printed with (1.2244 -> 4): its precision


class CurvePoint(NamedTuple):
    """One training-loss line: the step, its loss, and the elapsed training time when the log states it."""
    step: int
    train_loss: float
    train_time_ms: float | None = None


@dataclass
class Run:
    log: str                                   # path of the log, relative to the folder
    seed: int | None = None                    # best knowledge: log header, else file name
    header_seed: int | None = None             # seed printed in the log itself (`seed:N`, `seed=N`, ...)
    filename_seed: int | None = None           # seed in the log's file name (train_seed42.log)
    metric: str | None = None                  # label of the line the score came from; None = unparsed
    val_loss: float | None = None
    val_bpb: float | None = None
    metrics: list[Metric] = field(default_factory=list)
    artifact_bytes: int | None = None          # total submission size (code + compressed model)
    model_bytes: int | None = None             # compressed model alone
    code_bytes: int | None = None
    train_time_ms: float | None = None
    eval_time_ms: float | None = None
    steps: int | None = None
    iterations: int | None = None
    stopped_early: bool = False
    tokenizer: str | None = None               # canonical name: sp1024, sp4096, sp8192, sp8192_caseops, byte
    bytes_per_token: float | None = None       # val_loss / (ln2 * val_bpb) of the scoring line
    val_tokens: int | None = None
    script_sha256: str | None = None
    curve: list[CurvePoint] = field(default_factory=list)          # training curve, in log order
    refs: dict[str, int] = field(default_factory=dict)             # fact -> line number
    warnings: list[str] = field(default_factory=list)
    hints: dict[str, str] = field(default_factory=dict)            # tokenizer/dataset hints seen in the log
    hparams: dict[str, str] = field(default_factory=dict)          # the run's configuration as its log states it
    total_eval_time_ms: float | None = None    # `total_eval_time:Ns` when the script prints one
    source_sha16: str | None = None            # sha256[:16] of the training source embedded in the log
    source_text: str | None = None             # embedded source block itself, when still present
    first_line: int = 1                        # where this run starts in its log (several runs per log)
    script_bytes_logged: int | None = None     # `Code size: N bytes` / `Code size (uncompressed)`: the file that ran
    gpus: dict[int, str] = field(default_factory=dict)   # GPU index -> name, from an nvidia-smi table in the log
    world_size: int | None = None              # processes (GPUs) the run used, as the log states it
    calibration_s: float | None = None         # seconds a GPTQ calibration on training data took (refs: calibration)


@dataclass
class RunSet:
    dir: Path
    kind: str                                  # "record" | "run"
    runs: list[Run] = field(default_factory=list)
    submission: dict | None = None             # parsed submission.json (record) or None
    submission_path: Path | None = None
    script_path: Path | None = None            # train_gpt.py shipped beside the logs, if any
    warnings: list[str] = field(default_factory=list)
    extra_runs: list[Run] = field(default_factory=list)   # duplicates / superseded reruns of a seed in `runs`
    batch: dict | None = None                  # batch.json of a run directory
