"""pgolf reproduce, results side: a job spec from a record folder written by `pgolf submit`, and the paired
comparison of reproduced against claimed per-seed scores (including a claim that does not reproduce)."""
import json
import math
import tomllib
from pathlib import Path

import pytest

from corpus import TEN, needs_records
from results.errors import PgolfError
from results.report import write_report
from results.reproduce import compare, compare_with_record, sentence, spec_from_record
from test_submit import make_run_dir

PAYLOAD = Path(__file__).resolve().parents[1] / "model" / "train_gpt.py"
SMOKE = Path(__file__).resolve().parents[1] / "jobs" / "smoke.toml"
TINY = Path(__file__).resolve().parents[1] / "model" / "data" / "tiny"
CLAIMED = {42: 1.0800, 1337: 1.0810, 2025: 1.0805}


def smoke_dump(tmp_root: Path) -> tuple[str, ...]:
    """The hyperparameter dump the payload prints for jobs/smoke.toml (data at this checkout's tiny set)."""
    env = tomllib.loads(SMOKE.read_text())["env"]
    lines = ["Hyperparameters:", f"  data_path: {TINY}", f"  tokenizer_path: {TINY / 'tokenizer.model'}",
             "  seed: 42", "  run_id: run", "  max_wallclock_seconds: 25.0"]
    lines += [f"  {k.lower()}: {v}" for k, v in env.items()]
    return tuple(lines) + ("world_size:1 device:cpu torch:2.11.0+cpu",)


@pytest.fixture
def smoke_record(tmp_path):
    """A record folder as `pgolf submit` writes it from the smoke batch (our payload, non-record track)."""
    from results.submit import submit
    run = make_run_dir(tmp_path, CLAIMED, script=PAYLOAD.read_text(), track="non_record_16mb",
                       head=smoke_dump(tmp_path))
    out = tmp_path / "record"
    submit(run, out)
    return out


def test_spec_from_a_record_written_by_submit(smoke_record):
    spec, notes = spec_from_record(smoke_record)
    assert spec["script"] == str((smoke_record / "train_gpt.py").resolve())
    assert spec["seeds"] == [42, 1337, 2025]
    smoke_env = {k: str(v) for k, v in tomllib.loads(SMOKE.read_text())["env"].items()}
    assert spec["env"] == smoke_env                          # every hyperparameter the logs state, as env
    assert spec["limits"]["train_seconds"] == 25.0 and spec["nproc_per_node"] == 1 and spec["gpus_per_seed"] == 0
    assert spec["data"] == {"variant": "tiny", "paths": {"DATA_PATH": str(TINY),
                                                         "TOKENIZER_PATH": str(TINY / "tokenizer.model")}}
    assert spec["submission"]["track"] == "non_record_16mb" and any("non-record" in n for n in notes)
    assert "SEED" not in spec["env"] and "RUN_ID" not in spec["env"] and "TORCH" not in spec["env"]
    json.dumps(spec)


def test_spec_validates_as_a_runner_job_spec(smoke_record):
    from runner.spec import validate_spec                   # the runner's own model (tests may cross layers)
    spec, _ = spec_from_record(smoke_record, seeds=[7])
    job = validate_spec(spec, "reproduce")
    assert job.seeds == [7] and job.job_env()["MAX_WALLCLOCK_SECONDS"] == "25" and job.env["DEVICE"] == "cpu"


def test_record_track_limits_and_official_variant(tmp_path):
    from results.submit import submit
    run = make_run_dir(tmp_path, CLAIMED, script=PAYLOAD.read_text(),
                       head=("Hyperparameters:", "  num_layers: 10", "  model_dim: 544"))
    submit(run, tmp_path / "rec")
    spec, notes = spec_from_record(tmp_path / "rec")
    assert spec["limits"] == {"train_seconds": 600.0, "eval_seconds": 600.0}
    assert spec["env"] == {"NUM_LAYERS": "10", "MODEL_DIM": "544"} and spec["data"] == {"variant": "sp8192"}
    assert any("./data/datasets/fineweb10B_sp8192" in n for n in notes)


@needs_records
def test_a_public_record_is_reproduced_with_its_own_script(tmp_path):
    """A public folder ships its script: the spec runs that file on the claimed seeds, 8 GPUs, the record's
    limits; the same folder without its script cannot be reproduced."""
    folder = TEN / "2026-04-06_SP8192_QK5_LegalTTT_1.0828"
    spec, _ = spec_from_record(folder)
    assert spec["script"] == str(folder / "train_gpt.py") and spec["seeds"] == [0, 42, 1234]
    assert spec["gpus_per_seed"] == 8 and spec["limits"] == {"train_seconds": 600.0, "eval_seconds": 600.0}
    bare = tmp_path / folder.name
    bare.mkdir()
    for f in folder.iterdir():
        if f.name != "train_gpt.py":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PgolfError, match="no train_gpt.py"):
        spec_from_record(bare)


def test_a_claim_that_reproduces():
    rep = compare(CLAIMED, {42: 1.0803, 1337: 1.0806, 2025: 1.0809})
    assert rep["test"] == "paired t (one-sided)" and rep["df"] == 2 and rep["stands"] is True
    assert rep["differences"]["42"] == pytest.approx(0.0003) and rep["mean_difference"] == pytest.approx(0.0001)
    assert rep["verdict"] == "consistent" and "consistent with the claim (cannot reject it" in sentence(rep)
    json.dumps(rep, allow_nan=False)


def test_a_worse_reproduction_that_two_seeds_cannot_reject_is_inconclusive():
    """Issue 20: 0.0875 bpb worse than claimed with 2 seeds, p = 0.08: "cannot reject", not "stands"."""
    claimed = {42: 1.08, 1337: 1.081}
    rep = compare(claimed, {42: 1.08 + 0.0653, 1337: 1.081 + 0.1097})
    assert rep["mean_difference"] == pytest.approx(0.0875) and rep["p"] == pytest.approx(0.08, abs=0.01)
    assert rep["verdict"] == "inconclusive" and rep["stands"] is False
    text = sentence(rep)
    assert "inconclusive: cannot reject the claim" in text and "stands" not in text
    assert any("does not confirm it" in n for n in rep["notes"])
    assert compare({42: 1.08}, {42: 1.0835})["verdict"] == "inconclusive"     # one seed beyond the tolerance


def test_a_claim_that_does_not_reproduce():
    rep = compare(CLAIMED, {42: 1.0900, 1337: 1.0921, 2025: 1.0912})
    assert rep["stands"] is False and rep["verdict"] == "not reproduced" and rep["p"] < 0.05 and rep["t"] > 0
    assert rep["mean_difference"] == pytest.approx((0.01 + 0.0111 + 0.0107) / 3)
    assert "does NOT stand" in sentence(rep)


def test_one_seed_missing_seeds_and_zero_variance():
    rep = compare(CLAIMED, {42: 1.0830})
    assert rep["test"] == "none" and rep["stands"] is False and rep["missing"] == [1337, 2025]
    rep = compare(CLAIMED, {s: v + 0.0002 for s, v in CLAIMED.items()})
    assert rep["stands"] is True and rep["p"] == 1.0 and any("zero variance" in n for n in rep["notes"])
    assert compare(CLAIMED, {})["n"] == 0


def test_report_of_a_reproduction_run(tmp_path, smoke_record):
    """The reproduced run directory's report carries "reproduction" and a table in report.md."""
    worse = {s: v + 0.012 + 0.001 * i for i, (s, v) in enumerate(CLAIMED.items())}
    run = make_run_dir(tmp_path, worse, name="again")
    rep = write_report(run, reproduce_of=smoke_record)
    r = rep["reproduction"]
    assert r["record"] == str(smoke_record) and r["stands"] is False and r["n"] == 3
    assert r["claimed"]["42"] == pytest.approx(1.08) and r["reproduced"]["42"] == pytest.approx(1.092)
    md = (run / "report.md").read_text()
    assert "## Reproduction check" in md and "does NOT stand" in md and "| 42 | 1.08000000 | 1.09200000 |" in md
    assert json.loads((run / "report.json").read_text())["reproduction"]["stands"] is False
    assert math.isclose(compare_with_record(smoke_record, {42: 1.08, 1337: 1.081, 2025: 1.0805})["mean_difference"],
                        0.0, abs_tol=1e-12)


def test_cli_dry_run_prints_a_valid_job_spec(smoke_record, capsys):
    import argparse
    from runner.commands import cmd_reproduce
    args = argparse.Namespace(record_dir=str(smoke_record), seeds=[5, 6], data=None, name=None, dry_run=True)
    assert cmd_reproduce(args) == 0
    out, err = capsys.readouterr()
    spec = json.loads(out)
    assert spec["seeds"] == [5, 6] and spec["reproduces"] == str(smoke_record.resolve())
    assert "pgolf reproduce: note:" in err
