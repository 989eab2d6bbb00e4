"""Job specs (jobs/*.toml): parsed with tomllib, validated with pydantic, errors as one line.

A spec says what to run (script, env, seeds), on what (backend, nproc_per_node, gpus_per_seed), under
which limits, on which data, against which baseline. Relative paths are resolved against the spec file's
folder so a spec works from any working directory. `JobSpec.model_dump()` is what batch.json stores
(with secret-looking env values redacted by results.secrets).
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from results.errors import PgolfError

EnvValue = Union[bool, int, float, str]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Section):
    train_seconds: float = Field(600, gt=0)
    eval_seconds: float = Field(600, gt=0)
    attempt_timeout_s: float | None = Field(None, gt=0)   # default: train + eval + 600 s of set-up
    retries: int = Field(1, ge=0)          # extra attempts after a non-zero exit
    infra_retries: int = Field(3, ge=0)    # extra attempts after the machine failed (node died, pod lost)

    def timeout(self) -> float:
        return self.attempt_timeout_s or (self.train_seconds + self.eval_seconds + 600)


class Data(_Section):
    variant: str | None = None                     # e.g. "sp8192", "tiny": informative, used by backends
    paths: dict[str, str] = Field(default_factory=dict)   # env name -> path, e.g. DATA_PATH, TOKENIZER_PATH
    prepare: str | None = None                     # shell command that builds the data where the job runs


class Baseline(_Section):
    ref: str | float | None = None                 # record folder, submission.json or a bpb number
    policy: Literal["rule", "progression"] | None = None


class Submission(_Section):
    author: str | None = None
    github_id: str | None = None
    name: str | None = None
    track: str | None = None


class RunPod(BaseModel):
    """[runpod]: the known keys are type-checked here, unset ones stay out of the resolved spec so the
    RunPod backend's own defaults apply (runner/executors/runpod.py `settings`, which also rejects
    unknown keys); extra keys pass through to it."""
    model_config = ConfigDict(extra="allow")
    image: str | None = None
    gpu_type: str | None = None                # backend default "NVIDIA H100 80GB HBM3"
    gpu_count: int | None = Field(None, gt=0)  # backend default 8
    cloud_type: Literal["SECURE", "COMMUNITY", "ALL"] | None = None   # backend default SECURE
    max_pods: int | None = Field(None, gt=0)
    container_disk_gb: int | None = Field(None, gt=0)
    volume_gb: int | None = Field(None, ge=0)
    price_per_hour: float | None = Field(None, ge=0)   # $ per pod-hour for the budget estimate


class JobSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    script: str
    env: dict[str, EnvValue] = Field(default_factory=dict)
    seeds: list[int] = Field(min_length=1)
    nproc_per_node: int = Field(1, gt=0)
    gpus_per_seed: int = Field(8, ge=0)
    backend: Literal["ray", "runpod"] = "ray"
    launcher: Literal["torchrun", "python"] = "torchrun"  # "python": plain `python script`, one process only
    limits: Limits = Field(default_factory=Limits)
    data: Data = Field(default_factory=Data)
    baseline: Baseline = Field(default_factory=Baseline)
    submission: Submission = Field(default_factory=Submission)
    runpod: RunPod = Field(default_factory=RunPod)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be unique, {dup} repeated")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, EnvValue]) -> dict[str, EnvValue]:
        for k in v:
            if not k.replace("_", "").isalnum() or k[0].isdigit():
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v

    @model_validator(mode="after")
    def _launcher_single_process(self) -> "JobSpec":
        if self.launcher == "python" and self.nproc_per_node != 1:
            raise ValueError("launcher = \"python\" runs one process: set nproc_per_node = 1 or use torchrun")
        return self

    def job_env(self) -> dict[str, str]:
        """Environment the job gets from the spec: env values as strings, data paths, limits."""
        env = {k: _env_str(v) for k, v in self.env.items()}
        env.update(self.data.paths)
        env.setdefault("MAX_WALLCLOCK_SECONDS", _env_str(self.limits.train_seconds))
        return env


def _env_str(v: EnvValue) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _loc(err: dict[str, Any]) -> str:
    """pydantic error location -> `[limits] retries` / `seeds` / `env.FOO`."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    if not loc:
        return "(top level)"
    if len(loc) > 1 and loc[0] in JobSpec.model_fields and loc[0] not in ("env", "seeds"):
        return f"[{loc[0]}] " + ".".join(loc[1:])
    return ".".join(loc)


def _message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see jobs/smoke.toml for the known keys)"
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    msg = msg.replace("Input should be greater than or equal to", "must be >=")
    msg = msg.replace("Input should be greater than", "must be >")
    if "input" in err and kind not in ("missing",):
        got = err["input"]
        if not isinstance(got, (dict, list)) or len(str(got)) < 60:
            msg += f", got {got!r}"
    return msg


def resolve_path(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job spec; paths become absolute (relative to the spec file's folder).

    Raises PgolfError with one line: `FILE: [section] key: problem`.
    """
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: job spec not found (give a TOML file, e.g. jobs/smoke.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PgolfError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise PgolfError(f"{path}: not a text file (expected TOML)") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_spec(raw, str(path), base=path.resolve().parent)


def validate_spec(raw: dict[str, Any], where: str, base: Path | None = None) -> JobSpec:
    """Validate a spec dict (from TOML or batch.json); with `base`, resolve relative paths against it."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise PgolfError(f"{where}: {_loc(err)}: {_message(err)}{more}") from None
    if base is not None:
        spec.script = resolve_path(base, spec.script)
        spec.data.paths = {k: resolve_path(base, v) for k, v in spec.data.paths.items()}
        if isinstance(spec.baseline.ref, str) and not _is_number(spec.baseline.ref):
            spec.baseline.ref = resolve_path(base, spec.baseline.ref)
    return spec


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
