"""The public records without ../shared: `pgolf records fetch` (real git, from a local file:// repository
built here out of tests/data/records: no network) and the one way every command finds them (`records:`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner import records

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "records"
TEN = "track_10min_16mb"
REC = "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def pgolf(*args, env=None, cwd=ROOT):
    e = {k: v for k, v in os.environ.items() if k not in (records.ENV_ROOT, records.ENV_URL)}
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**e, **GIT_ENV, "RAY_AUTH_MODE": "disabled", **(env or {})}, timeout=120)


@pytest.fixture
def upstream(tmp_path) -> Path:
    """A git repository laid out as the public one: records/ with two record folders, and other files."""
    repo = tmp_path / "upstream"
    for name in (REC, "2026-03-17_NaiveBaseline"):
        shutil.copytree(DATA / TEN / name, repo / "records" / TEN / name)
    (repo / "train_gpt.py").write_text("# the baseline script, not a record\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("config", "uploadpack.allowFilter", "true", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "records", cwd=repo)
    return repo


def test_fetch_clones_records_only_then_updates_and_commands_find_them(upstream, tmp_path):
    dest, home = tmp_path / "clone", tmp_path / "home"
    env = {"PGOLF_RECORDS_URL": upstream.as_uri(), "XDG_CACHE_HOME": str(home)}
    r = pgolf("records", "fetch", "--dest", dest, env=env)
    assert r.returncode == 0, r.stderr
    assert "fetched 2 record folders" in r.stdout and str(dest / "records") in r.stdout
    assert (dest / "records" / TEN / REC / "submission.json").is_file()
    assert not (dest / "train_gpt.py").exists()                     # sparse: records/ only
    assert subprocess.run(["git", "-C", dest, "rev-parse", "--is-shallow-repository"], capture_output=True,
                          text=True).stdout.strip() == "true"
    # --dest is not where pgolf looks by default: it says how to point at it
    assert f"--records {dest / 'records'}" in r.stdout and f"PGOLF_RECORDS={dest / 'records'}" in r.stdout

    # an update brings a new record folder in
    shutil.copytree(DATA / TEN / "2026-03-17_LoRA_TTT", upstream / "records" / TEN / "2026-03-17_LoRA_TTT")
    git("add", "-A", cwd=upstream)
    git("commit", "-qm", "one more", cwd=upstream)
    r = pgolf("records", "fetch", "--dest", dest, env=env)
    assert r.returncode == 0 and "updated 3 record folders" in r.stdout, r.stderr

    # every command takes records:..., found via --records, PGOLF_RECORDS (a clone's folder is fine) or the cache
    ref = f"records:{TEN}/{REC}"
    a = pgolf("audit", ref, "--json", "--records", dest, env=env)
    assert a.returncode in (0, 1) and json.loads(a.stdout)["dir"] == str(dest / "records" / TEN / REC), a.stderr
    a = pgolf("audit", f"records:{REC}", "--json", env={**env, "PGOLF_RECORDS": str(dest)})    # name alone
    assert json.loads(a.stdout)["dir"] == str(dest / "records" / TEN / REC), a.stderr
    r = pgolf("records", "fetch", env=env)                           # the default: the cache folder
    assert r.returncode == 0 and "pgolf looks in" not in r.stdout, r.stdout + r.stderr
    p = pgolf("plan", "--improvement", "0.01", "--baseline", ref, "--max-seeds", "3", "--json", env=env)
    assert p.returncode == 0 and REC in json.loads(p.stdout)["baseline"], p.stderr
    rep = pgolf("report", f"records:{TEN}/2026-03-17_NaiveBaseline", "--baseline", ref, "--json", env=env)
    assert rep.returncode == 0, rep.stderr
    d = pgolf("reproduce", ref, "--dry-run", env=env)
    assert d.returncode == 0 and REC in json.loads(d.stdout)["reproduces"], d.stderr


def test_a_job_spec_names_its_baseline_as_a_record(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'name = "t"\nscript = "x.py"\nseeds = [1]\n[baseline]\nref = "records:{TEN}/{REC}"\n'
                   f'policy = "rule"\n[abort]\nat = [0.5]\nmargin = 0.1\ncurve = "records:{REC}"\n')
    from runner.spec import load_spec
    records.use(DATA)
    try:
        spec = load_spec(job)
    finally:
        records.use(None)
    assert spec.baseline.ref == spec.abort.curve == str(DATA / TEN / REC)
    records.use(tmp_path)                                     # no records there: one line naming file and key
    try:
        with pytest.raises(PgolfError, match=rf"job.toml: \[baseline\] ref: records:{TEN}/{REC}: no such record under"):
            load_spec(job)
    finally:
        records.use(None)


def test_errors_are_one_line(upstream, tmp_path):
    # no such record: where pgolf looked and how to get them
    r = pgolf("audit", f"records:{TEN}/nope", "--records", DATA)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"records:{TEN}/nope: no such record under {DATA}" in r.stderr
    # no records at all (a fresh machine): says to fetch them
    r = pgolf("report", "--baseline", f"records:{TEN}/{REC}", "x", env={"XDG_CACHE_HOME": str(tmp_path / "empty")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "pgolf records fetch" in r.stderr
    # no network (an unreachable repository): git's reason, one line, nothing written
    dest = tmp_path / "clone"
    r = pgolf("records", "fetch", "--dest", dest, "--url", (tmp_path / "missing").as_uri())
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "git clone failed" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upstream"]
    r = pgolf("records", "fetch", "--url", (tmp_path / "missing").as_uri(), env={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert r.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["upstream"]     # no empty cache left
    # a repository without records/
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("a")
    git("init", "-q", cwd=other)
    git("add", "-A", cwd=other)
    git("commit", "-qm", "x", cwd=other)
    r = pgolf("records", "fetch", "--dest", dest, "--url", other.as_uri())
    assert r.returncode == 2 and "has no records/ folder" in r.stderr and not dest.exists()
    # a --dest that holds something else is never overwritten
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = pgolf("records", "fetch", "--dest", tmp_path / "full", "--url", upstream.as_uri())
    assert r.returncode == 2 and "is not a clone" in r.stderr and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    # no git on PATH
    r = pgolf("records", "fetch", "--dest", dest, "--url", upstream.as_uri(), env={"PATH": str(tmp_path / "nobin")})
    assert r.returncode == 2 and "git is not installed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
