"""`autoresearch report --tag T` for an A/B (results/T/ab.json): the arms side by side.

Per arm: its best (the mean of its trials, in the run's metric: val_bpb for the lab, a declared
target's own), the improvement over the shared baseline with its uncertainty, keeps / discards /
crashes, experiments, cost and GPU time; one plot of each arm's running best. "Better" follows the
direction the shared baseline's run.json records (analysis.higher_is_better): an improvement is
positive when the arm did better, and the leader is the highest best when higher is better.

The uncertainty of a difference of two means is 2 sigma sqrt(1/n_a + 1/n_b), sigma pooled over
every repeated commit of the A/B (the baseline's repeats and every arm's confirms, the baseline
counted once): a gain larger than that is beyond the noise at about 95 %.

    summary = ab_summary(root, "mar5")     # JSON-ready dict, the "ab" object of `report --json`
"""

import json
import math
import sys
from pathlib import Path

from autoresearch import analysis
from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import pooled_noise
from autoresearch.ledger import best_of

MANIFEST = "ab.json"
SCHEMA_VERSION = 1  # of the "ab" object


def is_ab(root: Path, tag: str) -> bool:
    return (Path(root) / "results" / tag / MANIFEST).is_file()


def _experiments(folder: Path):
    path = folder / "results.tsv"
    rows = analysis.read_results(path).rows if path.is_file() else []
    return rows, analysis.experiments_of(rows)


def _metric(folder: Path) -> str:
    """The name of the run's metric: results.tsv's second column (val_bpb for the lab)."""
    path = folder / "results.tsv"
    return analysis.read_results(path).metric if path.is_file() else "val_bpb"


def uncertainty(sigma: float | None, n_a: int, n_b: int) -> float | None:
    """Two standard errors of a difference of two means of n_a and n_b trials."""
    if sigma is None or not n_a or not n_b:
        return None
    return 2 * sigma * math.sqrt(1 / n_a + 1 / n_b)


def ab_summary(root: Path, tag: str) -> dict:
    root = Path(root)
    folder = root / "results" / tag
    manifest = json.loads((folder / MANIFEST).read_text())
    _, base_experiments = _experiments(folder)
    if not base_experiments or not base_experiments[0].decided:
        raise AutoresearchError(f"A/B {tag}: the shared baseline has not finished yet (results/{tag}/)")
    base = base_experiments[0]
    base_run = analysis.read_run(folder)  # its direction is the A/B's: every arm runs the same target
    higher, sign = analysis.higher_is_better(base_run), analysis.gain_sign(base_run)  # gain = sign * (ref - value)
    metric = _metric(folder)
    declared = metric != "val_bpb"
    base_numbers = {base.number}
    arms, groups = [], [base.values]
    for arm in manifest["arms"]:
        arm_folder = root / "results" / arm["tag"]
        rows, experiments = _experiments(arm_folder)
        own = [e for e in experiments if e.number not in base_numbers]
        groups += [e.values for e in own]
        run = analysis.read_run(arm_folder) or {}
        own_rows = [r for e in own for r in e.rows]
        best = best_of(experiments)
        on_baseline = best.experiment is None or best.experiment in base_numbers
        counts = {s: sum(1 for e in own if e.decided and e.status == s) for s in ("keep", "discard", "crash")}
        running, level = [(0, base.mean)], base.mean
        for e in own:
            if e.decided and e.status == "keep" and e.mean is not None and analysis.better(e.mean, level, higher):
                level = e.mean
                running.append((e.number, level))
        cost = sum(r.cost_usd or 0.0 for r in own_rows) + float(run.get("proposal_cost_usd") or 0.0)
        arms.append({
            "name": arm["name"], "tag": arm["tag"], "spec": arm["spec"], "backend": arm["backend"],
            "model": arm.get("model") or "", "state": run.get("state"),
            "experiments": len(own), "trials": len(own_rows), "counts": counts,
            "best": {"experiment": None if on_baseline else best.experiment, "commit": best.commit or base.commit,
                     "val_bpb": base.mean if on_baseline else best.mean,
                     "trials": len(base.values) if on_baseline else len(best.values),
                     "description": "baseline" if on_baseline else next(
                         e.first.description for e in own if e.number == best.experiment)},
            "improvement": 0.0 if on_baseline else round(sign * (base.mean - best.mean), 9),
            "cost_usd": round(cost, 6),
            "input_tokens": sum(r.input_tokens or 0 for r in own_rows),
            "output_tokens": sum(r.output_tokens or 0 for r in own_rows),
            "gpu_seconds": _busy_seconds(own_rows, declared),
            "running_best": [{"experiment": n, "val_bpb": v} for n, v in running],
            "last_experiment": max((e.number for e in own), default=0),
        })
    noise = pooled_noise(groups)
    for arm in arms:
        n_best = arm["best"]["trials"]
        arm["uncertainty"] = None if arm["best"]["experiment"] is None else uncertainty(noise.sigma, n_best, len(base.values))
        arm["beyond_noise"] = arm["uncertainty"] is not None and arm["improvement"] > arm["uncertainty"]
    return {
        "schema_version": SCHEMA_VERSION,
        "tag": tag,
        "metric": metric,  # the values below are in it, under the key val_bpb (as in `report --json`)
        "higher_is_better": higher,
        "baseline": {"tag": tag, "commit": base.commit, "val_bpb": base.mean, "trials": len(base.values),
                     "gpu_seconds": _busy_seconds(base.rows, declared)},
        "noise": {"sigma": noise.sigma, "dof": noise.dof},
        "max_experiments": manifest.get("max_experiments"),
        "arms": arms,
        "verdict": verdict(arms, noise.sigma, higher),
        "plot": None,
    }


def _busy_seconds(rows, declared: bool) -> float:
    """The lab's training seconds; a declared target's command has no training clock of its own,
    so the trial's wall time (its command's run) stands for it."""
    if declared:
        return round(sum(r.wall_seconds or 0.0 for r in rows), 3)
    return round(sum(r.training_seconds or 0.0 for r in rows), 3)


def verdict(arms: list[dict], sigma: float | None, higher: bool = False) -> dict:
    """Which arm has the best best (the lowest, or the highest when higher is better), and whether
    it beats the runner-up beyond the noise."""
    ranked = sorted(arms, key=lambda a: -a["best"]["val_bpb"] if higher else a["best"]["val_bpb"])
    if len(ranked) < 2:
        return {"leader": ranked[0]["name"] if ranked else None, "text": ""}
    first, second = ranked[0], ranked[1]
    gap = round(abs(second["best"]["val_bpb"] - first["best"]["val_bpb"]), 9)
    margin = uncertainty(sigma, first["best"]["trials"], second["best"]["trials"])
    side = "higher" if higher else "lower"
    if gap == 0:
        text = f"{first['name']} and {second['name']} tie at {first['best']['val_bpb']:.6f}."
    elif margin is None:
        text = (f"{first['name']} leads {second['name']} by {gap:.6f} ({side} is better); the noise is unknown "
                "(no repeated trial), so this cannot be called.")
    elif gap > margin:
        text = (f"{first['name']} beats {second['name']} by {gap:.6f} ± {margin:.6f} ({side} is better): "
                "beyond the noise.")
    else:
        text = (f"{first['name']} leads {second['name']} by {gap:.6f} ± {margin:.6f} ({side} is better): "
                "within the noise.")
    return {"leader": first["name"], "runner_up": second["name"], "gap": gap, "margin": margin,
            "beyond_noise": margin is not None and gap > margin, "text": text}


def ab_sections(s: dict):
    from autoresearch.report import Section

    b, n = s["baseline"], s["noise"]
    m, higher = s.get("metric") or "val_bpb", bool(s.get("higher_is_better"))
    head = Section(f"A/B {s['tag']}", pairs=[
        ("metric", f"{m} ({'higher' if higher else 'lower'} is better)"),
        (f"shared baseline {m}", f"{b['val_bpb']:.6f} ({b['trials']} trials, {b['commit']}, run {b['tag']})"),
        ("noise (pooled sigma)", "unknown" if n["sigma"] is None else f"{n['sigma']:.6f} ({n['dof']} dof)"),
        ("experiments per arm", str(s["max_experiments"] or "no limit") + " (the baseline not counted)"),
    ])
    if s["plot"]:
        head.pairs.append(("plot", s["plot"]))
    head.note = s["verdict"]["text"]
    table = Section(f"Arms side by side (improvement = {'best - baseline' if higher else 'baseline - best'}, "
                    "positive is better, ± 2 sigma sqrt(1/n_best + 1/n_baseline))",
                    headers=["", *(a["name"] for a in s["arms"])])

    def improvement(a):
        if a["best"]["experiment"] is None:
            return "none kept"
        ci = "?" if a["uncertainty"] is None else f"{a['uncertainty']:.6f}"
        return f"{a['improvement']:.6f} ± {ci}" + (" *" if a["beyond_noise"] else "")

    figures = [
        ("run", lambda a: f"{a['tag']} ({a['state'] or '-'})"),
        ("proposer", lambda a: a["backend"] + (f" {a['model']}" if a["model"] else "")),
        ("experiments", lambda a: str(a["experiments"])),
        ("kept / discarded / crashed", lambda a: "{keep} / {discard} / {crash}".format(**a["counts"])),
        (f"best {m}", lambda a: f"{a['best']['val_bpb']:.6f} ({a['best']['trials']} trials)"),
        ("best experiment", lambda a: "-" if a["best"]["experiment"] is None
         else f"{a['best']['experiment']}: {a['best']['description']}"),
        ("improvement", improvement),
        ("cost", lambda a: f"${a['cost_usd']:.4f}"),
        ("tokens", lambda a: f"{a['input_tokens'] + a['output_tokens']:,}"),
        ("GPU time (training)" if m == "val_bpb" else "time running the command",
         lambda a: f"{a['gpu_seconds']:.0f} s"),
    ]
    table.rows = [[label, *(fn(a) for a in s["arms"])] for label, fn in figures]
    table.note = "* beyond the noise (improvement larger than its uncertainty)"
    return [head, table]


def run_ab_report(root: Path, tag: str, as_json: bool = False, plot: Path | None = None,
                  no_plot: bool = False, out=None, html: Path | None = None, write_ab_html=None) -> dict:
    from autoresearch.report import render

    out = out or sys.stdout
    summary = ab_summary(root, tag)
    if not no_plot:
        from autoresearch.plot import plot_arms

        path = plot or Path(root) / "results" / tag / "ab.png"
        summary["plot"] = str(plot_arms(summary, path))
    if as_json:
        from autoresearch.report import SCHEMA_VERSION as REPORT_SCHEMA

        out.write(json.dumps({"schema_version": REPORT_SCHEMA, "ab": summary}, indent=2, ensure_ascii=False) + "\n")
    else:
        render(ab_sections(summary), out)
    if html:  # html_report.write_ab_html, passed in: the page is built from this module's sections
        write_ab_html(Path(html), summary)
        (sys.stderr if as_json else out).write(f"wrote the HTML report to {Path(html).resolve()}\n")
    return summary
