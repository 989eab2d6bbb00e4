"""The reliability parts on their own, with real processes and files (no Ray): the batch lock, killing a
job tree with a daemon in it, a log that survives a refusing disk, scrubbing by content, reading a
failure from a log, and a ledger that never records an attempt it could not save."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from results.errors import PgolfError
from results.secrets import Scrubber
from runner import storage
from runner.failures import LogWatch
from runner.ledger import Ledger
from runner.lock import LOCK, BatchBusy, BatchLock, LockSet, holder, last_holder
from runner.proctree import MARKER, JobProcesses, attempt_marker, batch_markers, kill_marked, marked

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_until(cond, timeout=20.0):
    t_end = time.time() + timeout
    while not cond():
        assert time.time() < t_end, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------- the batch lock
HOLD = ("import sys, time; from runner.lock import BatchLock; "
        "lock = BatchLock.acquire(sys.argv[1], 'pgolf run'); print('held', flush=True); time.sleep(60)")


def test_lock_refuses_a_second_holder_names_the_first_and_dies_with_it(tmp_path):
    run = tmp_path / "b"
    run.mkdir()
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        who = holder(run)
        assert who["pid"] == p.pid and who["command"] == "pgolf run"
        with pytest.raises(BatchBusy) as e:
            BatchLock.acquire(run, "pgolf resume", patience_s=0.1)
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and "`pgolf run`" in msg and str(run) in msg and "\n" not in msg
        with LockSet(tmp_path, "pgolf cluster gc") as locks:     # no ledger in b: not a batch to gc
            assert locks.busy == {} and locks.held == []
        (run / "ledger.json").write_text("{}")
        (tmp_path / "latest").symlink_to("b")          # runs/latest: the same batch, not a second one
        with LockSet(tmp_path, "pgolf cluster gc") as locks:
            assert list(locks.busy) == [run] and locks.busy[run]["pid"] == p.pid
        p.kill()                                   # kill -9: the kernel drops the lock, the file stays
        p.wait()
        assert holder(run) is None and last_holder(run)["pid"] == p.pid
        with BatchLock.acquire(run, "pgolf resume") as lock:
            assert holder(run)["command"] == "pgolf resume" and lock.info["pid"] == os.getpid()
        assert not (run / LOCK).exists()           # a clean release leaves no file
    finally:
        p.kill()
        p.wait()


def test_lock_never_creates_a_missing_run_dir_unless_asked(tmp_path):
    with pytest.raises(PgolfError, match="no such run directory"):
        BatchLock.acquire(tmp_path / "nope", "pgolf resume")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PgolfError, match="not a folder"):
        BatchLock.acquire(tmp_path / "file", "pgolf run", create=True)
    with BatchLock.acquire(tmp_path / "new" / "b", "pgolf run", create=True):
        assert (tmp_path / "new" / "b" / LOCK).is_file()


# ---------------------------------------------------------------- the job tree
def test_a_daemon_of_the_job_is_killed_by_its_marker(tmp_path):
    """fork, setsid, fork: the daemon is nobody's descendant and in no session we saw; the marker finds it."""
    pid_dir = tmp_path / "pids"
    env = dict(os.environ, FAKE_DAEMON="1", FAKE_HANG="1", FAKE_PID_DIR=str(pid_dir), ARTIFACT_DIR=str(tmp_path),
               **{MARKER: attempt_marker(str(tmp_path), 1, 1)})
    proc = subprocess.Popen([sys.executable, str(FAKE)], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: any("daemon" in f.read_text() for f in pid_dir.iterdir()) if pid_dir.exists() else False)
    (daemon,) = [int(f.name) for f in pid_dir.iterdir() if "daemon" in f.read_text()]
    assert os.getsid(daemon) not in (os.getsid(proc.pid), os.getsid(0))
    assert marked(f"{tmp_path}:1:1") == {proc.pid, daemon}
    assert marked(batch_markers(str(tmp_path))) == {proc.pid, daemon} and marked(f"{tmp_path}:2:1") == set()
    assert marked(batch_markers(str(tmp_path.parent))) == set()
    job = JobProcesses(proc.pid, proc, marker=f"{tmp_path}:1:1")
    job.scan()
    job.kill(grace_s=2)
    assert not alive(proc.pid) and not alive(daemon)
    assert kill_marked(batch_markers(str(tmp_path))) == 0


def test_ray_node_attempt_leaves_no_daemon_on_timeout_or_normal_end(tmp_path):
    """The Ray backend's attempt itself (no Ray needed): a job that daemonizes and then hangs past the
    deadline, and one that daemonizes and ends well; neither leaves its daemon running."""
    from runner.backends.base import AttemptSpec
    from runner.backends.ray_node import RayNodeBackend
    from runner.spec import validate_spec

    class Events:
        def __init__(self):
            self.lines = []

        def line(self, text):
            self.lines.append(text)

        def meta(self, **fields):
            pass

        def process(self, host, pid):
            pass

    pid_dir = tmp_path / "pids"
    spec = validate_spec({"name": "d", "script": str(FAKE), "seeds": [1, 2], "launcher": "python",
                          "gpus_per_seed": 0, "env": {}}, "test")
    backend = RayNodeBackend(spec)
    daemons = []
    for seed, extra, timeout in ((1, {"FAKE_HANG": "1"}, 3.0), (2, {"FAKE_SECONDS": "0.2"}, 60.0)):
        adir = tmp_path / f"s{seed}"
        env = {"FAKE_DAEMON": "1", "FAKE_PID_DIR": str(pid_dir), **extra}
        att = AttemptSpec(run_dir=str(tmp_path), seed=seed, attempt=1, attempt_dir=str(adir), script_path=str(FAKE),
                          env=env, timeout_s=timeout)
        [(_, result)] = backend.run_group([att], [Events()])
        assert result.timed_out == (seed == 1) and (seed == 1 or result.exit_code == 0), result
        daemons += [int(f.name) for f in pid_dir.iterdir() if "daemon" in f.read_text() and f.read_text()[0] == str(seed)]
    assert len(daemons) == 2 and not any(alive(d) for d in daemons)


# ---------------------------------------------------------------- a log on a refusing disk
def test_attempt_log_waits_out_a_full_disk_then_notes_what_it_dropped(tmp_path, monkeypatch):
    log = storage.AttemptLog(tmp_path / "train.log")
    real_write = os.write
    full = {"on": False}

    def write(fd, data):
        if fd == log.fd and full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(storage.os, "write", write)
    monkeypatch.setattr(storage, "MAX_PENDING_BYTES", 20)
    assert log.write(["one"]) is None
    full["on"] = True
    err = log.write(["two", "three"])
    assert err.errno == errno.ENOSPC and err.filename == str(tmp_path / "train.log")
    assert log.write(["four"]) is not None and log.write(["five", "six"]) is not None   # over the cap: dropped
    full["on"] = False
    assert log.write(["seven"]) is None
    assert not log.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[:3] == ["one", "two", "three"] and lines[-1] == "seven"
    assert lines == ["one", "two", "three", "four", "pgolf: 2 log line(s) lost here: the disk was full", "seven"]


def test_attempt_log_complete_when_the_disk_came_back_in_time(tmp_path, monkeypatch):
    log = storage.AttemptLog(tmp_path / "train.log")
    real_write, calls = os.write, {"n": 0}

    def write(fd, data):   # a short write, then a refusal, then room again
        calls["n"] += 1
        if fd == log.fd and calls["n"] == 1:
            return real_write(fd, data[:2])
        if fd == log.fd and calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(storage.os, "write", write)
    assert log.write(["alpha", "beta"]) is not None
    assert log.close()
    assert (tmp_path / "train.log").read_text() == "alpha\nbeta\n"


# ---------------------------------------------------------------- scrubbing by content
SECRET = "sk-unit-SECRETVALUE"


def test_scrub_every_file_whatever_its_name_and_encoding(tmp_path, monkeypatch):
    """Text in UTF-8, UTF-16 and latin-1 is scrubbed in its own encoding; a binary file has each byte form of
    the secret masked with as many `*` (same length: weights stay loadable); names holding it are renamed
    (issue 20: latin-1 and UTF-16 text, binary files and file names kept the secret)."""
    scrub = Scrubber({"MY_API_KEY": SECRET})
    art = tmp_path / "artifacts"
    (art / "sub").mkdir(parents=True)
    (art / "env.dat").write_text(f"MY_API_KEY {SECRET}\nok\n")
    (art / "sub" / "noext").write_text(f"token={SECRET}")
    weights = b"\0" + f"MY_API_KEY {SECRET}".encode() + bytes(range(256)) + SECRET.encode("utf-16-be") + b"\0\1"
    (art / "weights.bin").write_bytes(weights)
    (art / "latin.txt").write_bytes(f"caf\xe9 {SECRET}\n".encode("latin-1"))
    (art / "utf16.txt").write_text(f"caf\xe9 {SECRET}\nline two\n", encoding="utf-16")          # with a BOM
    (art / "utf16le.log").write_bytes(f"step 1 {SECRET} done\n".encode("utf-16-le"))           # without one
    (art / "utf16be.log").write_bytes(f"MY_API_KEY={SECRET}\n".encode("utf-16-be"))
    (art / f"dump-{SECRET}.txt").write_text("nothing secret inside\n")
    (art / f"ckpt_{SECRET}").mkdir()
    (art / f"ckpt_{SECRET}" / "model.pt").write_bytes(b"\0\0weights")
    outside = tmp_path / "outside.txt"
    outside.write_text(SECRET)
    (art / "link.txt").symlink_to(outside)
    changed = storage.scrub_tree(art, scrub)
    assert sorted(p.name for p in changed) == ["ckpt_***", "dump-***.txt", "env.dat", "latin.txt", "noext",
                                               "utf16.txt", "utf16be.log", "utf16le.log", "weights.bin"]
    assert (art / "env.dat").read_text() == "MY_API_KEY ***\nok\n"
    assert SECRET not in (art / "sub" / "noext").read_text()
    assert (art / "latin.txt").read_bytes() == "caf\xe9 ***\n".encode("latin-1")
    assert (art / "utf16.txt").read_text(encoding="utf-16") == "caf\xe9 ***\nline two\n"
    assert (art / "utf16le.log").read_bytes() == "step 1 *** done\n".encode("utf-16-le")
    assert (art / "utf16be.log").read_bytes() == "MY_API_KEY=***\n".encode("utf-16-be")
    masked = (art / "weights.bin").read_bytes()
    assert len(masked) == len(weights) and masked == weights.replace(SECRET.encode(), b"*" * len(SECRET)).replace(
        SECRET.encode("utf-16-be"), ("*" * len(SECRET)).encode("utf-16-be"))
    assert (art / "dump-***.txt").read_text() == "nothing secret inside\n"
    assert (art / "ckpt_***" / "model.pt").read_bytes() == b"\0\0weights"
    every = b"".join(p.read_bytes() for p in art.rglob("*") if p.is_file() and not p.is_symlink())
    names = " ".join(str(p) for p in art.rglob("*"))
    assert all(SECRET.encode(enc) not in every for enc in storage.ENCODINGS) and SECRET not in names
    assert outside.read_text() == SECRET                       # a symlink is never followed
    assert storage.scrub_tree(art, scrub) == []                # nothing left to change

    (art / "env.dat").write_text(f"a {SECRET} b\n" * 3 + "tail")      # no room for a scrubbed copy: in place

    def no_room(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(storage.tempfile, "mkstemp", no_room)
    assert storage.scrub_file(art / "env.dat", scrub)
    assert (art / "env.dat").read_text() == "a *** b\n" * 3 + "tail"


def test_binary_masking_finds_a_secret_across_read_chunks_and_in_a_read_only_file(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CHUNK_BYTES", 7)              # the secret straddles several chunks
    scrub = Scrubber({"MY_API_KEY": SECRET})
    blob = b"\0\xff" * 5 + SECRET.encode() + b"\0" * 9 + SECRET.encode("utf-16-le")
    p = tmp_path / "model.bin"
    p.write_bytes(blob)
    os.chmod(p, 0o444)
    assert storage.scrub_file(p, scrub)
    out = p.read_bytes()
    assert len(out) == len(blob) and SECRET.encode() not in out and SECRET.encode("utf-16-le") not in out
    assert out.startswith(b"\0\xff" * 5 + b"*" * len(SECRET)) and os.stat(p).st_mode & 0o777 == 0o444


def test_is_text_tolerates_a_character_cut_at_the_probe_boundary(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(b"a" * (storage.TEXT_PROBE_BYTES - 1) + "é".encode() * 10)
    assert storage.is_text(p)


# ---------------------------------------------------------------- what a log says about a failure
TORCHRUN_FAILURE = """\
seed:1
[rank0]: Traceback (most recent call last):
[rank0]:   File "/w/train_gpt.py", line 1059, in main
[rank0]:     raise ValueError(f"tokenizer has {n} pieces > VOCAB_SIZE={v}")
[rank0]: ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7
[rank1]: Traceback (most recent call last):
[rank1]: ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7
Traceback (most recent call last):
  File "/usr/bin/torchrun", line 8, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train_gpt.py FAILED
"""


def test_log_watch_reads_a_configuration_error_before_training():
    w = LogWatch()
    for line in TORCHRUN_FAILURE.splitlines():
        w.feed(line)
    assert w.config_error() == "ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7"


def test_log_watch_other_failures_are_not_configuration_errors():
    w = LogWatch()
    for line in ["step:1/10 train_loss:4.0 train_time:10ms step_avg:10ms", "Traceback (most recent call last):",
                 '  File "x.py", line 1, in <module>', "ValueError: nan loss"]:
        w.feed(line)
    assert w.exception == "ValueError: nan loss" and w.config_error() is None     # training had started
    w = LogWatch()
    for line in ["Traceback (most recent call last):", "KeyError: 'x'", "",
                 "During handling of the above exception, another exception occurred:", "",
                 "Traceback (most recent call last):", "RuntimeError: CUDA error: an illegal memory access"]:
        w.feed(line)
    assert w.exception == "RuntimeError: CUDA error: an illegal memory access" and w.config_error() is None


def test_driver_reads_the_failure_from_the_log():
    """The driver's verdict on a failed job: a configuration error fails the seed at once (unless the
    spec retries it), another exception is shown and retried, a timeout says how long it was silent."""
    from runner.backends.base import AttemptResult
    from runner.driver import Driver
    from runner.spec import validate_spec

    def verdict(lines, retry_config=False, timed_out=False, error="exit code 1"):
        spec = validate_spec({"name": "v", "script": str(FAKE), "seeds": [1],
                              "limits": {"retries": 1, "retry_config_errors": retry_config}}, "test")
        drv = Driver(Path("/nonexistent"), spec, None, None, {}, Scrubber(), None, FAKE)
        w = LogWatch()
        for line in lines:
            w.feed(line)
        return drv.job_failure(1, AttemptResult(exit_code=None if timed_out else 1, timed_out=timed_out),
                               error, timed_out, w)

    config = TORCHRUN_FAILURE.splitlines()
    state, error = verdict(config)
    assert state == "failed" and error.startswith("ValueError: tokenizer has 1024 pieces > VOCAB_SIZE=7 (exit code 1;")
    assert "not retried" in error
    state, error = verdict(config, retry_config=True)
    assert state == "pending" and "retry_config_errors" in error
    state, error = verdict(["step:1/2 train_loss:1", "Traceback (most recent call last):", "RuntimeError: NCCL"])
    assert (state, error) == ("pending", "RuntimeError: NCCL (exit code 1)")
    state, error = verdict(["step:1/2 train_loss:1"], timed_out=True, error="timeout: job still running")
    assert state == "pending" and error.startswith("timeout: job still running; silent for ")
    assert error.endswith("last line: 'step:1/2 train_loss:1'")
    state, error = verdict(["step:1/2 train_loss:1", "pgolf-pod: hard deadline 9 s passed: killing torchrun"],
                           timed_out=True, error="deadline")          # RunPod's pod: exit code 124
    assert error.startswith("timeout: deadline; silent for ") and error.endswith("'step:1/2 train_loss:1'")


def test_gc_keeps_the_pods_of_a_live_batch_by_name():
    from runner.backends.runpod.api import Pod
    from runner.backends.runpod.cluster import live_batch_pods
    from runner.backends.runpod.instances import pod_name
    live = {Path("/r/runs/a-b")}
    names = [pod_name("/r/runs/a-b", 3, 2), pod_name("/r/runs/a-b-s1", 1, 1), pod_name("/r/runs/other", 3, 2), ""]
    pods = [Pod(id=str(i), name=n, status="RUNNING") for i, n in enumerate(names)]
    assert list(live_batch_pods(pods, live)) == ["0"]


def test_log_watch_silence_of_a_hung_job():
    now = [100.0]
    w = LogWatch(clock=lambda: now[0])
    assert w.silence() == "no output in 0 s"
    w.feed("step:7/100 train_loss:3.1")
    now[0] = 512.4
    assert w.silence() == "silent for 412 s, last line: 'step:7/100 train_loss:3.1'"


# ---------------------------------------------------------------- the ledger on a refusing disk
def test_ledger_never_records_an_attempt_it_could_not_save(tmp_path, monkeypatch):
    led = Ledger.create(tmp_path, [1])
    import runner.ledger as ledger_mod

    def refuse(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ledger_mod, "atomic_write_json", refuse)
    with pytest.raises(OSError) as e:
        led.start_attempt(1, "ray")
    assert e.value.filename == str(tmp_path / "ledger.json")
    assert led.attempts(1) == [] and led.state(1) == "pending" and not led.unsaved
    monkeypatch.undo()
    led.start_attempt(1, "ray")
    monkeypatch.setattr(ledger_mod, "atomic_write_json", refuse)
    with pytest.raises(OSError):
        led.end_attempt(1, 1, "succeeded", exit_code=0)
    assert led.unsaved and led.state(1) == "succeeded"              # memory keeps it ...
    assert json.loads((tmp_path / "ledger.json").read_text())["seeds"]["1"]["state"] == "running"   # disk: as before
    monkeypatch.undo()
    led.save()
    assert not led.unsaved and Ledger.load(tmp_path).state(1) == "succeeded"


def test_an_attempts_end_never_overtakes_its_last_lines():
    """The driver closes an attempt's log when its end arrives; Ray runs an async actor's calls in no
    guaranteed order. A channel whose `lines` is slow to take a batch in must still see the last lines
    before the end (runner.driver.TaskEvents.delivered)."""
    import asyncio

    import ray

    from runner.backends.base import AttemptResult
    from runner.driver import TaskEvents

    @ray.remote(num_cpus=0)
    class SlowChannel:
        def __init__(self):
            self.seen: list = []

        async def lines(self, seed, attempt, lines):
            await asyncio.sleep(0.5)
            self.seen.append(("lines", seed, attempt, lines))

        async def ended(self, seed, attempt, payload):
            self.seen.append(("ended", seed, attempt, payload["result"].exit_code))
            return None

        async def got(self):
            return self.seen

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, address="local")
    try:
        channel = SlowChannel.remote()
        events = TaskEvents(channel, 3, 2)
        events.line("step:5/5 train_loss:3.5")
        events.line("pgolf-pod: DONE 0")
        events.end(AttemptResult(exit_code=0), {})
        events.close()
        assert ray.get(channel.got.remote()) == [
            ("lines", 3, 2, ["step:5/5 train_loss:3.5", "pgolf-pod: DONE 0"]), ("ended", 3, 2, 0)]
    finally:
        ray.shutdown()


def test_scratch_of_a_dead_task_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    """Issue 20: the suite left /tmp/pgolf-s*-a1-* folders: a task killed with its node (or force-cancelled)
    never ran its clean-up. Their names carry the task's pid; the next task there and the batch's end sweep
    the ones whose process is gone."""
    import tempfile
    from runner import driver
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"pgolf-s1-a1-p{dead.pid}-abc"
    live = tmp_path / f"pgolf-s2-a1-p{os.getpid()}-def"
    other = tmp_path / "pgolf-s3-a1-xyz"                  # not ours by name: never touched
    for d in (stale, live, other):
        (d / "attempt").mkdir(parents=True)
    assert driver.sweep_scratch() == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()
