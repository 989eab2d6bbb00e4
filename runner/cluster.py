"""`pgolf cluster up|status|down|gc`: see and stop what pgolf runs on RunPod.

gc is the one that saves money: it lists pods whose name carries pgolf's prefix, keeps those a running
attempt of some ledger under --runs-dir still owns (attempt not ended), shows the rest with their price,
asks (or --yes), terminates them and polls until RunPod no longer lists them. With --rehearse it talks to
the rehearsal's fake API, started again on the fake's state file, so pods left by a killed rehearsal
driver are found the same way.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from results.errors import PgolfError
from runner import runpod_api as api

GONE_TIMEOUT_S = 300.0
GONE_POLL_S = 2.0


@contextmanager
def connected(rehearse: bool):
    """The RunPod API (or the rehearsal fake, revived from its state file) for the duration of a verb."""
    fake = None
    old_base = os.environ.get("RUNPOD_API_BASE_URL")
    try:
        if rehearse:
            from runner.executors.runpod import REHEARSAL_KEY
            from runner.fake_runpod import FakeRunPod
            fake = FakeRunPod()
            os.environ["RUNPOD_API_BASE_URL"] = fake.start()
            api.configure(os.environ.get("RUNPOD_API_KEY") or REHEARSAL_KEY, backoff_s=0.05)
        else:
            api.configure(api.resolve_api_key())
        yield fake
    finally:
        if fake is not None:
            fake.stop()
            if old_base is None:
                os.environ.pop("RUNPOD_API_BASE_URL", None)
            else:
                os.environ["RUNPOD_API_BASE_URL"] = old_base


def owners(runs_dir: str | Path) -> tuple[dict[str, str], dict[str, Path]]:
    """(pod id -> 'run seed S attempt K' for attempts still open, pod id -> ledger dir for ended ones)."""
    open_, ended = {}, {}
    for path in sorted(Path(runs_dir).glob("*/ledger.json")):
        try:
            seeds = json.loads(path.read_text()).get("seeds") or {}
        except (OSError, ValueError):
            continue
        for seed, entry in seeds.items():
            for att in entry.get("attempts") or []:
                pod = att.get("pod_id")
                if not pod:
                    continue
                if att.get("ended") is None:
                    open_[pod] = f"{path.parent.name} seed {seed} attempt {att.get('attempt')}"
                else:
                    ended[pod] = path.parent
    return open_, ended


def pgolf_pods(prefix: str = api.NAME_PREFIX) -> list[dict[str, Any]]:
    try:
        return [p for p in api.list_pods() if str(p.get("name") or "").startswith(prefix)]
    except api.ApiError as e:
        raise PgolfError(f"RunPod API: {e}") from None


def show(pods: list[dict[str, Any]], title: str, note: dict[str, str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for col in ("pod", "name", "status", "$/h", "up", "owner"):
        t.add_column(col)
    for p in pods:
        up = int(p.get("uptimeSeconds") or 0)
        t.add_row(p["id"], p.get("name") or "", str(p.get("desiredStatus")), f"{float(p.get('costPerHr') or 0):.2f}",
                  f"{up // 3600}:{up % 3600 // 60:02d}:{up % 60:02d}", (note or {}).get(p["id"], "-"))
    Console().print(t)


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise PgolfError(f"{question} — no terminal to ask: pass --yes to terminate without asking")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def terminate_verified(pod_ids: list[str], timeout_s: float = GONE_TIMEOUT_S) -> list[str]:
    """Terminate every pod, then poll until RunPod lists none of them. Returns those still there."""
    for pid in pod_ids:
        try:
            api.terminate_pod(pid)
        except api.ApiError as e:
            print(f"pgolf cluster: terminate {pid}: {e}", file=sys.stderr)
    left = list(pod_ids)
    deadline = time.time() + timeout_s
    while left and time.time() < deadline:
        time.sleep(GONE_POLL_S if time.time() + GONE_POLL_S < deadline else 0.1)
        still = []
        for pid in left:
            try:
                if api.get_pod(pid) is not None:
                    still.append(pid)
                    api.terminate_pod(pid)
            except api.ApiError:
                still.append(pid)
        left = still
    return left


def mark_terminated(ledger_dirs: dict[str, Path], gone: list[str]) -> None:
    """Record pod_terminated=true on ended attempts whose pod gc stopped, when no driver holds that ledger
    (no attempt open in it), so the run's ledger tells the truth about its money."""
    from runner.ledger import Ledger
    by_dir: dict[Path, list[str]] = {}
    for pid in gone:
        if pid in ledger_dirs:
            by_dir.setdefault(ledger_dirs[pid], []).append(pid)
    for run_dir, pids in by_dir.items():
        led = Ledger.load(run_dir)
        if any(a.get("ended") is None for s in led.seeds() for a in led.attempts(s)):
            continue
        for s in led.seeds():
            for a in led.attempts(s):
                if a.get("pod_id") in pids:
                    a["pod_terminated"] = True
        led.save()


def reconcile(runs_dir: str | Path) -> list[str]:
    """Ended attempts whose pod RunPod no longer lists get pod_terminated=true (verified gone), in ledgers
    no driver holds. Returns the pod ids newly recorded."""
    from runner.ledger import Ledger
    done = []
    for path in sorted(Path(runs_dir).glob("*/ledger.json")):
        try:
            led = Ledger.load(path.parent)
        except PgolfError:
            continue
        atts = [a for s in led.seeds() for a in led.attempts(s)]
        if any(a.get("ended") is None for a in atts):
            continue
        todo = [a for a in atts if a.get("pod_id") and a.get("pod_terminated") is not True]
        changed = False
        for a in todo:
            try:
                if api.get_pod(a["pod_id"]) is None:
                    a["pod_terminated"] = True
                    done.append(a["pod_id"])
                    changed = True
            except api.ApiError:
                pass
        if changed:
            led.save()
    return done


def gc(runs_dir: str, yes: bool) -> int:
    pods = pgolf_pods()
    open_, ended = owners(runs_dir)
    kept = [p for p in pods if p["id"] in open_]
    orphans = [p for p in pods if p["id"] not in open_]
    if kept:
        show(kept, f"kept: owned by a running attempt under {runs_dir}", open_)
        print("  (if that batch's driver is dead, `pgolf resume RUN_DIR` closes its attempts; gc again after)")
    if not orphans:
        print(f"pgolf cluster gc: no orphaned pgolf pods ({len(kept)} kept)")
        fixed = reconcile(runs_dir)
        if fixed:
            print(f"pgolf cluster gc: recorded pod_terminated for {len(fixed)} pod(s) already gone: {', '.join(fixed)}")
        return 0
    spend = sum(float(p.get("costPerHr") or 0) for p in orphans)
    show(orphans, f"orphaned pgolf pods: {len(orphans)}, ${spend:.2f}/h", {p["id"]: "none" for p in orphans})
    if not confirm(f"Terminate these {len(orphans)} pod(s)?", yes):
        print("pgolf cluster gc: nothing terminated")
        return 1
    ids = [p["id"] for p in orphans]
    left = terminate_verified(ids)
    gone = [i for i in ids if i not in left]
    mark_terminated(ended, gone)
    reconcile(runs_dir)
    print(f"pgolf cluster gc: terminated {len(gone)} pod(s), verified gone: {', '.join(gone) or '-'}")
    if left:
        print(f"pgolf cluster gc: STILL LISTED after {GONE_TIMEOUT_S:.0f} s: {', '.join(left)}; "
              f"check https://www.runpod.io/console/pods", file=sys.stderr)
        return 1
    return 0


def _spec(args):
    if not args.spec:
        raise PgolfError(f"pgolf cluster {args.action}: give the job spec, e.g. `pgolf cluster {args.action} "
                         f"jobs/record.toml`")
    from runner.spec import load_spec
    return load_spec(args.spec)


def cmd_cluster(args) -> int:
    rehearse = bool(getattr(args, "rehearse", False))
    if args.action == "gc":
        with connected(rehearse):
            return gc(args.runs_dir, args.yes)
    spec = _spec(args)
    if spec.backend != "runpod" and not rehearse:
        print(f"pgolf cluster {args.action}: {args.spec} uses the Ray backend: `pgolf run` starts a local Ray "
              f"cluster itself; for a multi-node one use `ray start --head` / `ray up`, then `--address`")
        return 0
    prefix = f"{api.NAME_PREFIX}{spec.name}-"   # run dirs default to NAME-TIMESTAMP
    with connected(rehearse):
        if args.action == "up":
            from runner.executors.runpod import check_budget
            d = spec.model_dump(mode="json")
            d["runpod"] = {k: v for k, v in d["runpod"].items() if v is not None}
            check_budget(d, len(spec.seeds), rehearse)
            print("pgolf cluster up: RunPod pods are created per seed attempt by `pgolf run`; nothing to start")
            return 0
        pods = pgolf_pods(prefix)
        if args.action == "status":
            try:
                bal = api.get_balance()
                print(f"RunPod balance ${bal['clientBalance']:.2f}, spending ${bal['currentSpendPerHr']:.2f}/h")
            except api.ApiError as e:
                print(f"RunPod balance: unavailable ({e})")
            show(pods, f"pods of {spec.name}: {len(pods)}", owners(args.runs_dir)[0])
            return 0
        # down: every pod of this spec's batches, owned or not (it stops running batches too)
        if not pods:
            print(f"pgolf cluster down: no pods named {prefix}*")
            return 0
        show(pods, f"pods of {spec.name} to terminate", owners(args.runs_dir)[0])
        if not confirm(f"Terminate these {len(pods)} pod(s), running attempts included?", args.yes):
            return 1
        left = terminate_verified([p["id"] for p in pods])
        print(f"pgolf cluster down: {len(pods) - len(left)} terminated" + (f", still listed: {left}" if left else ""))
        return 1 if left else 0
