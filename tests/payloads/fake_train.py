"""A fast stand-in for model/train_gpt.py: prints the payload's log lines (their format: docs/CHALLENGE.md),
controlled by env.

Every knob X can be set per seed and attempt: FAKE_X_<SEED>_A<ATTEMPT>, FAKE_X_<SEED>, FAKE_X_A<ATTEMPT>, FAKE_X.
FAKE_SECONDS   total run time (default 1)
FAKE_STEPS     number of step lines (default 5)
FAKE_FAIL      1: exit with code 3 after the step lines
FAKE_HANG      1: never finish (for timeouts and Ctrl-C)
FAKE_PID_DIR   write files <pid> holding "seed attempt pgid" there, so tests can look for strays
FAKE_CHILD     1: start a child process (a "rank") in the same group that sleeps as long as we do
FAKE_PRINT     comma list of environment variables whose values the job prints (secret-leak tests)
FAKE_BPB       the final val_bpb (default 1.10 + (seed % 7) * 0.001)
FAKE_LOSS      added to every train loss (default 0; the losses are 4.0 - 0.1 * step)
FAKE_DUMP      comma list of environment variables written to $ARTIFACT_DIR/env.dat (text) and, with a NUL
               first, to $ARTIFACT_DIR/weights.bin (binary: the secret's bytes come back masked, same length)
FAKE_RAISE     raise ValueError(this text) before the first step line (a configuration error)
FAKE_UNTIL     a path: after the step lines, wait (up to 300 s) until it exists (tests hold a job running)
FAKE_DAEMON    1: leave a daemon behind (fork, setsid, fork; stdio to /dev/null) that sleeps for an hour;
               its pid file in FAKE_PID_DIR says "daemon"
"""
import hashlib
import math
import os
import subprocess
import sys
import time

seed = int(os.environ.get("SEED", "0"))
attempt = os.environ.get("PGOLF_ATTEMPT", "1")
art = os.environ.get("ARTIFACT_DIR", ".")
rank = int(os.environ.get("RANK", "0"))


def opt(name, default=""):
    for key in (f"FAKE_{name}_{seed}_A{attempt}", f"FAKE_{name}_{seed}", f"FAKE_{name}_A{attempt}", f"FAKE_{name}"):
        if key in os.environ:
            return os.environ[key]
    return default


seconds = float(opt("SECONDS", "1"))
steps = int(opt("STEPS", "5"))
fail = opt("FAIL") == "1"
hang = opt("HANG") == "1"
pid_dir = os.environ.get("FAKE_PID_DIR")
log = open(os.path.join(art, "train.log"), "a") if rank == 0 else None
child = None
if opt("CHILD") == "1":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
if pid_dir:
    os.makedirs(pid_dir, exist_ok=True)
    for pid in [os.getpid()] + ([child.pid] if child else []):
        open(os.path.join(pid_dir, f"{pid}"), "w").write(f"{seed} {attempt} {os.getpgid(0)}\n")


def daemonize():
    """The classic double fork: the grandchild is in a session of its own and init's child. Returns once
    the daemon has written its pid file."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        os.waitpid(pid, 0)
        os.read(r, 1)
        os.close(r)
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if pid_dir:
        open(os.path.join(pid_dir, f"{os.getpid()}"), "w").write(f"{seed} {attempt} {os.getpgid(0)} daemon\n")
    os.write(w, b"x")
    os.close(w)
    time.sleep(3600)
    os._exit(0)


if opt("DAEMON") == "1" and rank == 0:
    daemonize()


def say(s):
    if rank != 0:
        return
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


code = open(__file__, "rb").read()
say(f"seed:{seed}")
say(f"script_sha256:{hashlib.sha256(code).hexdigest()}")
bpt = 2.43593
say(f"val_bytes_per_token:{bpt}")
for name in filter(None, opt("PRINT").split(",")):
    say(f"env {name}={os.environ.get(name)}")
dump = [n for n in opt("DUMP").split(",") if n]
if dump and rank == 0:
    values = "".join(f"{n} {os.environ.get(n)}\n" for n in dump)
    open(os.path.join(art, "env.dat"), "w").write(values)
    open(os.path.join(art, "weights.bin"), "wb").write(b"\0" + values.encode())
if opt("RAISE"):
    raise ValueError(opt("RAISE"))
t0 = time.time()
per = seconds / max(steps, 1)
for i in range(1, steps + 1):
    time.sleep(per)
    ms = (time.time() - t0) * 1000
    loss = 4.0 - 0.1 * i + float(opt("LOSS", "0"))
    say(f"step:{i}/{steps} train_loss:{loss:.4f} train_time:{ms:.0f}ms step_avg:{ms / i:.2f}ms")
until = opt("UNTIL")
while until and not os.path.exists(until) and time.time() - t0 < 300:
    time.sleep(0.1)
if fail:
    say("fake failure")
    sys.exit(3)
while hang:
    time.sleep(1)
if rank == 0:
    blob = os.urandom(1000) + bytes([seed % 256])
    open(os.path.join(art, "final_model.int6.ptz"), "wb").write(blob)
    say(f"Code size: {len(code)} bytes")
    say(f"Total submission size int6+brotli: {len(code) + len(blob)} bytes")
    bpb = float(opt("BPB", str(1.10 + (seed % 7) * 0.001)))
    loss = bpb * math.log(2) * bpt
    say(f"final_int6_roundtrip_exact val_loss:{loss + 0.01:.8f} val_bpb:{bpb + 0.004:.8f}")
    say(f"final_int6_sliding_window_exact val_loss:{loss + 0.005:.8f} val_bpb:{bpb + 0.002:.8f}")
    say(f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f} eval_time:1234ms")
if child:
    child.kill()
