"""pgolf report on real record folders and on a run directory built here: files, JSON, significance, errors."""
import json
import math
from pathlib import Path

import pytest

from corpus import RECORDS, TEN
from results.errors import PgolfError
from results.report import render_summary, write_report
from runner.cli import main

try:
    from tests.test_submit import log_text, make_run_dir
except ImportError:                     # tests/ is not a package: pytest puts it on sys.path
    from test_submit import log_text, make_run_dir

TRACK = TEN
VALCALIB = TRACK / "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072"
LEAKY = TRACK / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"
LONGCTX = TRACK / "2026-03-18_LongContextSeq2048"


def test_record_report_reproduces_valcalib_welch_from_the_logs(tmp_path):
    out = tmp_path / "r"
    rep = write_report(VALCALIB, baseline=str(LEAKY), policy="progression", out=out)
    sig = rep["significance"]
    assert sig["metric"] == "val_loss" and sig["test"] == "welch" and sig["n"] == sig["n_baseline"] == 3
    assert sig["t"] == pytest.approx(-11.83, abs=0.01) and sig["df"] == pytest.approx(3.31, abs=0.01)
    assert sig["passes"] is True
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep))
    for key in ("dir", "kind", "runs", "claimed", "summary", "checks", "verdict", "significance"):
        assert key in rep
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["seeds_val_bpb.png", "train_loss.png"]
    assert (out / "plots" / "train_loss.png").read_bytes()[:4] == b"\x89PNG"
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("seed,log,metric,val_loss,val_bpb,artifact_bytes") and len(csv) == 4
    md = (out / "report.md").read_text()
    assert "| 314 | 1.88276292 | 1.11508120 |" in md and "t = -11.83" in md and "`artifact_cap`" in md
    assert "1.11473509 ± 0.00035387" in md                  # mean ± sample std, as the authors published


def test_record_folder_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    """Records are read-only and the current directory is the user's: print only, no report-<name>/ folder."""
    monkeypatch.chdir(tmp_path)
    rep = write_report(VALCALIB, baseline="1.2")
    assert rep["significance"]["n"] == 3 and list(tmp_path.iterdir()) == []
    assert main(["report", str(VALCALIB)]) == 0
    assert "nothing written" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_nothing_to_report_is_an_error(tmp_path, capsys):
    (tmp_path / "submission.json").write_text('{"val_bpb": 1.1}')
    with pytest.raises(PgolfError, match="nothing to report: no training logs"):
        write_report(tmp_path)
    (tmp_path / "train_seed1.log").write_text("seed:1\nstep:1/9 train_loss:9.0 train_time:5ms\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to report" in err[0]


def test_a_folder_of_tracks_is_one_line(capsys):
    assert main(["report", str(RECORDS)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the tracks" in err[0]


def test_longcontext_number_baseline_converts_the_margin(tmp_path):
    rep = write_report(LONGCTX, baseline="1.2243657", out=tmp_path / "r")
    sig = rep["significance"]
    assert sig["test"] == "one-sample" and sig["metric"] == "val_bpb" and sig["n"] == 3
    assert sig["margin"] == pytest.approx(0.005 / (math.log(2) * 2.43593), rel=1e-3)
    assert sig["mean"] == pytest.approx(1.20636623, abs=1e-8) and sig["passes"] is True
    assert any("bytes/token" in n for n in sig["notes"])


def test_run_dir_report_uses_batch_baseline_and_writes_into_the_run(tmp_path):
    run = make_run_dir(tmp_path, baseline=str(LEAKY / "submission.json"), policy="progression")
    rep = write_report(run)
    sig = rep["significance"]
    assert sig["policy"] == "progression" and sig["baseline"].endswith("submission.json")
    assert sig["metric"] == "val_bpb" and sig["test"] == "one-sample" and sig["passes"] is True
    assert rep["verdict"] == "pass" and rep["kind"] == "run"
    for name in ("results.csv", "report.md", "report.json", "plots/train_loss.png", "plots/seeds_val_bpb.png"):
        assert (run / name).is_file(), name
    md = (run / "report.md").read_text()
    assert "## Reproduction" in md and "SEED=$SEED \\\n  torchrun --standalone" in md and "HF_TOKEN=***" in md
    assert "MAX_WALLCLOCK_SECONDS=600" in md and "/somewhere" not in md and str(tmp_path) not in md
    assert "DATA_PATH=./data/datasets/fineweb10B_sp8192" in md and "# data: variant sp8192" in md
    assert "hf_abcdefghijklmnop" not in md
    from rich.console import Console
    con = Console(record=True, width=100)
    con.print(render_summary(rep))
    shown = con.export_text()
    assert "PASSES" in shown and "audit: pass" in shown


def test_one_seed_run_cannot_be_tested_and_no_baseline_is_fine(tmp_path):
    run = make_run_dir(tmp_path, {7: 1.08}, baseline=1.2)
    sig = write_report(run)["significance"]
    assert sig["test"] == "none" and sig["passes"] is False and "n=1" in " ".join(sig["notes"])
    rep = write_report(make_run_dir(tmp_path, name="nobase"))
    assert rep["significance"] is None
    assert "not tested" in (tmp_path / "nobase" / "report.md").read_text()


def test_nan_seed_is_left_out_with_a_note(tmp_path):
    run = make_run_dir(tmp_path, baseline=1.2)
    log = run / "seeds" / "1337" / "attempt-1" / "train.log"
    log.write_text(log_text(1337, float("nan"), "0" * 64))
    sig = write_report(run)["significance"]
    assert sig["n"] == 2 and any("left out" in n and "1337" in n for n in sig["notes"])


def test_cli_report_json_is_exactly_the_report(tmp_path, capsys):
    run = make_run_dir(tmp_path, baseline=1.2)
    assert main(["report", str(run), "--json", "--policy", "progression"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((run / "report.json").read_text())
    assert printed["significance"]["policy"] == "progression"


@pytest.mark.parametrize("baseline,msg", [
    ("/no/such/record", "not a number"),
    ("fast", "not a number"),
    ("nan", "positive finite"),
])
def test_cli_bad_baseline_is_one_line(tmp_path, capsys, baseline, msg):
    run = make_run_dir(tmp_path)
    assert main(["report", str(run), "--baseline", baseline]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and "Traceback" not in err[0]


def test_cli_malformed_baseline_json(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    bad = tmp_path / "submission.json"
    bad.write_text('{"val_bpb": 1.1,')
    assert main(["report", str(run), "--baseline", str(bad)]) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(PgolfError):
        write_report(tmp_path / "nope")


def test_unusable_batch_baseline_still_writes_the_report(tmp_path):
    run = make_run_dir(tmp_path, baseline=str(tmp_path / "gone"))
    rep = write_report(run)
    assert rep["significance"] is None and "batch.json" in rep["significance_error"]
    assert "unusable" in (run / "report.md").read_text()


def test_runner_call_with_the_specs_own_unusable_baseline_is_soft(tmp_path):
    gone = str(tmp_path / "gone")
    run = make_run_dir(tmp_path, baseline=gone)
    rep = write_report(run, baseline=gone, policy="rule")        # what runner.commands does at batch end
    assert rep["significance"] is None and "unusable" in rep["significance_error"]


def test_run_dir_report_sums_pod_costs_from_the_ledger(tmp_path):
    """RunPod attempts record cost_usd in the ledger; the report adds them up, retries included."""
    run = make_run_dir(tmp_path)
    ledger = json.loads((run / "ledger.json").read_text())
    costs = iter([7.25, 4.5, 6.0, 5.75])
    for entry in ledger["seeds"].values():
        for a in entry["attempts"]:
            a["cost_usd"] = next(costs)
    (run / "ledger.json").write_text(json.dumps(ledger))
    rep = write_report(run)
    n = sum(len(e["attempts"]) for e in ledger["seeds"].values())
    assert rep["cost"]["attempts"] == n == 4
    assert rep["cost"]["total_usd"] == pytest.approx(23.5)
    assert json.loads((run / "report.json").read_text())["cost"]["total_usd"] == pytest.approx(23.5)
    assert "## Cost" in (run / "report.md").read_text() and "$23.50 for 4 pod attempt(s)" in (run / "report.md").read_text()


def test_report_without_costs_has_no_cost_key(tmp_path):
    rep = write_report(make_run_dir(tmp_path))
    assert "cost" not in rep


def test_reproduction_block_of_the_smoke_spec_has_no_local_path():
    """jobs/smoke.toml as batch.json stores it (paths made absolute): every variable, no path of this machine."""
    import tomllib
    from results.batch import reproduction_command
    root = Path(__file__).resolve().parents[1]
    spec = tomllib.loads((root / "jobs" / "smoke.toml").read_text())
    spec["script"] = str(root / "model" / "train_gpt.py")
    spec["data"]["paths"] = {k: str((root / "jobs" / v).resolve()) for k, v in spec["data"]["paths"].items()}
    cmd = reproduction_command({"spec": spec})
    assert str(root) not in cmd and "/work" not in cmd
    assert "MAX_WALLCLOCK_SECONDS=25" in cmd and "DATA_PATH=./data/tiny" in cmd
    assert "TOKENIZER_PATH=./data/tiny/tokenizer.model" in cmd and "# data: variant tiny" in cmd
    for key in spec["env"]:
        assert f"{key}=" in cmd, key
    assert "--nproc_per_node=1 train_gpt.py" in cmd and "for SEED in 42 1337 2025" in cmd
