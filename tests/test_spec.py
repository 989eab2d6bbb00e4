"""Job spec validation: every error is one line naming the file and the key; batch.json's copy of it."""
import json
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner.spec import load_spec, spec_from_batch, spec_to_batch, with_overrides
from results.secrets import Scrubber, redact
from results.secrets import is_secret_name as is_secret

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
name = "t"
script = "train.py"
seeds = [1, 2]
[env]
LR = 0.5
FLAG = true
STEPS = 10
[data]
paths = { DATA_PATH = "data" }
"""


def write(tmp_path, text, name="job.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_specs_validate():
    smoke = load_spec(ROOT / "jobs" / "smoke.toml")
    assert smoke.backend == "ray" and len(smoke.seeds) == 3 and smoke.nproc_per_node == 1
    assert Path(smoke.script) == ROOT / "model" / "train_gpt.py"
    assert Path(smoke.data.paths["DATA_PATH"]).is_dir()
    rec = load_spec(ROOT / "jobs" / "record_k_kvshare_wider.toml")
    assert rec.nproc_per_node == 8 and rec.gpus_per_seed == 8 and rec.runpod.max_pods == 3
    # its baseline is a `records:` reference, found under the records root (tests/conftest.py: tests/data/records)
    assert Path(rec.baseline.ref).is_dir() and (Path(rec.baseline.ref) / "submission.json").is_file()


@pytest.mark.parametrize("seed, needle", [(-1, "must be >= 0, got -1"), (2 ** 32, "must be < 4294967296")])
def test_seeds_the_payload_cannot_use_are_refused(tmp_path, seed, needle):
    """Issue 20: a negative seed or one >= 2**32 passed the check, started Ray and failed in the payload."""
    with pytest.raises(PgolfError, match=rf"job.toml: seeds: {needle}"):
        load_spec(write(tmp_path, GOOD.replace("seeds = [1, 2]", f"seeds = [1, {seed}]")))
    assert load_spec(write(tmp_path, GOOD.replace("seeds = [1, 2]", f"seeds = [0, {2 ** 32 - 1}]"))).seeds[1] == 2 ** 32 - 1
    adaptive = GOOD.replace("seeds = [1, 2]", f"seeds = [{2 ** 32 - 2}]") + \
        '[baseline]\nref = 1.1\npolicy = "rule"\n[adaptive]\nmin = 2\nmax = 4\n'
    with pytest.raises(PgolfError, match=r"later waves' seeds .* would reach 2\*\*32"):
        load_spec(write(tmp_path, adaptive))


def test_paths_relative_to_spec_and_env_strings(tmp_path):
    s = load_spec(write(tmp_path, GOOD))
    assert s.script == str(tmp_path / "train.py")
    assert s.data.paths["DATA_PATH"] == str(tmp_path / "data")
    env = s.job_env()
    assert env["LR"] == "0.5" and env["FLAG"] == "1" and env["STEPS"] == "10"
    assert env["DATA_PATH"] == str(tmp_path / "data")
    assert env["MAX_WALLCLOCK_SECONDS"] == "600"     # from [limits] train_seconds
    assert s.limits.timeout() == 1800


@pytest.mark.parametrize("extra, needle", [
    ("[limits]\nretries = -1\n", "[limits] retries: must be >= 0, got -1"),
    ("[limits]\nretrys = 2\n", "[limits] retrys: unknown key"),
    ('backend = "aws"\n', "backend: "),
    ("nproc_per_node = 0\n", "nproc_per_node: must be > 0, got 0"),
])
def test_errors_name_file_and_key(tmp_path, extra, needle):
    text = GOOD.replace('seeds = [1, 2]\n', 'seeds = [1, 2]\n' + extra) if not extra.startswith("[") else GOOD + extra
    with pytest.raises(PgolfError) as e:
        load_spec(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "job.toml")) and needle in msg, msg


def test_duplicate_seeds_missing_keys_and_bad_toml(tmp_path):
    with pytest.raises(PgolfError, match=r"seeds: seeds must be unique, \[2\] repeated"):
        load_spec(write(tmp_path, GOOD.replace("[1, 2]", "[1, 2, 2]")))
    with pytest.raises(PgolfError, match="script: required key is missing"):
        load_spec(write(tmp_path, GOOD.replace('script = "train.py"\n', "")))
    with pytest.raises(PgolfError, match="not valid TOML"):
        load_spec(write(tmp_path, "name = \n"))
    with pytest.raises(PgolfError, match="job spec not found"):
        load_spec(tmp_path / "nope.toml")


def test_runpod_section_defaults_unknown_keys_and_seed_override(tmp_path):
    s = load_spec(write(tmp_path, GOOD + '[runpod]\nmax_pods = 2\nsetup_s = 1200\n'), {"seeds": [7]})
    assert s.seeds == [7]
    assert s.runpod.max_pods == 2 and s.runpod.setup_s == 1200
    assert s.runpod.gpu_type == "NVIDIA H100 80GB HBM3" and s.runpod.gpu_count == 8 and s.runpod.cloud_type == "SECURE"
    with pytest.raises(PgolfError) as e:        # a typo must not cost a pod: one line, file, key, known keys
        load_spec(write(tmp_path, GOOD + '[runpod]\ngpus = 8\n'))
    assert "job.toml: [runpod] gpus: unknown key" in str(e.value) and "gpu_count" in str(e.value)
    with pytest.raises(PgolfError, match=r"\[runpod\] cloud_type: "):
        load_spec(write(tmp_path, GOOD + '[runpod]\ncloud_type = "SPOT"\n'))


def test_batch_json_round_trip_keeps_secrets_out_and_brings_them_back(tmp_path):
    s = load_spec(write(tmp_path, GOOD.replace("STEPS = 10", 'STEPS = 10\nMY_API_KEY = "k-123456789"')
                        + '[runpod]\nmax_pods = 2\n'))
    d = spec_to_batch(s, Scrubber(s.env))
    assert d["env"]["MY_API_KEY"] == "***" and "k-123456789" not in json.dumps(d)
    assert d["runpod"] == {"max_pods": 2}                      # only what the spec set: defaults can improve
    assert d["limits"]["train_seconds"] == 600 and d["script"] == str(tmp_path / "train.py")
    with pytest.raises(PgolfError, match="env.MY_API_KEY is a secret .* export MY_API_KEY"):
        spec_from_batch(d, "runs/x/batch.json", {})
    back = spec_from_batch(d, "runs/x/batch.json", {"MY_API_KEY": "k-123456789"}, backend="runpod")
    assert back.env["MY_API_KEY"] == "k-123456789" and back.backend == "runpod"
    assert back.model_dump(exclude={"backend"}) == s.model_dump(exclude={"backend"})
    assert spec_to_batch(back, Scrubber(back.env))["runpod"] == {"max_pods": 2}
    assert with_overrides(s, "x", seeds=[5], backend=None).seeds == [5]
    with pytest.raises(PgolfError, match="x: seeds: seeds must be unique"):
        with_overrides(s, "x", seeds=[5, 5])


def test_secrets():
    assert is_secret("RUNPOD_API_KEY") and is_secret("HF_TOKEN") and is_secret("db_password_x")
    assert is_secret("AWS_SECRET") and not is_secret("KEY_SIZE") and not is_secret("TOKENIZER_PATH")
    assert redact({"HF_TOKEN": "abc", "LR": 1}) == {"HF_TOKEN": "***", "LR": 1}
    sc = Scrubber({"HF_TOKEN": "hf_abcdef", "X_KEY": "1", "LR": "hf_abcdef-not-secret-name"})
    assert sc("token hf_abcdef here") == "token *** here"
    assert sc("x 1 y") == "x 1 y"           # too short to scrub safely
    assert sc.obj({"a": ["hf_abcdef"], "MY_TOKEN": "zz"}) == {"a": ["***"], "MY_TOKEN": "***"}
