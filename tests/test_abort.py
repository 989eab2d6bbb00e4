"""Pieces of issue 12 that need no Ray: the record's curve against training time (results/curves.py), what a
log line says (runner/phases.py), the abort watch (runner/abort.py), the plain progress lines and the spec's
[adaptive] / [abort] sections. The batches themselves run in tests/test_adaptive.py."""
from __future__ import annotations

import numpy as np
import pytest

from results.curves import Curve, mean_curve, record_curve
from results.errors import PgolfError
from results.types import CurvePoint, Run
from runner.abort import AbortWatch, savings
from runner.phases import advance, read_line
from runner.progress import BatchProgress
from runner.spec import load_spec
from corpus import CURRENT_RECORD


def run(points, bpt=None) -> Run:
    return Run(log="x", curve=[CurvePoint(i, l, t) for i, (t, l) in enumerate(points)], bytes_per_token=bpt)


def test_mean_curve_interpolates_in_time_within_the_common_span():
    a = run([(0, 9.0), (0, 8.0), (10_000, 4.0), (20_000, 3.0)], bpt=2.0)     # two lines at 0 ms: the last counts
    b = run([(5_000, 6.0), (15_000, 3.0), (30_000, 2.0)], bpt=2.0)
    c = mean_curve([a, b], "rec")
    assert c.seeds == 2 and c.time_s[0] == 5 and c.time_s[-1] == 20           # no extrapolation
    assert c.at(10) == pytest.approx((4.0 + 4.5) / 2) and c.at(4.9) is None and c.at(21) is None
    scaled, note = c.scaled_to(3.0)
    assert scaled.at(10) == pytest.approx(c.at(10) * 1.5) and "×1.5000" in note
    assert c.scaled_to(2.0005)[1] is None                                     # the same tokenizer


def test_record_curve_of_the_current_record():
    c = record_curve(CURRENT_RECORD)                    # `N/M train_loss: X train_time: Ym` lines, three seeds
    assert c.seeds == 3 and c.end_s == pytest.approx(534) and c.bytes_per_token == pytest.approx(3.1572, abs=1e-4)
    assert 2.5 < c.at(300) < 2.6
    assert record_curve(1.0614) is None and record_curve(CURRENT_RECORD / "submission.json") is None


def test_phases_of_the_reference_payload_and_the_record_format():
    said = [read_line(x) for x in (
        "seed:42", "compile:1", "warmup_step:1/20", "step:1/20000 train_loss:9.0 train_time:120ms step_avg:120ms",
        "stopping_early: wallclock_cap train_time:600120ms step:3620/20000", "diagnostic_prequant val_loss:2.3 val_bpb:1.1",
        "Serialized model int6+brotli: 15777898 bytes (1200ms)", "Total submission size int6+brotli: 15831000 bytes",
        "final_int6_roundtrip_exact val_loss:2.4 val_bpb:1.12", "legal_ttt_exact val_loss:2.3 val_bpb:1.1 eval_time:1ms")]
    assert [s.phase for s in said] == [None, "compile", "compile", "training", "evaluation", "evaluation",
                                       "serialisation", "evaluation", "evaluation", "collecting"]
    assert said[3].step.train_ms == 120 and said[4].stopped_ms == 600120 and said[9].score == ("legal_ttt_exact", 1.1)
    assert said[5].score is None                                    # a diagnostic is never a score
    rec = read_line("4500/20000 train_loss: 2.2830 train_time: 8.8m tok/s: 6671956")
    assert rec.step.train_ms == pytest.approx(528_000) and rec.step.loss == 2.283
    assert read_line("pgolf-runpod: pod abc created").event and read_line("val_bytes_per_token:3.72663").bytes_per_token
    assert advance("training", "compile") == "training" and advance("evaluation", "serialisation") == "serialisation"
    assert advance("serialisation", "evaluation") == "evaluation" and advance("queued", None) == "queued"


def test_abort_watch_compares_at_each_checkpoint_once():
    curve = Curve("rec", np.array([0.0, 100.0]), np.array([4.0, 3.0]), bytes_per_token=2.0)
    watch = AbortWatch(curve, [0.25, 0.5], margin=0.2, budget_s=100)
    lines = [f"step:{i}/100 train_loss:{4.0 - 0.01 * i + 0.1:.4f} train_time:{i * 1000}ms" for i in range(1, 60)]
    assert [watch.line(1, 1, l) for l in lines] == [None] * 59          # 0.1 worse: inside the margin
    assert watch.seen[(1, 1)].checked == {0.25, 0.5}

    watch.line(2, 1, "val_bytes_per_token:3.0")                         # other tokens: the curve is ×1.5
    verdicts = [watch.line(2, 1, f"step:{i}/100 train_loss:{(4.0 - 0.01 * i) * 1.5 + 0.3:.4f} "
                                 f"train_time:{i * 1000}ms") for i in range(1, 40)]
    v = next(x for x in verdicts if x is not None)
    assert verdicts.index(v) == 24 and v.fraction == 0.25 and "×1.5000" in v.note
    # both sides are means over the seed's points of the last 5% of the budget (20-25 s here)
    assert v.loss == pytest.approx(1.5 * (4.0 - 0.225) + 0.3) and v.record_loss == pytest.approx(1.5 * 3.775)
    assert v.loss - v.record_loss == pytest.approx(0.3)
    assert v.reason().startswith("aborted: train loss")
    late = AbortWatch(curve, [0.9], margin=0.2, budget_s=200)           # the record's curve ends at 100 s
    assert all(late.line(3, 1, f"step:{i}/9 train_loss:9.0 train_time:{i * 20_000}ms") is None for i in range(1, 10))
    s = savings(v, started_at=v.wall_time - 600, expected_s=2100, usd_per_hour=21.52)
    assert s == {"saved_hours": pytest.approx(1500 / 3600, abs=1e-4), "saved_usd": pytest.approx(8.97, abs=0.01)}


def test_plain_progress_prints_events_not_every_line(capsys):
    bars = BatchProgress([7], enabled=False, cap_s=100,
                         curve=Curve("rec", np.array([0.0, 100.0]), np.array([4.0, 3.0])))
    bars.attempt_started(7, 1)
    bars.node(7, "host:abc")
    for line in ["seed:7", "compile:1", "warmup_step:1/2"] + \
                [f"step:{i}/1000 train_loss:{4 - 0.001 * i:.4f} train_time:{i * 100}ms" for i in range(1, 1001)] + \
                ["stopping_early: wallclock_cap train_time:100000ms step:1000/1000",
                 "Serialized model int6+brotli: 1 bytes", "legal_ttt_exact val_loss:2.3 val_bpb:1.1 eval_time:1ms"]:
        bars.line(7, line)
    bars.attempt_ended(7, 1, "succeeded", None)
    out = capsys.readouterr().out.splitlines()
    assert len(out) < 30 and not any("train_loss:" in l for l in out)
    assert sum("] step " in l for l in out) == 10
    assert "(+0.0000 vs record)" in out[-8]
    assert any("set-up -> compile" in l for l in out) and any("compile -> training" in l for l in out)
    assert any("legal_ttt_exact val_bpb 1.10000" in l for l in out) and out[-1] == "[seed 7] attempt 1 succeeded"
    assert bars.views[7].fraction(100) == 1.0 and bars.views[7].phase == "done"


def test_spec_sections(tmp_path):
    head = 'name = "t"\nscript = "train.py"\nseeds = [5, 9]\n'
    p = tmp_path / "job.toml"
    p.write_text(head + "[adaptive]\nmin = 3\nmax = 8\n")
    with pytest.raises(PgolfError, match=r"job.toml: .*\[adaptive\] needs \[baseline\] ref and policy"):
        load_spec(p)
    p.write_text(head + '[baseline]\nref = "rec"\npolicy = "rule"\n[adaptive]\nmin = 3\nmax = 8\nwave = 2\n'
                 '[abort]\nat = [0.5, 0.25]\nmargin = 0.1\n')
    spec = load_spec(p)
    assert spec.adaptive.looks() == (3, 5, 7, 8) and spec.seed_sequence(5) == [5, 9, 10, 11, 12]
    assert spec.abort.at == [0.25, 0.5] and spec.max_seeds() == 8 and spec.budget_seconds() == 600
    for bad, msg in (("[abort]\nat = [0.5]\n", r"\[abort\] margin: required"),
                     ("[abort]\nmargin = 0.1\nat = [1.5]\n", r"\[abort\] at: .*between 0 and 1"),
                     ('[baseline]\nref = 1.06\npolicy = "rule"\n[adaptive]\nmin = 3\nmax = 2\n',
                      r"\[adaptive\]: max \(2\) must be >= min \(3\)"),
                     ("[abort]\nmargin = 0.1\n", r"\[abort\] needs the record's curve")):
        p.write_text(head + bad)
        with pytest.raises(PgolfError, match=msg):
            load_spec(p)
