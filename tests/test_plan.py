"""`pgolf plan` (runner/plan.py): the table, --json in the issue's shape, the cost of the seeds on a spec's
backend with K seeds per pod, and an adaptive spec's looks. The power itself is results/power.py's, checked
against an independent Monte-Carlo of significance in tests/test_power.py; here the CLI must give exactly it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from results.power import plan
from runner.cli import main
from corpus import CURRENT_RECORD, needs_current_record

ROOT = Path(__file__).resolve().parents[1]


def spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(f'name = "p"\nscript = "{ROOT / "model" / "train_gpt.py"}"\nseeds = [1, 2, 3]\n{body}')
    return p


def run_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["plan", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_current_record
def test_json_is_the_power_plan_plus_cost_on_runpod(tmp_path, capsys):
    job = spec(tmp_path, 'backend = "runpod"\n[limits]\ntrain_seconds = 600\neval_seconds = 600\n'
                         '[runpod]\nsetup_s = 900\n')
    out = run_json(capsys, "--baseline", CURRENT_RECORD, "--improvement", 0.005, "--policy", "rule", "--spec", job)
    want = plan(str(CURRENT_RECORD), 0.005, None, "rule", 8)
    assert out["power"] == pytest.approx(want["power"]) and out["seeds_for_power"] == want["seeds_for_power"]
    assert set(out["power"]) == {str(n) for n in range(1, 9)} and set(out["seeds_for_power"]) == {"0.8", "0.95"}
    n80 = out["seeds_for_power"]["0.8"]
    assert n80 == 4
    # one pod per seed: n × (train + eval + set-up) at the documented default of 8 × $2.69/h
    assert out["cost"]["usd_per_hour"] == pytest.approx(21.52) and "default" in out["cost"]["price_source"]
    assert out["cost_usd"] == pytest.approx(n80 * (1200 + 900) / 3600 * 21.52, abs=0.01)
    assert out["hours"] == pytest.approx(n80 * 2100 / 3600, abs=1e-3)
    assert out["cost"]["by_n"]["3"]["cost_usd"] == pytest.approx(37.66, abs=0.01)   # the README's figure

    three = run_json(capsys, "--baseline", CURRENT_RECORD, "--improvement", 0.005, "--policy", "rule", "--spec", job,
                     "--seeds-per-pod", 3)
    k3, k1 = three["cost"]["by_n"]["3"], three["cost"]["one_per_pod"]["3"]
    assert k1 == out["cost"]["by_n"]["3"]
    assert k3["cost_usd"] == pytest.approx((900 + 3 * 1200) / 3600 * 21.52, abs=0.01)   # one set-up, not three
    assert k3["wall_hours"] == pytest.approx((900 + 3 * 1200) / 3600, abs=1e-3)
    assert k3["wall_hours"] > k1["wall_hours"]                                 # money against wall-clock


def test_number_baseline_table_ray_hours_and_stated_price(tmp_path, capsys):
    job = spec(tmp_path, "[limits]\ntrain_seconds = 600\neval_seconds = 300\n")
    out = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035, "--spec", job,
                   "--max-seeds", 6)
    assert out["policy"] == "rule" and out["test"] == "one-sample" and set(out["power"]) == set("123456")
    assert out["cost_usd"] is None and out["cost"]["usd_per_hour"] is None
    n80 = out["seeds_for_power"]["0.8"]
    assert out["hours"] == pytest.approx(n80 * 900 / 3600, abs=1e-3)         # node-hours, no price

    priced = spec(tmp_path, 'backend = "runpod"\n[runpod]\nprice_per_hour = 10.0\nsetup_s = 0\n')
    capsys.readouterr()
    assert main(["plan", "--baseline", "1.0614", "--std", "0.0007", "--improvement", "0.0035",
                 "--spec", str(priced)]) == 0
    table = capsys.readouterr().out
    assert "seeds for 80% power: 5" in table and "$10.00/h (the spec's [runpod] price_per_hour)" in table
    assert "exact: noncentral t" in table


def test_adaptive_spec_shows_each_look(tmp_path, capsys):
    job = spec(tmp_path, 'backend = "runpod"\n[baseline]\nref = 1.0614\npolicy = "progression"\n'
                         "[adaptive]\nmin = 3\nmax = 8\n")
    out = run_json(capsys, "--std", 0.0007, "--improvement", 0.0005, "--spec", job)
    a = out["adaptive"]
    assert [l["n"] for l in a["looks"]] == [3, 6, 8] and a["looks"][-1]["alpha_spent"] == 0.25
    assert a["looks"][-1]["p_stop_here"] + sum(l["p_first_cross"] for l in a["looks"][:-1]) == pytest.approx(1)
    assert 3 <= a["expected_seeds_at_most"] <= 8
    assert a["looks"][0]["cost_usd"] < a["looks"][-1]["cost_usd"]


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["plan", "--improvement", "0.003"]) == 2
    assert "give --baseline" in capsys.readouterr().err
    assert main(["plan", "--baseline", "1.06", "--std", "0.001", "--improvement", "0.003",
                 "--seeds-per-pod", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds-per-pod" in err


def test_the_specs_seeds_per_pod_is_what_plan_prices(tmp_path, capsys):
    """No --seeds-per-pod: the spec's [runpod] seeds_per_pod, as the backend will run it (4 seeds by 3: two
    pods of 2); an adaptive batch's waves never share a pod (the driver groups each wave on its own)."""
    body = ('backend = "runpod"\n[baseline]\nref = 1.0614\npolicy = "rule"\n'
            '[limits]\ntrain_seconds = 600\neval_seconds = 600\n'
            '[runpod]\nprice_per_hour = 10.0\nsetup_s = 900\nseeds_per_pod = 3\n')
    job = spec(tmp_path, body)
    c = run_json(capsys, "--std", 0.0007, "--improvement", 0.0035, "--spec", job, "--max-seeds", 4)["cost"]
    assert c["seeds_per_pod"] == 3 and "one_per_pod" in c
    assert c["by_n"]["3"]["cost_usd"] == pytest.approx((900 + 3 * 1200) / 3600 * 10, abs=0.01)
    assert c["by_n"]["4"]["cost_usd"] == pytest.approx((2 * 900 + 4 * 1200) / 3600 * 10, abs=0.01)
    one = run_json(capsys, "--std", 0.0007, "--improvement", 0.0035, "--spec", job, "--max-seeds", 4,
                   "--seeds-per-pod", 1)["cost"]
    assert one["seeds_per_pod"] == 1 and "one_per_pod" not in one and one["by_n"]["4"] == c["one_per_pod"]["4"]

    job.write_text(job.read_text() + "[adaptive]\nmin = 2\nmax = 6\n")   # 3 waves of 2: 3 pods, not 2 of 3
    looks = run_json(capsys, "--std", 0.0007, "--improvement", 0.0035, "--spec", job)["adaptive"]["looks"]
    wave = (900 + 2 * 1200) / 3600
    assert [(l["n"], l["cost_usd"], l["wall_hours"]) for l in looks] == [
        (n, pytest.approx(n / 2 * wave * 10, abs=0.01), pytest.approx(n / 2 * wave, abs=1e-3)) for n in (2, 4, 6)]
