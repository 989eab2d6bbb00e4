"""`pgolf cluster up|status|down SPEC` and `pgolf cluster gc`: see and stop what pgolf runs on RunPod.

gc is the one that saves money: it lists pods whose name carries pgolf's prefix, keeps those a running
attempt of some ledger under --runs-dir still owns (attempt not ended), shows the rest with their price,
asks (or --yes), terminates them and polls until RunPod no longer lists them, then records
`pod_terminated: true` in the ledgers. With --rehearse it talks to the rehearsal's fake API, started again
on the fake's state file, so pods left by a killed rehearsal driver are found the same way.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from results.errors import PgolfError
from runner.backends.base import ClusterAction
from runner.backends.runpod import api, instances
from runner.backends.runpod.instances import Session
from runner.ledger import Ledger

if TYPE_CHECKING:
    from runner.backends.runpod.backend import RunPodBackend


def _ledgers(runs_dir: Path) -> list[Ledger]:
    out = []
    for path in sorted(Path(runs_dir).glob("*/ledger.json")):
        try:
            out.append(Ledger.load(path.parent))
        except PgolfError:
            continue
    return out


def owners(runs_dir: Path) -> dict[str, str]:
    """pod id -> 'run seed S attempt K' for the pods of attempts still open (a driver may be using them)."""
    return {att["pod_id"]: f"{led.run_dir.name} seed {seed} attempt {att.get('attempt')}"
            for led in _ledgers(runs_dir) for seed, att in led.all_attempts()
            if att.get("pod_id") and att.get("ended") is None}


def reconcile(runs_dir: Path) -> list[str]:
    """Ended attempts whose pod RunPod no longer lists get pod_terminated=true (verified gone), in ledgers
    no driver holds (no attempt open in them), so each run's ledger tells the truth about its money.
    Returns the pod ids newly recorded."""
    done = []
    for led in _ledgers(runs_dir):
        if led.has_open_attempt():
            continue
        changed = False
        for _seed, att in led.all_attempts():
            if not att.get("pod_id") or att.get("pod_terminated") is True:
                continue
            try:
                if api.get_pod(att["pod_id"]) is None:
                    att["pod_terminated"] = True
                    done.append(att["pod_id"])
                    changed = True
            except api.ApiError:
                pass
        if changed:
            led.save()
    return done


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


def _terminate(pods: list[dict[str, Any]], session: Session) -> tuple[list[str], list[str]]:
    """(verified gone, still listed) after terminating `pods`."""
    ids = [p["id"] for p in pods]
    left = instances.terminate_verified(ids, session.timing,
                                        say=lambda msg: print(f"pgolf cluster: {msg}", file=sys.stderr))
    return [i for i in ids if i not in left], left


def gc(runs_dir: Path, yes: bool, rehearse: bool = False) -> int:
    with Session(rehearse) as session:
        pods = instances.list_ours()
        open_ = owners(runs_dir)
        kept = [p for p in pods if p["id"] in open_]
        orphans = [p for p in pods if p["id"] not in open_]
        if kept:
            show(kept, f"kept: owned by a running attempt under {runs_dir}", open_)
            print("  (if that batch's driver is dead, `pgolf resume RUN_DIR` closes its attempts; gc again after)")
        if not orphans:
            print(f"pgolf cluster gc: no orphaned pgolf pods ({len(kept)} kept)")
            fixed = reconcile(runs_dir)
            if fixed:
                print(f"pgolf cluster gc: recorded pod_terminated for {len(fixed)} pod(s) already gone: "
                      f"{', '.join(fixed)}")
            return 0
        spend = sum(float(p.get("costPerHr") or 0) for p in orphans)
        show(orphans, f"orphaned pgolf pods: {len(orphans)}, ${spend:.2f}/h", {p["id"]: "none" for p in orphans})
        if not confirm(f"Terminate these {len(orphans)} pod(s)?", yes):
            print("pgolf cluster gc: nothing terminated")
            return 1
        gone, left = _terminate(orphans, session)
        reconcile(runs_dir)
        print(f"pgolf cluster gc: terminated {len(gone)} pod(s), verified gone: {', '.join(gone) or '-'}")
        if left:
            print(f"pgolf cluster gc: STILL LISTED after {session.timing.gone_timeout_s:.0f} s: {', '.join(left)}; "
                  f"check https://www.runpod.io/console/pods", file=sys.stderr)
            return 1
        return 0


def run_verb(backend: "RunPodBackend", action: ClusterAction, runs_dir: Path, yes: bool) -> int:
    """up: the balance check of `pgolf run` (pods are made per attempt); status: balance, spend and the
    spec's pods; down: terminate every pod of the spec's batches, running ones included."""
    spec, session = backend.spec, backend.session
    prefix = f"{api.NAME_PREFIX}{spec.name}-"   # run dirs default to NAME-TIMESTAMP
    with session:
        if action == "up":
            print(backend.estimate(len(spec.seeds)), flush=True)
            print("pgolf cluster up: RunPod pods are created per seed attempt by `pgolf run`; nothing to start")
            return 0
        pods = instances.list_ours(prefix)
        if action == "status":
            try:
                bal = api.get_balance()
                print(f"RunPod balance ${bal['clientBalance']:.2f}, spending ${bal['currentSpendPerHr']:.2f}/h")
            except api.ApiError as e:
                print(f"RunPod balance: unavailable ({e})")
            show(pods, f"pods of {spec.name}: {len(pods)}", owners(runs_dir))
            return 0
        if not pods:
            print(f"pgolf cluster down: no pods named {prefix}*")
            return 0
        show(pods, f"pods of {spec.name} to terminate", owners(runs_dir))
        if not confirm(f"Terminate these {len(pods)} pod(s), running attempts included?", yes):
            return 1
        gone, left = _terminate(pods, session)
        print(f"pgolf cluster down: {len(gone)} terminated" + (f", still listed: {left}" if left else ""))
        return 1 if left else 0
