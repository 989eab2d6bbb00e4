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
    assert sum(l["p_stop_here"] for l in a["looks"]) == pytest.approx(1)
    assert a["p_success"] == pytest.approx(sum(l["p_success_here"] for l in a["looks"]))
    assert a["expected_seeds"] == pytest.approx(sum(l["n"] * l["p_stop_here"] for l in a["looks"]), abs=0.01)
    assert 3 <= a["expected_seeds"] <= 8 and 0 < a["se"] <= 0.005
    assert a["looks"][0]["cost_usd"] < a["looks"][-1]["cost_usd"]


@needs_current_record
def test_adaptive_success_chance_includes_the_futility_stop(tmp_path, capsys, monkeypatch):
    """Issue 19: rule, Δ = 0.0055 against the current record, looks 3, 6, 8. Counting crossings alone (the
    old plan) gave 98.9%; the runner also stops for futility, and the whole procedure succeeds ~91% of the
    time (an independent review simulated 90.6%). Without futility the chance is the crossing chance."""
    monkeypatch.setattr("runner.plan.SIMULATION_BATCHES", 4000)          # CI time; the error is checked
    body = (f'backend = "runpod"\n[baseline]\nref = "{CURRENT_RECORD}"\npolicy = "rule"\n'
            "[adaptive]\nmin = 3\nmax = 8\n")
    a = run_json(capsys, "--improvement", 0.0055, "--spec", spec(tmp_path, body))["adaptive"]
    assert a["p_success"] == pytest.approx(0.91, abs=max(4 * a["se"], 0.015))
    assert a["looks"][0]["p_futility_here"] > 0.05
    never = run_json(capsys, "--improvement", 0.0055,
                     "--spec", spec(tmp_path, body + "futility = 0\n"))["adaptive"]
    assert never["p_success"] > 0.97 and all(l["p_futility_here"] == 0 for l in never["looks"])
    capsys.readouterr()
    assert main(["plan", "--improvement", "0.0055", "--spec", str(spec(tmp_path, body))]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"success chance {a['p_success']:.1%} ± {a['se']:.1%} (Monte-Carlo s.e.), futility stops included" in text


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


def test_wall_clock_under_max_pods(tmp_path, capsys):
    """Issues 19/20: 10 one-seed pods of 35 min with at most 3 at once take 4 rounds (2.33 h), not 0.58 h;
    4-8 seeds take 2-3 rounds. The default max_pods is what the $80/h spend limit allows at $21.52/h (3)."""
    body = 'backend = "runpod"\n[limits]\ntrain_seconds = 600\neval_seconds = 600\n[runpod]\nsetup_s = 900\n'
    out = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035,
                   "--spec", spec(tmp_path, body), "--max-seeds", 10)
    c = out["cost"]
    assert c["max_pods"] == 3 and "spend limit" in c["max_pods_source"]
    rounds = {n: c["by_n"][str(n)]["wall_hours"] for n in range(1, 11)}
    assert rounds == {n: pytest.approx(-(-n // 3) * 2100 / 3600, abs=1e-3) for n in range(1, 11)}
    assert rounds[10] == pytest.approx(2.333, abs=1e-3) and c["by_n"]["10"]["hours"] == pytest.approx(5.833, abs=1e-3)
    assert out["wall_hours"] == c["by_n"][str(out["seeds_for_power"]["0.8"])]["wall_hours"]

    five = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035, "--max-seeds", 8,
                    "--spec", spec(tmp_path, body + "max_pods = 5\n"))["cost"]
    assert five["max_pods"] == 5 and five["max_pods_source"] == "[runpod] max_pods"
    assert five["by_n"]["8"]["wall_hours"] == pytest.approx(2 * 2100 / 3600, abs=1e-3)
    # K seeds per pod: 8 seeds by 2 are 4 pods of 70 + 15 min, on 3 slots: 2 rounds
    k2 = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035, "--max-seeds", 8,
                  "--spec", spec(tmp_path, body), "--seeds-per-pod", 2)["cost"]
    assert k2["by_n"]["8"]["wall_hours"] == pytest.approx(2 * (900 + 2 * 1200) / 3600, abs=1e-3)

    capsys.readouterr()
    assert main(["plan", "--baseline", "1.0614", "--std", "0.0007", "--improvement", "0.0035",
                 "--spec", str(spec(tmp_path, body))]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "pod-hours" in text and "wall-clock" in text and "at most 3 pod(s) at once" in text
    n80 = out["seeds_for_power"]["0.8"]
    assert (f"for 80% power: {'$' + format(out['cost_usd'], ',.2f')}, {out['hours']:.2f} pod-hours, "
            f"{out['wall_hours']:.2f} h wall-clock") in text and n80


def test_an_instant_cluster_spec_is_priced_as_the_cluster_runs(tmp_path, capsys):
    """Issue 22's leftover: `[runpod] cluster = true` was priced as one-seed pods. A cluster has the nodes
    the backend gives it (the batch's largest launch, capped by what the $80/h spend limit allows at
    $21.52/h: 3, as `fit_spend_limit` computes), and bills every node from its set-up to the batch's end,
    idle ones too: 5 seeds are 3 nodes x (15 min + 2 rounds of 20 min) = 2.75 node-hours in 0.92 h, where
    five pods are 2.92 pod-hours in 1.17 h; one seed runs on a pod. An adaptive batch's waves run one
    after another on one cluster sized for its largest wave."""
    from runner.backends.runpod.instant import make_cluster_backend
    from runner.spec import load_spec
    body = ('backend = "runpod"\n[limits]\ntrain_seconds = 600\neval_seconds = 600\n'
            '[runpod]\nsetup_s = 900\ncluster = true\n')
    job = tmp_path / "cluster.toml"
    job.write_text(f'name = "p"\nscript = "{ROOT / "model" / "train_gpt.py"}"\nseeds = [1, 2, 3, 4, 5]\n{body}')
    c = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035, "--spec", job,
                 "--max-seeds", 5)["cost"]
    setup, seed = 0.25, 1 / 3
    assert c["cluster"] is True and c["max_pods"] == 3
    b = make_cluster_backend(load_spec(job))
    b.fit_spend_limit(c["usd_per_hour"])
    assert b.nodes == c["by_n"]["5"]["nodes"] == 3
    assert c["by_n"]["5"]["hours"] == pytest.approx(3 * (setup + 2 * seed), abs=1e-3)
    assert c["by_n"]["5"]["wall_hours"] == pytest.approx(setup + 2 * seed, abs=1e-3)
    assert c["by_n"]["5"]["cost_usd"] == pytest.approx(3 * (setup + 2 * seed) * 21.52, abs=0.01)
    assert c["by_n"]["2"]["nodes"] == 2 and c["by_n"]["2"]["hours"] == pytest.approx(2 * (setup + seed), abs=1e-3)
    assert "nodes" not in c["by_n"]["1"] and c["by_n"]["1"]["hours"] == pytest.approx(setup + seed, abs=1e-3)
    pods = run_json(capsys, "--baseline", 1.0614, "--std", 0.0007, "--improvement", 0.0035, "--max-seeds", 5,
                    "--spec", spec(tmp_path, body.replace("cluster = true\n", "")))["cost"]
    assert pods["by_n"]["5"]["hours"] == pytest.approx(5 * (setup + seed), abs=1e-3)
    assert pods["by_n"]["5"]["wall_hours"] == pytest.approx(2 * (setup + seed), abs=1e-3)

    job.write_text(job.read_text() + '[baseline]\nref = 1.0614\npolicy = "rule"\n[adaptive]\nmin = 3\nmax = 8\n')
    looks = run_json(capsys, "--std", 0.0007, "--improvement", 0.0035, "--spec", job)["adaptive"]["looks"]
    assert [l["n"] for l in looks] == [3, 6, 8]                     # waves of 3, 3, 2 on 3 nodes: one round each
    assert [l["nodes"] for l in looks] == [3, 3, 3]
    assert [l["hours"] for l in looks] == [pytest.approx(3 * (setup + r * seed), abs=1e-3) for r in (1, 2, 3)]

    capsys.readouterr()
    assert main(["plan", "--std", "0.0007", "--improvement", "0.0035", "--spec", str(job)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "per node" in text and "Instant Cluster" in text and "at most 3 node(s) per cluster" in text
    assert main(["plan", "--std", "0.0007", "--improvement", "0.0035", "--spec", str(job), "--seeds-per-pod", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one seed per node" in err


def test_sigma_sensitivity_replaces_the_integration_error(capsys):
    """The planner treats σ as known; the plan shows power at σ × 0.5 and × 2 instead of a 1e-9 error."""
    out = run_json(capsys, "--baseline", CURRENT_RECORD, "--improvement", 0.0055, "--policy", "rule")
    assert [s["factor"] for s in out["sensitivity"]] == [0.5, 2.0]
    for s in out["sensitivity"]:
        want = plan(str(CURRENT_RECORD), 0.0055, out["std_bpb"] * s["factor"], "rule", 8)
        assert s["power"] == pytest.approx(want["power"]) and s["seeds_for_power"] == want["seeds_for_power"]
    assert out["sensitivity"][1]["power"]["3"] < out["power"]["3"] < out["sensitivity"][0]["power"]["3"]
    assert main(["plan", "--baseline", str(CURRENT_RECORD), "--improvement", "0.0055", "--policy", "rule"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"if the seed std is ×2 ({out['std_bpb'] * 2:.6g} bpb): power {out['sensitivity'][1]['power']['3']:.3f} " \
           "at 3 seeds" in text and "error <=" not in text


def test_titles_fit_80_columns(tmp_path, monkeypatch):
    """Issue 20: the tables' titles were squeezed into the table's width at 80 columns."""
    import io
    from rich.console import Console
    from runner.plan import plan_batch, render
    from runner.spec import load_spec
    body = (f'backend = "runpod"\n[baseline]\nref = "{CURRENT_RECORD}"\npolicy = "rule"\n'
            "[adaptive]\nmin = 3\nmax = 8\n")
    monkeypatch.setattr("runner.plan.SIMULATION_BATCHES", 1000)
    buf = io.StringIO()
    render(plan_batch(None, 0.0055, spec=load_spec(spec(tmp_path, body))), Console(file=buf, width=80))
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    text = " ".join(" ".join(lines).split())
    assert f"against {CURRENT_RECORD.name}: improvement 0.0055 bpb" in text
    header = next(l for l in lines if l.split()[:2] == ["look", "seeds"])
    assert header.split() == ["look", "seeds", "α", "spent", "p", "<", "success", "futility", "stop", "cost", "wall"]


@pytest.mark.parametrize("args, msg", [
    (["--improvement", "0"], "--improvement 0.0: must be above 0"),
    (["--improvement", "-0.001"], "--improvement -0.001: must be above 0"),
    (["--improvement", "0.003", "--seeds-per-pod", "3"], "--seeds-per-pod prices seeds on a spec's backend"),
    (["--improvement", "0.003", "--max-seeds", "100000"], "--max-seeds 100000: at most 100"),
])
def test_plan_arguments_it_cannot_honour_are_one_line(capsys, args, msg):
    """Issue 20: these were accepted (0 / negative improvement), silently ignored (--seeds-per-pod without a
    spec) or took 38 s (--max-seeds 100000)."""
    assert main(["plan", "--baseline", "1.06", "--std", "0.001", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err
