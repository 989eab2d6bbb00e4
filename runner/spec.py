"""Job specs (jobs/*.toml): parsed with tomllib, validated with pydantic, errors as one line.

A spec says what to run (script, env, seeds), on what (backend, nproc_per_node, gpus_per_seed), under
which limits, on which data, against which baseline. Relative paths are resolved against the spec file's
folder so a spec works from any working directory. The typed `JobSpec` is what every consumer gets (the
driver, the backends, preflight, the CLI); a dict exists only in batch.json (`spec_to_batch`), read back
with the same validation on resume (`spec_from_batch`). Every rule about a spec lives here once: the
attempt deadline (`Limits.timeout`), unique seeds, env names, the `[runpod]` keys and their defaults.
"""
from __future__ import annotations

import difflib
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from results.errors import PgolfError
from results.secrets import Scrubber, is_secret_name, redact

EnvValue = Union[bool, int, float, str]
DEFAULT_CUDA = "12.8"          # the default image's CUDA
CPU_DISK_GB, GPU_DISK_GB = 20, 80
CPU_DISK_GB_PER_VCPU = {"cpu3c": 10, "cpu3g": 10, "cpu5c": 15}   # RunPod's CPU container disk caps (its docs)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Section):
    train_seconds: float = Field(600, gt=0)
    eval_seconds: float = Field(600, gt=0)
    attempt_timeout_s: float | None = Field(None, gt=0)   # default: train + eval + 600 s of set-up
    retries: int = Field(1, ge=0)          # extra attempts after a non-zero exit
    infra_retries: int = Field(3, ge=0)    # extra attempts after the machine failed (node died, pod lost)
    retry_config_errors: bool = False      # retry a configuration/data error raised before training (runner/failures.py)

    def timeout(self) -> float:
        """The hard deadline of one attempt (the backends kill the job at it)."""
        return self.attempt_timeout_s or (self.train_seconds + self.eval_seconds + 600)


class Data(_Section):
    variant: str | None = None                     # e.g. "sp8192", "tiny": informative, used by backends
    paths: dict[str, str] = Field(default_factory=dict)   # env name -> path, e.g. DATA_PATH, TOKENIZER_PATH
    prepare: str | None = None                     # shell command that builds the data where the job runs


class Baseline(_Section):
    ref: str | float | None = None                 # record folder, submission.json or a bpb number
    policy: Literal["rule", "progression"] | None = None


class Adaptive(_Section):
    """[adaptive]: seeds run in waves and the batch stops once its question is answered (issue 12).

    After each wave the runner tests the seeds so far against [baseline] (results.sequential.decide) and
    continues, stops for futility (conditional power under the current estimate below `futility`), stops
    for success (only across the `spending` boundary; "none": no early success), or stops at `max`. The
    seeds are the spec's `seeds` in order, then consecutive integers after the largest of them."""
    min: int = Field(ge=2)                         # seeds of the first wave (the first look)
    max: int = Field(ge=2)                         # the most seeds the batch may run
    wave: int | None = Field(None, ge=1)           # seeds per later wave (default: min)
    futility: float = Field(0.10, ge=0, lt=1)      # 0 turns the futility stop off
    spending: Literal["obf", "pocock", "none"] = "obf"   # O'Brien–Fleming, Pocock, or no early success

    @model_validator(mode="after")
    def _order(self) -> "Adaptive":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def looks(self) -> tuple[int, ...]:
        """Planned looks, as cumulative seed counts: after min seeds, then every `wave` more, and at max."""
        wave = self.wave or self.min
        return tuple(range(self.min, self.max, wave)) + (self.max,)


class Abort(_Section):
    """[abort]: stop a seed early when its train loss is clearly worse than the record's own curve (issue 12).

    At each fraction in `at` of the wall-clock training budget, the seed's train loss (the mean of what it
    logged over the last 5% of the budget) is compared with the mean train-loss curve of the record's seeds
    at the same elapsed training time; worse by more than `margin` nats aborts the seed (not retried, not
    counted). The curve comes from `curve` (a record folder or run directory), else from [baseline] ref."""
    at: list[float] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)
    margin: float = Field(gt=0)                    # nats of train loss; required: state what "clearly worse" is
    curve: str | None = None

    @field_validator("at")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in v):
            raise ValueError(f"fractions of the training budget must be between 0 and 1, got {v}")
        return sorted(set(v))


class Submission(_Section):
    author: str | None = None
    github_id: str | None = None
    name: str | None = None
    track: str | None = None


class RunPodSettings(_Section):
    """[runpod]: every key, its default and its check, in one place (unknown keys are errors: a typo
    should not cost a pod). batch.json keeps only the keys the spec set, so defaults can improve."""
    gpu_type: str = "NVIDIA H100 80GB HBM3"        # the SXM part the rules require
    gpu_count: int = Field(8, gt=0)
    cpu: str | None = None                         # a CPU pod of this flavor (e.g. "cpu3c") instead of GPUs
    vcpus: int = Field(4, ge=2)                    # a CPU pod's vCPUs: a power of two its flavor allows
    cloud_type: Literal["SECURE", "COMMUNITY"] = "SECURE"
    data_centers: list[str] = Field(default_factory=list)   # where pods may go ([]: anywhere)
    image: str = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    max_pods: int | None = Field(None, gt=0)       # pods at once; default: what spend_limit allows at the price
    spend_limit: float = Field(80.0, gt=0)         # $/h the account may spend (RunPod's default limit)
    start_timeout_s: float = Field(1200, gt=0)     # from creation (image pull included) until its bootstrap answers, else replaced
    container_disk_gb: int | None = Field(None, gt=0)   # None: 20 GB on a CPU pod, 80 GB on a GPU pod
    min_cuda_version: str | None = Field(None, pattern=r"^\d+\.\d+$")   # the host's CUDA floor; None: the image's
    network_volume: str | None = None              # a network volume id: the dataset is downloaded onto it once
    volume_path: str = "/workspace"                # where the network volume is mounted in the pod
    price_per_hour: float | None = Field(None, ge=0)   # $ per pod-hour for the estimate; None: RunPod's list price
    setup_s: float = Field(900, ge=0)              # pod start + data + compile: for the estimate and the backstop
    seeds_per_pod: int = Field(1, ge=1)            # seeds one after another on one pod, after one set-up
    setup_command: str = ""                        # shell command on the pod before the data (pip install ...)
    data_repo: str = ""                            # Hugging Face dataset repo of the variant ("": the known one)
    data_remote_root: str = ""                     # export folder inside it ("": the known ones are tried)
    train_shards: int = Field(80, gt=0)            # training shards downloaded (the manifest's count caps it)
    min_triton: str = "3.7.1"                      # fla with an older Triton miscompiles GDN on Hopper (fla #640)
    backstop_grace_s: float = Field(900, ge=0)     # the pod kills itself this long after its deadline
    collect_grace_s: float = Field(1800, ge=0)     # ... or this long after its job ended, nobody collecting
    cluster: bool = False                          # each batch on one Instant Cluster, a seed per node, via Ray

    @model_validator(mode="after")
    def _cluster_shape(self) -> "RunPodSettings":
        if self.cluster and self.cpu:
            raise ValueError("cluster = true: Instant Clusters are GPU nodes only; drop cpu (or cluster)")
        if self.cluster and self.seeds_per_pod > 1:
            raise ValueError("cluster = true runs one seed per node; drop seeds_per_pod (or cluster)")
        return self

    @field_validator("vcpus")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("RunPod's CPU pods take a power of two vCPUs (2, 4, 8, ...)")
        return v

    @model_validator(mode="after")
    def _cpu_disk_fits(self) -> "RunPodSettings":
        most = self.cpu_disk_limit_gb()
        if most is not None and self.container_disk_gb is not None and self.container_disk_gb > most:
            raise ValueError(f"container_disk_gb = {self.container_disk_gb}: a {self.cpu} pod with {self.vcpus} "
                             f"vCPUs takes at most {most} GB of container disk (RunPod: {most // self.vcpus} GB per "
                             f"vCPU)")
        return self

    def cpu_disk_limit_gb(self) -> int | None:
        """RunPod's container disk cap of a CPU pod: vCPUs x 10 GB (cpu3c, cpu3g) or x 15 GB (cpu5c), as its
        docs state; None for a GPU pod or a flavor the docs do not size (RunPod then says it)."""
        per = CPU_DISK_GB_PER_VCPU.get(self.cpu or "")
        return per * self.vcpus if per else None

    def within_spend_limit(self, usd_per_hour: float) -> int:
        """How many machines at this price the account's spend limit allows at once (at least 1: RunPod
        refuses the rest)."""
        return max(1, int(self.spend_limit // usd_per_hour)) if usd_per_hour > 0 else 1

    def pods_at_once(self, usd_per_hour: float) -> int:
        """`max_pods`, else what the spend limit allows: the one rule for the backend, its estimate and
        `pgolf plan`."""
        return self.max_pods or self.within_spend_limit(usd_per_hour)

    def disk_gb(self) -> int:
        """The container disk a pod gets: the spec's, else 20 GB for a CPU pod (the job's work folder and
        caches; RunPod's 80 GB default is over a small CPU pod's cap and reads as "no capacity"), else 80 GB."""
        if self.container_disk_gb is not None:
            return self.container_disk_gb
        return min(CPU_DISK_GB, self.cpu_disk_limit_gb() or CPU_DISK_GB) if self.cpu else GPU_DISK_GB

    def cuda_floor(self) -> str | None:
        """gpu.minCudaVersion of a GPU pod: the spec's, else the CUDA the image was built for (its tag's
        cudaX.Y), else 12.8 (the default image's); None on a CPU pod. An older host driver cannot start
        the image ("OCI runtime create failed")."""
        if self.cpu:
            return None
        if self.min_cuda_version:
            return self.min_cuda_version
        tag = re.search(r"cuda-?(\d+\.\d+)", self.image.rpartition(":")[2])
        return tag.group(1) if tag else DEFAULT_CUDA


SEED_LIMIT = 2 ** 32
# a seed the payload can use: numpy and the data loader take 0 <= seed < 2**32 (a negative or larger one
# would pass here, start Ray and fail in the payload)
Seed = Annotated[StrictInt, Field(ge=0, lt=SEED_LIMIT)]


class JobSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    script: str
    env: dict[str, EnvValue] = Field(default_factory=dict)
    seeds: list[Seed] = Field(min_length=1)          # "42" is a typo worth a line, not a seed
    nproc_per_node: int = Field(1, gt=0)
    gpus_per_seed: int = Field(8, ge=0)
    backend: Literal["ray", "runpod"] = "ray"
    launcher: Literal["torchrun", "python"] = "torchrun"  # "python": plain `python script`, one process only
    limits: Limits = Field(default_factory=Limits)
    data: Data = Field(default_factory=Data)
    baseline: Baseline = Field(default_factory=Baseline)
    submission: Submission = Field(default_factory=Submission)
    runpod: RunPodSettings = Field(default_factory=RunPodSettings)
    adaptive: Adaptive | None = None               # [adaptive]: waves until the answer is known
    abort: Abort | None = None                     # [abort]: early abort against the record's curve
    reproduces: str | None = None        # the record folder this batch runs again (`pgolf reproduce`)

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

    @model_validator(mode="after")
    def _adaptive_needs_baseline(self) -> "JobSpec":
        if self.adaptive is not None:
            if self.baseline.ref is None or self.baseline.policy is None:
                raise ValueError("[adaptive] needs [baseline] ref and policy: the waves stop on that test")
            if len(self.seeds) > self.adaptive.max:
                raise ValueError(f"[adaptive] max is {self.adaptive.max} but {len(self.seeds)} seeds are listed")
            if self.seed_sequence(self.adaptive.max)[-1] >= SEED_LIMIT:
                raise ValueError(f"[adaptive] max {self.adaptive.max}: the later waves' seeds (after "
                                 f"{max(self.seeds)}) would reach 2**32; list smaller seeds")
        if self.abort is not None and self.abort.curve is None and not isinstance(self.baseline.ref, str):
            raise ValueError("[abort] needs the record's curve: set [abort] curve or [baseline] ref to a record folder")
        return self

    def seed_sequence(self, n: int) -> list[int]:
        """The first n seeds of the batch: the listed seeds in order, then consecutive integers after the
        largest of them (deterministic, so a resumed or repeated batch draws the same seeds)."""
        out = list(self.seeds[:n])
        nxt = max(self.seeds) + 1
        while len(out) < n:
            out.append(nxt)
            nxt += 1
        return out

    def max_seeds(self) -> int:
        """The most seeds this batch may run (the adaptive maximum, else the listed seeds)."""
        return self.adaptive.max if self.adaptive else len(self.seeds)

    def budget_seconds(self) -> float:
        """The wall-clock training budget the job gets (MAX_WALLCLOCK_SECONDS, [limits] train_seconds)."""
        return float(self.job_env()["MAX_WALLCLOCK_SECONDS"])

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
    if len(loc) == 1 and _section_model(loc[0]) is not None:     # a rule over the whole section
        return f"[{loc[0]}]"
    return ".".join(loc)


def _message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        known = _known_keys(err["loc"])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}known: {', '.join(known)})"
    if kind == "missing":
        return "required key is missing"
    if kind == "int_type" and isinstance(err.get("input"), str):
        return f"must be a number, got the string {err['input']!r} (write it without quotes)"
    msg = msg.removeprefix("Value error, ")
    msg = msg.replace("Input should be greater than or equal to", "must be >=")
    msg = msg.replace("Input should be greater than", "must be >")
    msg = msg.replace("Input should be less than", "must be <")
    if "input" in err and kind not in ("missing",):
        got = err["input"]
        if not isinstance(got, (dict, list)) or len(str(got)) < 60:
            msg += f", got {got!r}"
    return msg


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key was found (the spec's top level or one of its sections)."""
    model = (_section_model(str(loc[0])) if len(loc) > 1 else None) or JobSpec
    return list(model.model_fields)


def _section_model(name: str) -> type[BaseModel] | None:
    """The model of a [section] of the spec (`Adaptive | None` -> Adaptive), None for other keys."""
    field = JobSpec.model_fields.get(name)
    if field is None:
        return None
    for cand in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


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


def with_overrides(spec: JobSpec, where: str, **overrides: Any) -> JobSpec:
    """The spec with top-level keys replaced (None: keep), validated again (e.g. `seeds`, `backend`)."""
    over = {k: v for k, v in overrides.items() if v is not None}
    if not over:
        return spec
    return validate_spec({**spec.model_dump(exclude_unset=True), **over}, where)


def spec_to_batch(spec: JobSpec, scrub: Scrubber) -> dict[str, Any]:
    """The spec as batch.json stores it: JSON types, secret env values masked, [runpod] as written."""
    d = spec.model_dump(mode="json")
    d["env"] = redact(d["env"])
    d["runpod"] = spec.runpod.model_dump(mode="json", exclude_unset=True)
    return scrub.obj(d)


def spec_from_batch(raw: dict[str, Any], where: str, environ: Mapping[str, str],
                    backend: str | None = None) -> JobSpec:
    """The spec of a batch.json, validated again; its secret env values (masked on disk) come back from
    `environ`, or the resume stops with what to export."""
    raw = dict(raw)
    env = dict(raw.get("env") or {})
    for k in env:
        if is_secret_name(k):
            if k not in environ:
                raise PgolfError(f"{where}: env.{k} is a secret that batch.json does not keep: "
                                 f"export {k} and resume again")
            env[k] = environ[k]
    raw["env"] = env
    if backend:
        raw["backend"] = backend
    return validate_spec(raw, where)


def validate_spec(raw: dict[str, Any], where: str, base: Path | None = None) -> JobSpec:
    """Validate a spec dict (from TOML or batch.json); with `base`, resolve relative paths against it."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        # a misspelled key first: its "unknown key" explains the "missing" error of the key it was meant to be
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        err = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise PgolfError(f"{where}: {_loc(err)}: {_message(err)}{more}") from None
    if base is not None:
        spec.script = resolve_path(base, spec.script)
        spec.data.paths = {k: resolve_path(base, v) for k, v in spec.data.paths.items()}
        if spec.reproduces:
            spec.reproduces = resolve_path(base, spec.reproduces)
        if isinstance(spec.baseline.ref, str) and not _is_number(spec.baseline.ref):
            spec.baseline.ref = _record_path(base, spec.baseline.ref, f"{where}: [baseline] ref")
        if spec.abort is not None and spec.abort.curve:
            spec.abort.curve = _record_path(base, spec.abort.curve, f"{where}: [abort] curve")
    return spec


def _record_path(base: Path, ref: str, where: str) -> str:
    """A record reference: `records:track_.../NAME` (the public records, runner/records.py) or a path."""
    from runner import records
    if not records.is_ref(ref):
        return resolve_path(base, ref)
    try:
        return records.resolve(ref)
    except PgolfError as e:
        raise PgolfError(f"{where}: {e}") from None


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
