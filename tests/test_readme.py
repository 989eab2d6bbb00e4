"""The README's examples, pasted in order, work on a fresh copy of the repository with nothing beside it.

Every ```bash block of README.md is run here, command by command, in the README's order, exactly as
written, in a scratch folder that holds only links to the repository's files (so runs/, my-record, ...
land there). The changes, each for speed or to stay offline, are flags and environment only:
- `pgolf run jobs/smoke.toml ...` gets `--seeds 42 --no-progress` (one seed instead of three: the
  smoke test, tests/test_runner_smoke.py, runs all three); `pgolf reproduce` gets `--dry-run` (the
  smoke test runs a reproduction);
- `pgolf records fetch` clones a local git repository built from tests/data/records
  (PGOLF_RECORDS_URL), into the scratch folder's cache (XDG_CACHE_HOME): no network;
- the set-up's `bash .ci/install` is already done (this interpreter), and its test command is this suite.
The README's claims about those commands' output are checked too (the rehearsal's lost pod), and the
README itself: no verb pgolf lacks, no two examples writing one --out, a synopsis naming every option.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PGOLF = ".venv/bin/pgolf"
SETUP_TESTS = "RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q"   # set-up command 2: this very suite
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}


def examples(text: str = README, comments: bool = False) -> list:
    """The commands of every ```bash block, in order, `a && b` split into a and b; with `comments`,
    (command, the line's comment) pairs (a comment saying `exit 1` is the exit code the README promises)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            note = re.search(r"(?:^|\s)#\s.*$", line)
            words = shlex.split(line, comments=True)
            while words:
                n = words.index("&&") if "&&" in words else len(words)
                cmd = shlex.join(words[:n])
                out.append((cmd, note.group(0) if note else "") if comments else cmd)
                words = words[n + 1:]
    return out


def test_examples_are_pgolf_commands_and_each_out_is_written_once():
    cmds = examples()
    assert cmds[:2] == ["bash .ci/install", f"{PGOLF} run jobs/smoke.toml"]          # the set-up's command 1
    rest = [c for c in cmds if c not in ("bash .ci/install", SETUP_TESTS)]
    assert SETUP_TESTS in cmds and all(c.startswith(PGOLF + " ") for c in rest), rest
    outs = [w[i + 1] for w in map(shlex.split, rest) for i, x in enumerate(w) if x in ("--out", "--dest")]
    assert len(outs) == len(set(outs)), outs
    assert "../shared" not in README and "../../shared" not in (ROOT / "jobs" / "record_k_kvshare_wider.toml").read_text()


def test_every_verb_the_readme_names_exists():
    code = re.findall(r"```.*?```", README, re.S) + re.findall(r"`[^`\n]+`", README)   # commands, not prose
    named = {v for c in code for v in re.findall(r"(?:^|[\s`;(])(?:\.venv/bin/)?pgolf ([a-z]+)", c, re.M)}
    assert named and not named - set(COMMANDS), sorted(named - set(COMMANDS))
    assert not re.search(r"pgolf compare\b", README)


def test_the_synopsis_names_every_option():
    synopsis = re.search(r"### The CLI\n\n```\n(.*?)```", README, re.S).group(1)
    entries = re.split(r"\n(?=pgolf )", synopsis)
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a.choices, dict)).choices
    missing = []
    for verb, sub in verbs.items():
        text = " ".join(e for e in entries if e.startswith(f"pgolf {verb} ") or f"; pgolf {verb} " in e)
        subs = [sub]
        for a in sub._actions:                            # `pgolf data prepare`, `pgolf records fetch`
            if isinstance(a.choices, dict) and a.option_strings == []:
                subs = list(a.choices.values())
        for s in subs:
            for a in s._actions:
                if a.option_strings and "--help" not in a.option_strings and a.option_strings[-1] not in text:
                    missing.append(f"pgolf {verb} {a.option_strings[-1]}")
    assert not missing, missing


@pytest.fixture
def scratch(tmp_path):
    """A folder that looks like a fresh clone (links to the repository's files) and the environment the
    examples run in: no PGOLF_RECORDS, a cache of its own, the public repository replaced by a local one."""
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("jobs", "model", "tests", "bench", "runner", "results", "README.md", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    (work / ".venv" / "bin").mkdir(parents=True)
    pgolf = work / ".venv" / "bin" / "pgolf"
    pgolf.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m runner.cli \"$@\"\n")
    pgolf.chmod(0o755)
    upstream = tmp_path / "parameter-golf"
    shutil.copytree(ROOT / "tests" / "data" / "records", upstream / "records", symlinks=True)
    git = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "records"]):
        subprocess.run(["git", *args], cwd=upstream, check=True, capture_output=True, env=git)
    env = {k: v for k, v in os.environ.items() if k not in ("PGOLF_RECORDS", "PGOLF_RECORDS_URL")}
    env.update(GIT_ENV, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT), COLUMNS="200",
               XDG_CACHE_HOME=str(tmp_path / "cache"), PGOLF_RECORDS_URL=upstream.as_uri())
    yield work, env
    # a command cut short (a timeout) leaves its processes and rehearsal pods: none may outlive the test
    from runner.backends.runpod.fake import FakeRunPod
    from runner.proctree import batch_markers, kill_marked
    for run in (work / "runs").glob("*/ledger.json") if (work / "runs").is_dir() else []:
        if not run.parent.is_symlink():
            kill_marked(batch_markers(str(run.parent)))
            if (run.parent / "rehearsal").is_dir():
                FakeRunPod(run.parent / "rehearsal").terminate_all()


def sh(cmd: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`bash -c cmd` in its own session; on a timeout the whole session is killed, not only bash."""
    p = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGINT)          # pgolf's Ctrl-C path stops its attempts and pods
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        raise AssertionError(f"`{cmd}` still running after {timeout} s:\n{out[-2000:]}\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def adapted(cmd: str) -> str | None:
    """The README's command as this test runs it (flags appended only), or None for the set-up's own."""
    if cmd in ("bash .ci/install", SETUP_TESTS):
        return None
    if cmd.startswith(f"{PGOLF} run jobs/smoke.toml"):
        return cmd + " --seeds 42 --no-progress"
    if cmd.startswith(f"{PGOLF} reproduce "):
        return cmd + " --dry-run"
    return cmd


@pytest.mark.slow
@pytest.mark.timeout(1800)          # two runs of the payload (the smoke batch, the rehearsal), one seed each
def test_every_example_works_pasted_in_order(scratch):
    work, env = scratch
    ran = []
    for cmd, note in examples(comments=True):
        run = adapted(cmd)
        if run is None:
            continue
        r = sh(run, work, env, timeout=600)
        expect = 1 if re.search(r"\bexit 1:", note) else 0
        assert r.returncode == expect, f"README example `{cmd}` (run as `{run}`) exit {r.returncode}:\n" \
                                  f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        ran.append((cmd, r))
    assert len(ran) >= 10
    # what the README says these print
    rehearsal = [i for i, (c, _r) in enumerate(ran) if "--rehearse-faults preempt=1" in c]
    assert rehearsal, "the walk-through rehearses RunPod"
    status = ran[rehearsal[0] + 1]
    assert status[0] == f"{PGOLF} status runs/latest"
    assert "lost (TERMINATED)" in status[1].stdout and "pod gone" in status[1].stdout, status[1].stdout
    assert (work / "my-record" / "submission.json").is_file() and (work / "smoke-vs-record" / "report.md").is_file()
    assert (Path(env["XDG_CACHE_HOME"]) / "pgolf" / "parameter-golf" / "records" / "track_10min_16mb").is_dir()
    assert not any(p.name.startswith("latest") for p in ROOT.iterdir())      # nothing written in the repository
