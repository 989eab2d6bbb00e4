"""What an attempt's log says about how it failed: a configuration error, a hang, or an exception.

The driver feeds every log line of an attempt to its `LogWatch`, which keeps three facts: whether
training started (a `step:N/M` line, the payload's format: docs/CHALLENGE.md), the first Python
exception the job printed (the last line of its traceback, e.g. `ValueError: tokenizer has 1024 pieces
> VOCAB_SIZE=7`; with chained exceptions, the one raised last; tracebacks of other ranks and torchrun's
own ChildFailedError that follow are the same failure seen again), and the job's last line with when it
came (pgolf's own lines, `pgolf-pod: ...` and the like, are not the job's).

Policy (docs/ARCHITECTURE.md, "Failure policy"): an exception of a configuration or data kind
(CONFIG_ERRORS) raised before training started is deterministic: the same spec fails the same way on a
fresh machine, so it is not retried unless `[limits] retry_config_errors = true`. Other exceptions
(RuntimeError covers CUDA and NCCL trouble, OSError covers the network) and out-of-memory are retried
as before. A hung job is described by its silence: how long since its last line, and that line.
"""
from __future__ import annotations

import re
import time

STEP_LINE = re.compile(r"^step:\d+/\d+")
RANK_PREFIX = re.compile(r"^\[(?:rank|default)?\d+\]:\s?")      # torchrun's per-rank output prefixes
TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("During handling of the above exception, another exception occurred:",
           "The above exception was the direct cause of the following exception:")
EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")
CONFIG_ERRORS = frozenset({
    "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError", "NameError", "AssertionError",
    "ImportError", "ModuleNotFoundError", "SyntaxError", "IndentationError", "NotImplementedError",
    "ZeroDivisionError", "FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "PermissionError",
    "UnicodeDecodeError", "JSONDecodeError", "TOMLDecodeError",
})
MAX_ERROR_CHARS = 300
OWN_LINES = ("pgolf-pod:", "pgolf-runpod:", "pgolf:")   # pgolf's own lines in a log: not the job's output


class LogWatch:
    """Facts about one attempt's log, from its lines as they stream."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started_at = clock()
        self.training = False               # a step line was seen
        self.exception: str | None = None   # `Type: message` of the job's first exception
        self.before_training = False        # ... raised before the first step line
        self.last_line: str | None = None
        self.last_at: float | None = None
        self._in_traceback = False
        self._after_exception = False       # the next line may say the exception was chained
        self._chained = False               # ... it did: the next traceback replaces the exception

    def feed(self, line: str) -> None:
        if line.startswith(OWN_LINES):
            return
        text = RANK_PREFIX.sub("", line.rstrip())
        stripped = text.strip()
        if stripped:
            self.last_line, self.last_at = line.rstrip(), self.clock()
        if STEP_LINE.match(text):
            self.training = True
        if self._after_exception and stripped:
            self._after_exception = False
            if stripped in CHAINED:
                self._chained = True
                return
        if text.startswith(TRACEBACK):
            if self.exception is None or self._chained:
                self._in_traceback = True
            self._chained = False
            return
        if not self._in_traceback or not text or text[0].isspace():
            return
        m = EXCEPTION_LINE.match(text)
        if m and _exception_type(m.group("type")):
            self.exception = text[:MAX_ERROR_CHARS]
            self.before_training = not self.training
            self._in_traceback, self._after_exception = False, True

    def config_error(self) -> str | None:
        """The exception line when the job died of a configuration or data error before training."""
        if self.exception and self.before_training:
            name = EXCEPTION_LINE.match(self.exception).group("type").rpartition(".")[2]
            if name in CONFIG_ERRORS:
                return self.exception
        return None

    def silence(self) -> str:
        """`silent for 412 s, last line: "..."` (or that it printed nothing in N s)."""
        now = self.clock()
        if self.last_at is None:
            return f"no output in {now - self.started_at:.0f} s"
        last = self.last_line if len(self.last_line) <= 160 else self.last_line[:157] + "..."
        return f"silent for {now - self.last_at:.0f} s, last line: {last!r}"


def _exception_type(name: str) -> bool:
    """A name that reads as an exception class (`ValueError`, `torch.OutOfMemoryError`, `KeyboardInterrupt`)."""
    last = name.rpartition(".")[2]
    return last.endswith(("Error", "Exception", "Exit", "Interrupt", "Failure", "Warning")) or last in CONFIG_ERRORS
