"""The report of a run directory or record folder: results.csv, report.json, report.md, plots/*.png.

report.json is the audit JSON (docs/CHALLENGE.md) plus "significance". report.md pastes as a PR body: what was run,
the per-seed table, mean ± std, the significance sentence, the audit's checks, the reproduction command.
`render_summary` gives the same facts as a rich renderable for terminals (pgolf report, the Ray runner).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from results import plots
from results.audit import audit
from results.batch import (aborted_attempts, adaptive_summary, batch_cost, cost_sentence, default_baseline,
                           read_batch, reproduction_command, spec_of, unsuccessful_seeds)
from results.errors import PgolfError
from results.files import atomic_write
from results.load import load
from results.reproduce import compare_with_record
from results.reproduce import sentence as reproduction_sentence
from results.reproduce import verdict_of
from results.secrets import scrub
from results.stats import LN2, as_sample, baseline_sample, sentence, significance
from results.summary import summarize
from results.table import frame, write_csv
from results.types import RunSet

STATUS_MARK = {"pass": "✅", "fail": "❌", "warn": "⚠️", "skip": "–"}


# ---------------------------------------------------------------- building the report

def report_dir(kind: str, folder, out=None) -> Path | None:
    """Where the report files go: OUT when given, else the run directory itself (pgolf owns it); a record
    folder without OUT gets no files (print only): nothing is ever written into the current directory."""
    if out is not None:
        return Path(out)
    return Path(folder) if kind == "run" else None


def build(runset: RunSet, baseline=None, policy: str | None = None, *, reproduce_of=None) -> tuple[dict, dict]:
    """(report dict, extras for rendering). Pure: writes nothing.

    An explicit `baseline` that cannot be read raises PgolfError. A baseline taken from batch.json, or a
    folder with no scored run, gives "significance": null and a one-line "significance_error" instead, so
    that the end-of-batch report of the runner is always written. `reproduce_of` (a record folder) adds
    "reproduction": these runs' per-seed scores against what that record claims (results.reproduce).
    """
    report = dict(audit(runset))
    cost = batch_cost(runset)
    if cost:
        report["cost"] = cost
    adaptive, aborted = adaptive_summary(runset), aborted_attempts(runset)
    if adaptive:
        report["adaptive"] = adaptive
    if aborted:
        report["aborted"] = aborted
    unsuccessful = unsuccessful_seeds(runset)
    if unsuccessful:
        report["unsuccessful"] = unsuccessful
    if reproduce_of is None and runset.kind == "run":
        reproduce_of = spec_of(read_batch(runset)).get("reproduces")   # a batch made by `pgolf reproduce`
    if reproduce_of:
        report["reproduction"] = compare_with_record(reproduce_of, runset)
    explicit = baseline is not None
    if runset.kind == "run":
        spec_ref, spec_policy = default_baseline(runset)
        if baseline is None or str(baseline) == str(spec_ref):   # the runner passes the spec's own ref
            explicit, baseline = False, spec_ref
            policy = policy or spec_policy
    extras: dict = {"base": None, "threshold_bpb": None, "baseline_ref": baseline}
    report["significance"] = None
    if baseline is None:
        return report, extras
    try:
        base = baseline_sample(baseline)
    except PgolfError as e:
        if explicit:
            raise
        report["significance_error"] = f"baseline from batch.json unusable: {e}"
        return report, extras
    try:
        cand = as_sample(runset, "candidate")
    except PgolfError as e:
        report["significance_error"] = f"cannot test significance: {e}"
        return report, extras
    sig = significance(cand, base, policy or "rule")
    unscored = [r.log for r in runset.runs if r.val_bpb is None]
    if unscored:
        sig["notes"].append(f"{len(unscored)} run(s) without a final score left out: {', '.join(unscored)}")
    if adaptive:
        _sequential_p(sig, adaptive, explicit)
    report["significance"] = sig
    extras["base"] = base
    margin_bpb = sig["margin"]
    if sig["metric"] == "val_loss" and cand.bytes_per_token:
        margin_bpb = sig["margin"] / (LN2 * cand.bytes_per_token)
    extras["threshold_bpb"] = sum(base.bpb) / len(base.bpb) - margin_bpb
    return report, extras


def _sequential_p(sig: dict, adaptive: dict, explicit: bool) -> None:
    """An adaptive batch stopped on data, so the fixed-n p of `significance` is not a valid p-value: against
    the spec's own baseline, "p" becomes the one the design allows (results.sequential: stage-wise adjusted
    p, or none after a futility stop) and "passes" means the success boundary was crossed; the fixed-n p
    stays as "p_nominal", for monitoring only. Against another baseline no design applies: a note says so."""
    outcome = adaptive.get("outcome")
    if explicit:
        sig["notes"].append("this batch stopped adaptively against its spec's baseline; against this one the "
                            "p-value is the nominal fixed-n one, not adjusted for the stopping rule")
        return
    sig["p_nominal"] = sig["p"]
    sig["p"] = outcome.get("p_adjusted") if outcome else None
    sig["passes"] = bool(outcome and outcome.get("action") == "stop_success")
    sig["sequential"] = outcome.get("action") if outcome else "unfinished"
    sig["notes"].append("adaptive batch: p is the one its design allows (" +
                        (outcome["p_report"] if outcome else "the batch has not stopped yet") +
                        "); the fixed-n p (p_nominal) does not hold after stopping on the data")


STOPPED = {"stop_futility": "Stopped for futility", "stop_success": "Stopped for success",
           "stop_max": "Ran to its maximum"}


def adaptive_lines(adaptive: dict) -> list[str]:
    """How an adaptive batch stopped and the only p-value it may report, for report.md and the terminal."""
    out = adaptive.get("outcome")
    if not out:
        return [f"Adaptive batch, not stopped yet ({len(adaptive.get('waves') or [])} wave(s) so far): "
                f"no p-value until it stops (`pgolf resume` finishes it). Design: {adaptive.get('rule')}."]
    head = (f"**{STOPPED.get(out['action'], out['action'])}** after wave {out['wave']}: {out['seeds_run']} of up "
            f"to {out['max_seeds']} seeds run, {out['n']} scored. {out['p_report'][0].upper()}{out['p_report'][1:]}.")
    return [head, "", f"Design: {adaptive.get('rule')}."]


def _curve(runset: RunSet, extras: dict):
    """The record's mean train-loss curve for the loss plot: the spec's [abort] curve, else the baseline's."""
    from results.curves import record_curve
    ref = (spec_of(read_batch(runset)).get("abort") or {}).get("curve") if runset.kind == "run" else None
    try:
        return record_curve(ref or extras.get("baseline_ref"))
    except PgolfError:
        return None


def _aborted_runs(runset: RunSet, aborted: dict | None) -> list:
    """(the run in an aborted attempt's log, its "abort" entry) for the loss plot."""
    from results.parse import parse_log
    out = []
    for a in (aborted or {}).get("attempts", []):
        log = Path(runset.dir) / "seeds" / str(a["seed"]) / f"attempt-{a['attempt']}" / "train.log"
        try:
            runs = parse_log(log, str(log.relative_to(runset.dir)))
        except OSError:
            continue
        if runs:
            runs[0].seed = runs[0].seed if runs[0].seed is not None else a["seed"]
            out.append((runs[0], a))
    return out


def write_report(dir, baseline=None, policy: str | None = None, out=None, *, reproduce_of=None) -> dict:
    """Load DIR (run directory or record folder), audit it, test significance, and write results.csv,
    report.md, report.json and plots/ to `report_dir` (OUT; the run directory itself; or, for a record folder
    without OUT, nowhere). Returns the report dict (= `pgolf report --json`).

    PgolfError when there is nothing to report (no scored run) or the input is unusable."""
    runset = load(Path(dir))
    if not [r for r in runset.runs if r.val_bpb is not None]:
        why = (f"{len(runset.runs)} log run(s) without a final val_bpb" if runset.runs else "no training logs")
        raise PgolfError(f"{dir}: nothing to report: {why}; `pgolf audit {dir}` shows what the folder holds")
    report, extras = build(runset, baseline, policy, reproduce_of=reproduce_of)
    out = report_dir(runset.kind, runset.dir, out)
    if out is None:
        return report
    df = frame(runset)
    write_csv(df, out / "results.csv")
    plot_files: list[str] = []
    scored = [r for r in runset.runs if r.val_bpb is not None]
    base = extras["base"]
    for p in (plots.train_loss(runset.runs, out / "plots" / "train_loss.png", baseline=_curve(runset, extras),
                               aborted=_aborted_runs(runset, report.get("aborted"))),
              plots.seeds_vs_baseline([r.val_bpb for r in scored], base.bpb if base else None,
                                      extras["threshold_bpb"], out / "plots" / "seeds_val_bpb.png",
                                      cand_labels=[r.seed for r in scored],
                                      base_label=Path(base.label).name if base else "baseline")):
        if p is not None:
            plot_files.append(p.relative_to(out).as_posix())
    atomic_write(out / "report.json", scrub(json.dumps(report, indent=2, default=str)) + "\n")
    atomic_write(out / "report.md", markdown(report, runset, plot_files))
    return report


# ---------------------------------------------------------------- rendering

def _fmt(v, spec: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _mean_std(summary_d: dict, key: str) -> str:
    m, s = summary_d.get(f"mean_{key}"), summary_d.get(f"std_{key}")
    if m is None:
        return "–"
    return f"{m:.8f} ± {s:.8f}" if s is not None else f"{m:.8f} (one seed, no std)"


def _summary(report: dict) -> dict:
    s = report.get("summary")
    if isinstance(s, dict) and "n" in s:
        return s
    return summarize([])


def markdown(report: dict, runset: RunSet | None = None, plot_files: list[str] = (), *,
             batch: dict | None = None, title: str | None = None, byline: str | None = None) -> str:
    """report.md / a record's README.md: pastes as a PR body."""
    name = Path(report.get("dir", ".")).name
    if batch is None and runset is not None and runset.kind == "run":
        batch = read_batch(runset)
    spec = spec_of(batch)
    s = _summary(report)
    lines = [f"# {title or spec.get('name') or name}", ""] + ([byline, ""] if byline else [])
    if batch and batch.get("rehearsal"):
        lines += ["**Rehearsal**: these seeds ran on pgolf's fake RunPod on one machine (`--rehearse`); "
                  "no pod was rented and no money was spent.", ""]
    what = f"{report.get('kind', 'run')} `{name}`: {s['n']} scored seed(s)"
    if spec.get("script"):
        what += f" of `{Path(str(spec['script'])).name}`"
    if batch and batch.get("git_commit"):
        what += f" (pgolf {batch.get('pgolf_version', '?')}, commit {str(batch['git_commit'])[:12]})"
    lines += [what + ".", "",
              f"**val_bpb {_mean_std(s, 'val_bpb')}** (mean ± sample std over seeds)  ",
              f"val_loss {_mean_std(s, 'val_loss')} nats", "",
              "## Results", "",
              "| seed | val_loss | val_bpb | artifact bytes | steps | train time (ms) | eval time (ms) | metric | log |",
              "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report.get("runs", []):
        lines.append(f"| {_fmt(r.get('seed'))} | {_fmt(r.get('val_loss'), '.8f')} | {_fmt(r.get('val_bpb'), '.8f')} "
                     f"| {_fmt(r.get('artifact_bytes'), ',')} | {_fmt(r.get('steps'))} "
                     f"| {_fmt(r.get('train_time_ms'), ',.0f')} | {_fmt(r.get('eval_time_ms'), ',.0f')} "
                     f"| `{r.get('metric') or 'unparsed'}` | `{r.get('log')}` |")
    lines += ["", "## Significance", ""]
    adaptive = report.get("adaptive")
    if adaptive and not report.get("significance_error") and (report.get("significance") or {}).get("sequential"):
        lines += adaptive_lines(adaptive) + ["", "| wave | seeds | scored | success boundary (p <) | crossed "
                                                 "| conditional power | success chance | action |",
                                                 "|---:|---|---:|---:|---|---:|---:|---|"]
        for w in adaptive["waves"]:
            lines.append(f"| {w['wave']} | {', '.join(map(str, w['seeds'] or []))} | {_fmt(w['scored'])} "
                         f"| {_fmt(w['boundary_p'], '.3g')} | {_yes(w['crossed'])} "
                         f"| {_fmt(w['conditional_power'], '.1%')} | {_fmt(w.get('success_chance'), '.1%')} "
                         f"| {w['action'] or 'running'} |")
        lines += ["", "Conditional power: the chance that the remaining planned seeds cross a success boundary, "
                      "under the estimate at that look; the futility rule compares it with its threshold, and it "
                      "ignores later futility stops. Success chance: the same with later futility stops "
                      "included, the chance that the batch ends in success. Both are estimates under the data "
                      "so far, not guarantees.", ""]
    else:
        lines += [report.get("significance_error") or sentence(report.get("significance")), ""]
    sig = report.get("significance")
    if sig and sig.get("notes"):
        lines += [f"- {n}" for n in sig["notes"]] + [""]
    lines += ["## Compliance", "", f"Audit verdict: **{report.get('verdict', '?')}**", "",
              "| check | status | detail |", "|---|---|---|"]
    for c in report.get("checks", []):
        detail = str(c.get("detail", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{c.get('id')}` | {STATUS_MARK.get(c.get('status'), '')} {c.get('status')} | {detail} |")
    cost = report.get("cost")
    if cost:
        unit = "{:.4f}" if cost.get("rehearsal") else "${:.2f}"
        per = ", ".join(f"seed {k}: " + unit.format(v) for k, v in cost["per_seed_usd"].items())
        lines += ["", "## Cost", "", f"{cost_sentence(cost)} ({per})."]
    if report.get("unsuccessful"):
        lines += ["", "## Seeds that did not succeed", "", "| seed | state | attempts | last error |", "|---:|---|---:|---|"]
        lines += [f"| {u['seed']} | {u['state']} | {u['attempts']} | {str(u['error']).replace('|', '/')} |"
                  for u in report["unsuccessful"]]
    aborted = report.get("aborted")
    if aborted:
        lines += ["", "## Early aborts", "", abort_line(aborted), "",
                  "| seed | attempt | at (s of training) | train loss | record's | margin | saved |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for a in aborted["attempts"]:
            saved = f"${a['saved_usd']:.2f}" if a.get("saved_usd") is not None else f"{a.get('saved_hours', 0):.2f} h"
            lines.append(f"| {a['seed']} | {a['attempt']} | {a['train_time_s']:.0f} ({a['fraction']:.0%}) "
                         f"| {a['loss']:.4f} | {a['record_loss']:.4f} | {a['margin']:g} | {saved} |")
        lines += [f"- {a['seed']}: {a['note']}" for a in aborted["attempts"] if a.get("note")]
    rep = report.get("reproduction")
    if rep:
        lines += ["", "## Reproduction check", "", reproduction_sentence(rep), "",
                  "| seed | claimed val_bpb | reproduced val_bpb | difference |", "|---:|---:|---:|---:|"]
        lines += [f"| {s} | {rep['claimed'][s]:.8f} | {rep['reproduced'][s]:.8f} | {rep['differences'][s]:+.8f} |"
                  for s in rep["claimed"]]
        lines += [f"- {n}" for n in rep.get("notes", [])]
    cmd = reproduction_command(batch) if batch else None
    if cmd:
        lines += ["", "## Reproduction", "", "Every variable the run used (secrets masked, data by variant name):",
                  "", "```bash", cmd, "```"]
    if plot_files:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plot_files]
    return scrub("\n".join(lines) + "\n")


def _yes(v) -> str:
    return "–" if v is None else "yes" if v else "no"


def abort_line(aborted: dict) -> str:
    n = len(aborted["attempts"])
    saved = (f"about ${aborted['saved_usd']:.2f}" if aborted.get("saved_usd") is not None
             else f"about {aborted['saved_hours']:.2f} machine-hours")
    return (f"{n} attempt(s) aborted early (train loss above the record's curve by more than the margin); not "
            f"retried, not counted in the statistics; saved {saved} (estimate: the unused part of each "
            f"attempt's expected time × the pod's price when known).")


def render_summary(report: dict) -> Group:
    """A rich renderable: per-seed table, mean ± std, significance sentence, failing/warning checks."""
    s = _summary(report)
    t = Table(title=f"{Path(report.get('dir', '.')).name} — {s['n']} scored seed(s)", show_lines=False)
    for col, width in (("seed", 4), ("val_loss", 10), ("val_bpb", 10), ("artifact B", 10), ("steps", 5),
                       ("train s", 7), ("eval s", 6)):
        t.add_column(col, justify="right", min_width=width, no_wrap=True)

    def secs(ms):
        return _fmt(None if ms is None else ms / 1000, ".1f")
    for r in report.get("runs", []):
        t.add_row(_fmt(r.get("seed")), _fmt(r.get("val_loss"), ".8f"), _fmt(r.get("val_bpb"), ".8f"),
                  _fmt(r.get("artifact_bytes"), ","), _fmt(r.get("steps")), secs(r.get("train_time_ms")),
                  secs(r.get("eval_time_ms")))
    metrics: dict[str, int] = {}
    for r in report.get("runs", []):
        metrics[r.get("metric") or "unparsed"] = metrics.get(r.get("metric") or "unparsed", 0) + 1
    parts = [t, Text("scored from: " + ", ".join(f"{m} ({k})" for m, k in metrics.items()), style="dim"),
             Text(f"val_bpb {_mean_std(s, 'val_bpb')}   val_loss {_mean_std(s, 'val_loss')}")]
    if report.get("cost"):
        parts.append(Text(f"cost: {cost_sentence(report['cost'])}"))
    sig = report.get("significance")
    style = "bold green" if sig and sig.get("passes") else "bold yellow" if sig else "dim"
    if report.get("adaptive") and sig and sig.get("sequential") and not report.get("significance_error"):
        parts.append(Text(" ".join(adaptive_lines(report["adaptive"])).replace("**", ""), style=style))
    else:
        parts.append(Text(report.get("significance_error") or sentence(sig), style=style))
    if report.get("aborted"):
        parts.append(Text(abort_line(report["aborted"]), style="yellow"))
    for u in report.get("unsuccessful") or []:
        parts.append(Text(f"seed {u['seed']} {u['state']} after {u['attempts']} attempt(s): {u['error']}", style="red"))
    for n in (sig or {}).get("notes", []):
        parts.append(Text(f"  note: {n}", style="dim"))
    if report.get("reproduction"):
        rep = report["reproduction"]
        style = {"consistent": "bold green", "inconclusive": "bold yellow"}.get(verdict_of(rep), "bold red")
        parts.append(Text(reproduction_sentence(rep), style=style))
    bad = [c for c in report.get("checks", []) if c.get("status") in ("fail", "warn")]
    verdict = report.get("verdict", "?")
    parts.append(Text(f"audit: {verdict}", style="bold green" if verdict == "pass" else "bold red"))
    for c in bad:
        parts.append(Text(f"  {c['status']:4} {c['id']}: {c.get('detail', '')}",
                          style="red" if c["status"] == "fail" else "yellow"))
    return Group(*parts)

