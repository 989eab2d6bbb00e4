"""`pgolf cluster up|status|down SPEC` and `pgolf cluster gc`: see and stop what pgolf runs on RunPod.

gc is the one that saves money: it lists pods whose name carries pgolf's prefix, keeps those a running
attempt of some ledger under --runs-dir still owns (attempt not ended), shows the rest with their price,
asks (or --yes), terminates them and polls until RunPod no longer knows them, then records
`pod_terminated: true` in the ledgers (a terminated pod carrying an attempt's name but not its id is that
attempt's twin: recorded in its `twin_pods`). With --rehearse it does the same for every rehearsal under
--runs-dir, each on the fake RunPod of its own run directory (RUN_DIR/rehearsal/), so pods left by a killed
rehearsal driver are found the same way.

A pod is judged only by the API that made it: RunPod's own for the batches that ran there, a rehearsal's
fake for that rehearsal alone. An API that never heard of a pod says nothing about it (the fake of one
rehearsal knows none of another batch's pods, and must not mark them gone while they bill).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterator

from results.errors import PgolfError
from runner.backends.base import ClusterAction
from runner.backends.runpod import api
from runner.backends.runpod.instances import (NAME_PREFIX, REAL, REHEARSAL_DIR, Session, Timing, batch_pod_name,
                                              batch_prefix, gone, list_ours, pod_cost, record_twin,
                                              terminate_verified)
from runner.ledger import Ledger, load_batch

if TYPE_CHECKING:
    from runner.backends.runpod.backend import RunPodBackend


def _run_dirs(runs_dir: Path, holding: str) -> list[Path]:
    """The run directories under runs_dir holding `holding`, each once (runs/latest is a link to one)."""
    return sorted({p.parent.resolve() for p in Path(runs_dir).glob(f"*/{holding}") if not p.parent.is_symlink()})


def _ledgers(dirs: Collection[Path]) -> list[Ledger]:
    out = []
    for run_dir in dirs:
        try:
            out.append(Ledger.load(run_dir))
        except PgolfError:
            continue
    return out


def sessions(runs_dir: Path, rehearse: bool, name: str | None = None) -> Iterator[tuple[str, Session, list[Path]]]:
    """(label, open session, the run directories whose pods that API made): RunPod's API once with every
    batch that is not a rehearsal, or with `rehearse` the fake of each rehearsal under runs_dir with its
    own run directory alone (only the batches of spec `name`, when given)."""
    if not rehearse:
        with Session() as s:
            yield "RunPod", s, [d for d in _run_dirs(runs_dir, "ledger.json") if not _is_rehearsal(d)]
        return
    for run_dir in _run_dirs(runs_dir, REHEARSAL_DIR):
        if not (run_dir / REHEARSAL_DIR / "state.json").exists() or (name and _batch_name(run_dir) != name):
            continue
        with Session(rehearse=True, state_dir=run_dir / REHEARSAL_DIR) as s:
            yield f"rehearsal {run_dir.name}", s, [run_dir]


def _is_rehearsal(run_dir: Path) -> bool:
    """The batch ran on a rehearsal's fake (batch.json says so, or its fake's state is there)."""
    try:
        if load_batch(run_dir).get("rehearsal"):
            return True
    except PgolfError:
        pass
    return (run_dir / REHEARSAL_DIR / "state.json").exists()


def _batch_name(run_dir: Path) -> str | None:
    try:
        return load_batch(run_dir).get("name")
    except PgolfError:
        return None


def owners(dirs: Collection[Path]) -> dict[str, str]:
    """pod id -> 'run seed S attempt K' for the pods of attempts still open (a driver may be using them)."""
    return {att["pod_id"]: f"{led.run_dir.name} seed {seed} attempt {att.get('attempt')}"
            for led in _ledgers(dirs) for seed, att in led.all_attempts()
            if att.get("pod_id") and att.get("ended") is None}


def live_batch_pods(pods: list[api.Pod], live: Collection[Path]) -> dict[str, str]:
    """pod id -> owner note for the pods named after a batch a live process holds (runner/lock.py): kept
    even when no ledger names them yet (a create whose answer is still on its way)."""
    names = {re.compile(re.escape(batch_prefix(d)) + r"s\d+-a\d+"): d for d in live}
    return {p.id: f"{d.name}: batch in use (live driver)" for p in pods for pattern, d in names.items()
            if pattern.fullmatch(p.name or "")}


def reconcile(client: api.RunPodClient, dirs: Collection[Path], live: Collection[Path] = (),
              twins: Collection[api.Pod] = (), timing: Timing = REAL) -> list[str]:
    """Ended attempts whose pod this API, the one that made them (`dirs`: its batches only), reports gone
    (404 or TERMINATED) get pod_terminated=true, in ledgers no driver may be using (no attempt open in them),
    and `twins` (pods just terminated and verified gone) carrying an attempt's name but not its pod id go
    into that attempt's entry with their cost (`record_twin`); never in a ledger a live process holds
    (`live`). So each run's ledger tells the truth about its money. Returns the pod ids newly recorded."""
    done = []
    for led in _ledgers(dirs):
        if led.run_dir in live:
            continue
        changed = False
        pattern = batch_pod_name(led.run_dir)
        for twin in twins:          # gone for sure (just verified), so recorded even while attempts are open
            m = pattern.fullmatch(twin.name)
            att = led.attempt(int(m.group(1)), int(m.group(2))) if m else None
            if att is not None and att.get("pod_id") != twin.id and twin.id not in (att.get("twin_pods") or []):
                record_twin(att, twin.id, pod_cost(client, twin, timing)[0])
                done.append(twin.id)
                changed = True
        for _seed, att in led.all_attempts() if not led.has_open_attempt() else []:
            if not att.get("pod_id") or att.get("pod_terminated") is True:
                continue
            try:
                if not gone(client, att["pod_id"]):     # 404, TERMINATED or unlisted (instances.gone)
                    continue
            except api.ApiError:
                continue
            att["pod_terminated"] = True
            done.append(att["pod_id"])
            changed = True
        if changed:
            led.save()
    return done


def show(pods: list[api.Pod], title: str, note: dict[str, str] | None = None, rehearse: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for col in ("pod", "name", "status", "fake cost/h" if rehearse else "$/h", "created", "owner"):
        t.add_column(col)
    for p in pods:
        t.add_row(p.id, p.name, p.status, f"{p.cost:.2f}", p.created_at or "-", (note or {}).get(p.id, "-"))
    Console().print(t)


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise PgolfError(f"{question} — no terminal to ask: pass --yes to terminate without asking")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _say(msg: str) -> None:
    print(f"pgolf cluster: {msg}", file=sys.stderr, flush=True)


def _terminate(client: api.RunPodClient, pods: list[api.Pod], session: Session) -> tuple[list[str], list[str]]:
    """(verified gone, still there) after terminating `pods`."""
    ids = [p.id for p in pods]
    left = terminate_verified(client, ids, session.timing, say=_say)
    return [i for i in ids if i not in left], left


def gc(runs_dir: Path, yes: bool, rehearse: bool = False, live: Collection[Path] = ()) -> int:
    """`live`: run directories a live process holds (their pods are kept, their ledgers not touched)."""
    rc, seen = 0, False
    for label, session, dirs in sessions(runs_dir, rehearse):
        seen = True
        with session.client(notify=_say, patient=True) as client:     # gc never gives up at the quota cap
            rc = max(rc, _gc_one(client, session, label, runs_dir, dirs, yes, live))
    if rehearse and not seen:
        print(f"pgolf cluster gc: no rehearsal under {runs_dir}")
    return rc


def _gc_one(client: api.RunPodClient, session: Session, label: str, runs_dir: Path, dirs: list[Path], yes: bool,
            live: Collection[Path] = ()) -> int:
    """gc on one API, with the run directories whose pods it made (`dirs`)."""
    pods = list_ours(client)
    # keeping is always safe: a pod an open attempt of ANY ledger names is kept; judging gone is `dirs`' alone
    open_ = {**owners(_run_dirs(runs_dir, "ledger.json")), **live_batch_pods(pods, live)}
    kept = [p for p in pods if p.id in open_]
    orphans = [p for p in pods if p.id not in open_]
    if kept:
        show(kept, f"{label}: kept, owned by a running attempt under {runs_dir}", open_, session.rehearse)
        print("  (if that batch's driver is dead, `pgolf resume RUN_DIR` closes its attempts; gc again after)")
    if not orphans:
        print(f"pgolf cluster gc: {label}: no orphaned pgolf pods ({len(kept)} kept)")
        fixed = reconcile(client, dirs, live)
        if fixed:
            print(f"pgolf cluster gc: {label}: recorded pod_terminated for {len(fixed)} pod(s) already gone: "
                  f"{', '.join(fixed)}")
        return 0
    spend = sum(p.cost for p in orphans)
    money = f"{spend:.2f}/h (rehearsal: fake, no money)" if session.rehearse else f"${spend:.2f}/h"
    show(orphans, f"{label}: orphaned pgolf pods: {len(orphans)}, {money}", {p.id: "none" for p in orphans},
         session.rehearse)
    if not confirm(f"Terminate these {len(orphans)} pod(s)?", yes):
        print("pgolf cluster gc: nothing terminated")
        return 1
    gone, left = _terminate(client, orphans, session)
    recorded = reconcile(client, dirs, live, [p for p in orphans if p.id in gone], session.timing)
    named = {att.get("pod_id") for led in _ledgers(dirs) for _s, att in led.all_attempts()}
    twins = [i for i in recorded if i not in named]
    if twins:
        print(f"pgolf cluster gc: {label}: recorded twin pod(s) of an attempt's name: {', '.join(twins)}")
    print(f"pgolf cluster gc: {label}: terminated {len(gone)} pod(s), verified gone: {', '.join(gone) or '-'}")
    if left:
        print(f"pgolf cluster gc: STILL THERE after {session.timing.gone_timeout_s:.0f} s: {', '.join(left)}; "
              f"check https://www.runpod.io/console/pods", file=sys.stderr)
        return 1
    return 0


def run_verb(backend: "RunPodBackend", action: ClusterAction, runs_dir: Path, yes: bool) -> int:
    """up: stock, price and the balance check of `pgolf run` (pods are made per attempt); status: balance
    and the spec's pods; down: terminate every pod of the spec's batches, running ones included."""
    spec = backend.spec
    # the pods of the spec's batches under runs_dir (run dirs default to NAME-TIMESTAMP, --name may differ)
    prefixes = sorted({batch_prefix(d) for d in _run_dirs(runs_dir, "batch.json") if _batch_name(d) == spec.name}
                      | {f"{NAME_PREFIX}{spec.name}-"})
    if action == "up":
        if backend.rehearse:
            raise PgolfError("pgolf cluster up --rehearse: a rehearsal's fake RunPod lives in its run directory; "
                             "`pgolf run SPEC --rehearse` makes one")
        for note in backend.preflight(len(spec.seeds), "pgolf cluster up"):
            print(note, flush=True)
        print("pgolf cluster up: RunPod pods are created per seed attempt by `pgolf run`; nothing to start")
        return 0
    rc, seen = 0, False
    for label, session, dirs in sessions(runs_dir, backend.rehearse, spec.name):
        seen = True
        with session.client(notify=_say, patient=action == "down") as client:
            pods = [p for p in list_ours(client) if p.name.startswith(tuple(prefixes))]
            if action == "status":
                balance = client.balance()
                spend = sum(p.cost for p in list_ours(client, ""))
                if session.rehearse:
                    print(f"{label}: fake RunPod (no money)")
                elif balance is None:
                    print(f"RunPod balance: unknown (GraphQL gone); spending ${spend:.2f}/h")
                else:
                    print(f"RunPod balance ${balance:.2f}, spending ${spend:.2f}/h")
                show(pods, f"{label}: pods of {spec.name}: {len(pods)}", owners(dirs), session.rehearse)
                continue
            if not pods:
                print(f"pgolf cluster down: {label}: no pods named {' or '.join(p + '*' for p in prefixes)}")
                continue
            show(pods, f"{label}: pods of {spec.name} to terminate", owners(dirs), session.rehearse)
            if not confirm(f"Terminate these {len(pods)} pod(s), running attempts included?", yes):
                rc = 1
                continue
            gone, left = _terminate(client, pods, session)
            print(f"pgolf cluster down: {label}: {len(gone)} terminated" + (f", still there: {left}" if left else ""))
            rc = max(rc, 1 if left else 0)
    if not seen:
        print(f"pgolf cluster {action}: no rehearsal of {spec.name} under {runs_dir}")
    return rc
