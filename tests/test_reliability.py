"""Issue 10 end to end, with `pgolf` as a user runs it (subprocesses, the embedded local Ray, real jobs):
one driver per batch, kill -9 then two resumes, a full disk, and what a batch does with a configuration
error, a secret written to `env.dat` and a job that daemonizes. The RunPod rehearsal versions are in
tests/test_reliability_runpod.py."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import first_to_exit

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"
SECRET = "sk-rel-SECRETVALUE123"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_stray_processes(tmp_path):
    """Whatever a test leaves when it fails, no job process of its batches outlives it."""
    yield
    import re

    from runner.proctree import kill_marked
    kill_marked(re.compile(re.escape(str(tmp_path)) + ".*"))


def write_job(tmp: Path, seeds: list[int], env: dict, limits: str = "retries = 1\n") -> Path:
    env_toml = ", ".join(f"{k} = {json.dumps(str(v))}" for k, v in env.items())
    job = tmp / "job.toml"
    job.write_text(f'name = "rel"\nscript = "{FAKE}"\nseeds = {seeds}\nlauncher = "python"\ngpus_per_seed = 0\n'
                   f"env = {{ {env_toml} }}\n[limits]\n{limits}")
    return job


def env_for(**extra) -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), **extra}


def pgolf(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=ROOT, env=env or env_for(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def finish(p: subprocess.Popen, timeout=240) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, out, err


def ledger(run: Path) -> dict:
    return json.loads((run / "ledger.json").read_text())["seeds"]


def wait_for(cond, timeout=120, what="condition"):
    t_end = time.time() + timeout
    while True:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        assert time.time() < t_end, f"timed out waiting for {what}"
        time.sleep(0.2)


def alive_pids(pid_dir: Path) -> list[int]:
    out = []
    for f in pid_dir.iterdir() if pid_dir.exists() else ():
        try:
            state = Path(f"/proc/{f.name}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(int(f.name))
    return out


def test_one_driver_per_batch_and_what_the_batch_keeps(tmp_path):
    """Two `run --name same` at once: one refuses, naming the other. `resume` during the live run refuses
    and changes nothing; the live run ends with one attempt per seed. In that batch: seed 2's configuration
    error is not retried and `status` shows it; seed 1 wrote a secret into env.dat (scrubbed) and
    weights.bin (binary: the secret's bytes masked, same length), and left a daemon behind (killed)."""
    pid_dir = tmp_path / "pids"
    release = tmp_path / "release"       # seed 1 runs until the test is done with the live batch
    job = write_job(tmp_path, [1, 2], {"FAKE_SECONDS_1": 1, "FAKE_STEPS": 3, "FAKE_DUMP_1": "MY_API_KEY",
                                       "FAKE_DAEMON_1": 1, "FAKE_PID_DIR": pid_dir, "FAKE_UNTIL": release,
                                       "FAKE_RAISE_2": "tokenizer has 1024 pieces > VOCAB_SIZE=7"})
    runs, run = tmp_path / "runs", tmp_path / "runs" / "same"
    env = env_for(MY_API_KEY=SECRET)
    a, b = (pgolf("run", job, "--runs-dir", runs, "--name", "same", "--no-progress", env=env) for _ in range(2))
    loser = first_to_exit(a, b)
    winner = b if loser is a else a
    rc, out, err = finish(loser)
    assert rc == 2 and winner.poll() is None, out + err
    assert err.strip().count("\n") == 0 and "batch in use by `pgolf run` (pid" in err and str(run) in err, err

    wait_for(lambda: ledger(run)["1"]["attempts"][0]["node"], what="seed 1 running")
    before = (run / "ledger.json").read_bytes()
    rc, out, err = finish(pgolf("resume", run, "--no-progress", env=env))
    assert rc == 2 and f"pid {winner.pid}" in err and "Traceback" not in err, out + err
    status = subprocess.run([sys.executable, "-m", "runner.cli", "status", run, "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    driver = json.loads(status.stdout)["driver"]
    assert driver["alive"] and driver["pid"] == winner.pid and driver["command"] == "pgolf run"
    assert ledger(run)["1"]["state"] == "running" and len(ledger(run)["1"]["attempts"]) == 1
    assert (run / "ledger.json").read_bytes() == before or ledger(run)["1"]["attempts"][0]["ended"] is None

    release.touch()
    rc, out, err = finish(winner)
    assert rc == 1, out + err
    led = ledger(run)
    assert [len(led[s]["attempts"]) for s in ("1", "2")] == [1, 1]              # one attempt per seed
    assert led["1"]["state"] == "succeeded" and led["2"]["state"] == "failed"
    error = led["2"]["attempts"][0]["error"]
    assert error.startswith("ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7") and "not retried" in error
    assert "seed 2: ValueError: tokenizer has 1024 pieces" in err
    report = json.loads((run / "report.json").read_text())                       # the report says it too
    assert report["unsuccessful"][0]["seed"] == "2" and "VOCAB_SIZE=7" in report["unsuccessful"][0]["error"]
    assert "## Seeds that did not succeed" in (run / "report.md").read_text()
    status = subprocess.run([sys.executable, "-m", "runner.cli", "status", run], cwd=ROOT,
                            env=dict(env, COLUMNS="300"), capture_output=True, text=True)
    assert "ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7" in status.stdout, status.stdout
    assert "driver: none" in status.stdout

    art = run / "seeds" / "1" / "attempt-1" / "artifacts"
    assert (art / "env.dat").read_text() == "MY_API_KEY ***\n"
    # binary: the secret's bytes masked with as many `*`, nothing else touched (same length)
    assert (art / "weights.bin").read_bytes() == b"\0" + f"MY_API_KEY {'*' * len(SECRET)}\n".encode()
    for p in run.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
    daemons = [f for f in pid_dir.iterdir() if "daemon" in f.read_text()]
    assert len(daemons) == 1 and alive_pids(pid_dir) == []


def test_kill9_then_two_resumes_at_once(tmp_path):
    """kill -9 of the driver (and its local Ray); `status` says the driver is dead; two `resume`s at once:
    one refuses, the other finishes every seed with one more attempt, each log written by one driver."""
    pid_dir = tmp_path / "pids"
    release = tmp_path / "release"       # the resumed attempts run until the refused resume has exited
    job = write_job(tmp_path, [1, 2], {"FAKE_SECONDS": 60, "FAKE_SECONDS_A2": 1, "FAKE_STEPS": 2,
                                       "FAKE_PID_DIR": pid_dir, "FAKE_UNTIL_A2": release})
    run = tmp_path / "runs" / "k"
    drv = pgolf("run", job, "--runs-dir", tmp_path / "runs", "--name", "k", "--no-progress")
    try:
        wait_for(lambda: all(ledger(run)[s]["attempts"][0]["node"] for s in ("1", "2")), what="both seeds running")
        wait_for(lambda: len(list(pid_dir.iterdir())) >= 2, what="both payloads")
    finally:
        os.killpg(drv.pid, signal.SIGKILL)
        drv.wait()
    status = subprocess.run([sys.executable, "-m", "runner.cli", "status", run], cwd=ROOT,
                            env=env_for(COLUMNS="300"), capture_output=True, text=True)
    assert status.stdout.count("running (driver dead)") == 2 and "driver: dead" in status.stdout, status.stdout

    r1, r2 = (pgolf("resume", run, "--no-progress") for _ in range(2))
    loser = first_to_exit(r1, r2)
    rc, out, err = finish(loser)
    assert rc == 2 and "batch in use by `pgolf resume`" in err, out + err
    release.touch()
    rc, out, err = finish(r2 if loser is r1 else r1)
    assert rc == 0, out + err
    led = ledger(run)
    for s in ("1", "2"):
        a1, a2 = led[s]["attempts"]
        assert a1["error"].startswith("interrupted") and a1["ended"] and a2["exit_code"] == 0
        log = (run / "seeds" / s / "attempt-2" / "train.log").read_text()
        assert log.count(f"seed:{s}") == 1 and log.count("legal_ttt_exact") == 1
    assert alive_pids(pid_dir) == []


# ---------------------------------------------------------------- a full disk
@contextlib.contextmanager
def small_disk(tmp_path: Path):
    """(folder, fill, free, env): a 16 MiB tmpfs where this machine lets us mount one (root), else (or with
    PGOLF_TEST_NO_MOUNT=1) a folder whose writes pgolf sees fail with ENOSPC while a flag file exists
    (tests/payloads/enospc/sitecustomize.py)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and not os.environ.get("PGOLF_TEST_NO_MOUNT") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode == 0
    try:
        if mounted:
            filler = disk / "filler"

            def fill():
                with open(filler, "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(b"\0" * (1 << 16))
                            f.flush()
                    except OSError as e:
                        assert e.errno == errno.ENOSPC

            yield disk, fill, lambda: filler.unlink(), env_for()
        else:
            flag = tmp_path / "disk-is-full"
            env = env_for(PYTHONPATH=f"{ROOT / 'tests' / 'payloads' / 'enospc'}:{ROOT}",
                          PGOLF_TEST_FULL_DIR=str(disk), PGOLF_TEST_FULL_FLAG=str(flag))
            yield disk, flag.touch, flag.unlink, env
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_disk_full_mid_batch_then_resume(tmp_path):
    """The run directory's disk fills while both seeds run: no internal error, the driver lets the
    running attempts end, starts nothing new, ends with one line naming the path (exit 75); the ledger on
    disk is whole; once space is free, `pgolf resume` completes the batch."""
    release = tmp_path / "release"       # the jobs end once the disk is full
    job = write_job(tmp_path, [1, 2], {"FAKE_SECONDS": 1, "FAKE_STEPS": 4, "FAKE_SECONDS_A2": 0.5,
                                       "FAKE_UNTIL_A1": release}, limits="retries = 3\n")
    with small_disk(tmp_path) as (disk, fill, free, env):
        run = disk / "runs" / "full"
        drv = pgolf("run", job, "--runs-dir", disk / "runs", "--name", "full", "--no-progress", env=env)
        wait_for(lambda: all("step:4/4" in (run / "seeds" / s / "attempt-1" / "train.log").read_text()
                             for s in ("1", "2")), what="both seeds training")
        fill()
        release.touch()
        rc, out, err = finish(drv)
        assert rc == 75, out + err
        assert "Traceback" not in out + err and "internal error" not in err
        lines = [ln for ln in err.splitlines() if ln.startswith("pgolf")]
        assert len(lines) == 1 and "cannot write " + str(run) in lines[0] and "No space left on device" in lines[0] \
            and f"`pgolf resume {run}`" in lines[0], err
        led = ledger(run)                                              # valid JSON: the old or a new whole ledger
        assert all(len(led[s]["attempts"]) == 1 for s in ("1", "2")), led    # nothing new started
        assert not [p for p in run.rglob("*.tmp")]
        free()
        rc, out, err = finish(pgolf("resume", run, "--no-progress", env=env))
        assert rc == 0, out + err
        led = ledger(run)
        assert all(led[s]["state"] == "succeeded" for s in ("1", "2"))
        for s in ("1", "2"):
            a1, a2 = led[s]["attempts"]
            assert a1["ended"] and a1["error"].startswith("interrupted") and a2["exit_code"] == 0
        assert (run / "report.json").is_file()


def test_run_never_reuses_a_folder_and_leaves_none_when_it_fails_early(tmp_path):
    """A folder whose ledger.json was deleted is refused (nothing rebuilds a ledger), as is one holding a
    batch; both stay as they were. A `run` refused by a check after Ray started leaves no folder behind,
    so the name stays free."""
    runs = tmp_path / "runs"
    half = runs / "half"
    half.mkdir(parents=True)
    (half / "batch.json").write_text('{"spec": {}, "script": {}}')
    (half / "seeds").mkdir()
    job = write_job(tmp_path, [1], {})
    rc, out, err = finish(pgolf("run", job, "--runs-dir", runs, "--name", "half"))
    assert rc == 2 and "holds no complete batch (ledger.json missing)" in err and "pick another --name" in err, err
    assert sorted(p.name for p in half.iterdir()) == ["batch.json", "seeds"]
    (half / "ledger.json").write_text('{"seeds": {}}')
    rc, out, err = finish(pgolf("run", job, "--runs-dir", runs, "--name", "half"))
    assert rc == 2 and "a batch already lives here" in err and f"pgolf resume {half}" in err, err

    big = tmp_path / "big.toml"
    big.write_text(job.read_text().replace('launcher = "python"\n', "nproc_per_node = 64\n"))
    rc, out, err = finish(pgolf("run", big, "--runs-dir", tmp_path / "new" / "runs", "--name", "x"))
    assert rc == 2 and "no node of the Ray cluster can hold one seed" in err, err
    assert not (tmp_path / "new").exists()
