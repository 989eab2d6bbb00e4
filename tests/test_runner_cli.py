"""CLI-level failures that must happen before anything starts, resume's script check, `pgolf status`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import runner
from results.errors import PgolfError
from runner.commands import cmd_status
from runner.ledger import Ledger, create_batch

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"


def pgolf(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=120)


def test_malformed_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = "x"\nscript = "{FAKE}"\nseeds = [1]\n[limits]\nretries = -1\n')
    r = pgolf("run", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.toml: [limits] retries: must be >= 0, got -1" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


def test_missing_data_fails_before_anything_starts(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'name = "x"\nscript = "{FAKE}"\nseeds = [1]\n[data]\npaths = {{ DATA_PATH = "nope" }}\n')
    r = pgolf("run", job, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "[data] paths.DATA_PATH" in r.stderr and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    job.write_text('name = "x"\nscript = "missing.py"\nseeds = [1]\n')
    r = pgolf("run", job, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "script:" in r.stderr and "missing.py does not exist" in r.stderr


def _batch(tmp_path) -> Path:
    src = tmp_path / "train.py"
    src.write_text("print('v1')\n")
    run = tmp_path / "runs" / "b"
    spec = {"name": "b", "script": str(src), "env": {}, "seeds": [1, 2], "nproc_per_node": 1, "gpus_per_seed": 0,
            "backend": "ray", "launcher": "torchrun"}
    create_batch(run, spec, src)
    led = Ledger.create(run, [1, 2])
    led.start_attempt(1, "ray")
    led.end_attempt(1, 1, "succeeded", exit_code=0)
    led.start_attempt(2, "ray")                 # left running by a driver that died
    return run


def test_resume_refuses_changed_script(tmp_path):
    run = _batch(tmp_path)
    (tmp_path / "train.py").write_text("print('v2')\n")
    with pytest.raises(PgolfError, match="script changed since the batch started"):
        runner.resume(run, progress=False)
    assert Ledger.load(run).state(2) == "running"          # refused before touching the ledger


def test_resume_refuses_altered_frozen_copy(tmp_path):
    run = _batch(tmp_path)
    frozen = run / "train.py"
    os.chmod(frozen, 0o644)
    frozen.write_text("print('tampered')\n")
    with pytest.raises(PgolfError, match="frozen script is missing or altered"):
        runner.resume(run, progress=False)


def test_status(tmp_path, capsys):
    run = _batch(tmp_path)
    assert cmd_status(SimpleNamespace(dir=str(run), json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seeds"]["1"]["state"] == "succeeded" and data["seeds"]["2"]["state"] == "running"
    assert cmd_status(SimpleNamespace(dir=str(run), json=False)) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "running" in out
    r = pgolf("status", tmp_path)
    assert r.returncode == 2 and "no ledger here" in r.stderr


def test_spec_typos_name_the_key_and_version(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'name = "x"\nscript = "{FAKE}"\nseedz = [1]\n')
    r = pgolf("run", job, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "job.toml: seedz: unknown key (did you mean 'seeds'?" in r.stderr, r.stderr
    job.write_text(f'name = "x"\nscript = "{FAKE}"\nseeds = ["42"]\n')
    r = pgolf("run", job, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "seeds: must be a number, got the string '42'" in r.stderr, r.stderr
    v = pgolf("--version")
    assert v.returncode == 0 and v.stdout.startswith("pgolf ")
    r = pgolf("status", cwd=tmp_path)                       # no runs/ here: one line, not a traceback
    assert r.returncode == 2 and "no run directory here" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_option_has_help():
    from runner.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):   # subcommands
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.dest not in ("help", "version"):
                yield parser.prog, action
    missing = [f"{prog} {a.option_strings or a.dest}" for prog, a in walk(build_parser()) if not a.help]
    assert not missing, missing


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "."])
def test_run_name_is_one_plain_folder_name(tmp_path, name):
    """Issue 20: `--name ../escape` wrote outside the runs directory (and a `latest` link beside it)."""
    r = pgolf("run", ROOT / "jobs" / "smoke.toml", "--runs-dir", tmp_path / "runs", "--name", name, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--name" in lines[0] and "not a plain folder name" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_argparse_errors_are_one_line():
    """The README promises one line for a wrong flag; argparse printed the usage block too."""
    for args in (["run"], ["audit", "--bogus"], ["status", "--json", "--what"], ["nope"], ["plan"]):
        r = pgolf(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], (args, r.stderr)


def test_unusable_runs_dir_is_one_line(tmp_path):
    """`--runs-dir /proc/nope` was an internal error (rc 3)."""
    r = pgolf("run", ROOT / "jobs" / "smoke.toml", "--runs-dir", "/proc/nope", "--name", "x")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("pgolf run: error: /proc/nope"), r.stderr
    assert "internal error" not in r.stderr


def test_unreachable_address_fails_fast_with_one_line(tmp_path):
    """`--address 127.0.0.1:1` hung 400 s+ with raw Ray warnings; now one pgolf line before anything is written."""
    import time
    t0 = time.monotonic()
    r = pgolf("run", ROOT / "jobs" / "smoke.toml", "--runs-dir", tmp_path / "runs", "--address", "127.0.0.1:1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in lines[0]
    assert time.monotonic() - t0 < 60 and not (tmp_path / "runs").exists()
    r = pgolf("resume", tmp_path / "nowhere", "--address", "not-an-address")
    assert r.returncode == 2 and "not HOST:PORT" in r.stderr


def test_status_fits_80_columns(tmp_path):
    """Issue 20: the status head (name, script, sha256, created) wrapped on an 80-column terminal; pod ids
    of a rehearsal fit their column whole."""
    run = _batch(tmp_path)
    led = json.loads((run / "ledger.json").read_text())
    led["seeds"]["1"]["attempts"][0].update(pod_id="fake003a1b2c3d4", pod_terminated=True, cost_usd=0.01,
                                            shared_pod={"position": 2, "attempts": [1, 2, 3]})
    (run / "ledger.json").write_text(json.dumps(led))
    r = subprocess.run([sys.executable, "-m", "runner.cli", "status", run], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="80"), timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and all(len(line.rstrip()) <= 80 for line in lines), r.stdout
    assert lines[0].startswith("b  created ") and lines[1].startswith("script ") and "sha256" in lines[1], r.stdout
    assert "fake003a1b2c3d4 [2/3]" in r.stdout                    # the pod id on one line, never folded
