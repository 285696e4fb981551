"""`autoresearch report` and `autoresearch status`: what happened overnight, as terminal tables
(rich on a TTY, plain text otherwise), JSON, Markdown and a progress plot.

The figures come from autoresearch/analysis.py, the plot from autoresearch/plot.py; this module
only lays them out. The JSON schema (`schema_version`, SCHEMA_VERSION) is documented in docs/report.md.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import analysis
from autoresearch.errors import AutoresearchError

SCHEMA_VERSION = 3  # 2: experiments, not rows; best is a mean; trials, noise. 3: the baseline is no kept change
PLAIN_DESCRIPTION = 72  # characters of a description in plain-text tables


@dataclass
class Section:
    """A titled block: key/value pairs (`pairs`) or a table (`headers` + `rows`), both strings."""

    title: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


# ---------------------------------------------------------------------------
# Entry points (called by cli.py)
# ---------------------------------------------------------------------------


def run_report(tags: list[str] | None = None, results: list[Path] | None = None,
               root: Path | None = None, as_json: bool = False, markdown: Path | None = None,
               plot: Path | None = None, no_plot: bool = False, top: int = 20,
               noise: float = analysis.NOISE_BPB, out=None, html: Path | None = None,
               write_html=None) -> None:
    """Report one run, or compare several side by side. Malformed rows are skipped and, after
    the report is written, raised as one AutoresearchError naming their line numbers."""
    out = out or sys.stdout
    runs = load_runs(tags or [], results or [], root, noise)
    compare_plot = None
    if not no_plot:
        from autoresearch import plot as plotting

        for table, summary in runs:
            path = plot if plot and len(runs) == 1 else Path(summary["source"]).parent / "progress.png"
            summary["plot"] = str(plotting.plot_progress(table.rows, summary, path))
        if len(runs) > 1:
            path = plot or _compare_path(runs)
            compare_plot = str(plotting.plot_compare([(t.rows, s) for t, s in runs], path))
    summaries = [s for _, s in runs]
    payload = {"schema_version": SCHEMA_VERSION, "runs": summaries}
    if len(runs) > 1:
        payload["compare_plot"] = compare_plot
    if markdown:
        write_markdown(Path(markdown), summaries, compare_plot, top)
    if html:  # html_report.write_html, passed in: the page is built from this module's sections
        write_html(Path(html), runs)
    if as_json:
        out.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        render(report_sections(summaries, top), out)
        for summary in summaries:
            if summary["torn_line"]:
                out.write(torn_note(summary["source"], summary["torn_line"]) + "\n")
    notes = sys.stderr if as_json else out
    for label, path in (("Markdown report", markdown), ("HTML report", html)):
        if path:
            notes.write(f"wrote the {label} to {Path(path).resolve()}\n")
    malformed = [(s["source"], m) for s in summaries for m in s["malformed"]]
    if malformed:
        where = "; ".join(f"{Path(src).name} line {m['line']}: {m['problem']}" for src, m in malformed[:5])
        more = f"; and {len(malformed) - 5} more" if len(malformed) > 5 else ""
        raise AutoresearchError(f"{len(malformed)} malformed row(s) skipped ({where}{more})")


def run_status(root: Path | None = None, as_json: bool = False, out=None) -> None:
    """Every run under results/: state, experiments, best val_bpb, last activity."""
    out = out or sys.stdout
    root = Path(root) if root else analysis.find_root(Path.cwd())
    lines = [analysis.status_line(folder) for folder in analysis.run_folders(root)]
    if as_json:
        out.write(json.dumps({"schema_version": SCHEMA_VERSION, "runs": lines}, indent=2,
                             ensure_ascii=False) + "\n")
        return
    metrics = {line.get("metric") or "val_bpb" for line in lines}
    lab = metrics <= {"val_bpb"}  # a declared target's runs: each best carries its metric's name
    section = Section(f"Runs under {root / 'results'}", headers=[
        "tag", "state", "experiments", "kept changes", "best val_bpb" if lab else "best", "last activity", "proposer"])
    for line in lines:
        proposer = " ".join(p for p in (line["proposer"], line["model"]) if p)
        best = _bpb(line["best_val_bpb"])
        if not lab and line["best_val_bpb"] is not None:
            best += f" {line.get('metric') or 'val_bpb'}" + (" (max)" if line.get("higher_is_better") else "")
        section.rows.append([line["tag"], line["state"], str(line["experiments"]), str(line["kept"]),
                             best, _ago(line["last_activity"]), proposer or "-"])
    if not lines:
        section.note = "No runs yet; start one with `autoresearch run`."
    render([section], out)
    for line in lines:
        if line["torn_line"]:
            out.write(torn_note(str(root / "results" / line["tag"] / "results.tsv"), line["torn_line"]) + "\n")


def torn_note(source: str, line: int) -> str:
    return (f"note: {source} line {line} was cut off mid-write (a run killed while appending); "
            "skipped, and the next append of that run removes it")


def load_runs(tags: list[str], results: list[Path], root: Path | None,
              noise: float) -> list[tuple[analysis.Table, dict]]:
    """(table, summary) for every requested run; with nothing requested, the most recent run."""
    runs = []
    for path in results:
        path = Path(path)
        run = analysis.read_run(path.parent)
        table = analysis.read_results(path)
        runs.append((table, analysis.summarize(table, run, tag=run.get("tag") if run else None, noise=noise)))
    if tags or not results:
        root = Path(root) if root else analysis.find_root(Path.cwd())
        for tag in tags or [None]:
            folder = analysis.tag_folder(root, tag)
            if (folder / "results.tsv").is_file():
                table = analysis.read_results(folder / "results.tsv")
            else:  # a run whose baseline is still training: run.json only
                table = analysis.Table(folder / "results.tsv", list(analysis.UPSTREAM_COLUMNS))
            runs.append((table, analysis.summarize(table, analysis.read_run(folder), folder.name, noise)))
    return runs


def _compare_path(runs) -> Path:
    first = Path(runs[0][1]["source"]).parent
    if all(s["tag"] for _, s in runs):
        return first.parent / ("compare-" + "-vs-".join(s["tag"] for _, s in runs) + ".png")
    return first / "compare.png"


# ---------------------------------------------------------------------------
# Sections: the report as plain strings, shared by the terminal and Markdown renderers
# ---------------------------------------------------------------------------


def report_sections(summaries: list[dict], top: int) -> list[Section]:
    sections = [compare_section(summaries)] if len(summaries) > 1 else []
    for summary in summaries:
        sections += run_sections(summary, top)
    return sections


def run_sections(s: dict, top: int) -> list[Section]:
    name = s["tag"] or s["source"]
    overview = Section(f"Run {name}" + (f" ({s['state']})" if s["state"] else ""))
    m = s.get("metric") or "val_bpb"  # a declared target's metric; gains are signed: positive is better
    better = "higher is better" if s.get("higher_is_better") else "lower is better"
    overview.pairs = [
        ("source", s["source"]),
        ("state", _state(s)),
        ("experiments", experiments_text(s)),
        ("keep rate", keep_rate_text(s)),
        ("metric", f"{m} ({better})"),
        (f"baseline {m}", _bpb((s["baseline"] or {}).get("val_bpb"))),
        (f"best {m}", _bpb((s["best"] or {}).get("val_bpb"))
         + (f"  (experiment {s['best']['experiment']}, {s['best']['commit']})" if s["best"] else "")),
        ("improvement", "-" if s["improvement"] is None
         else f"{s['improvement']:.6f} ({s['improvement_pct']:.2f}%)"),
        ("best experiment", (s["best"] or {}).get("description") or "-"),
        ("kept improvements", f"{s['improvements']}" + (
            f"  ({s['within_noise']} within noise, < {s['noise_threshold']:.0e})" if s["within_noise"] else "")),
    ]
    n = s["noise"]
    declared = s.get("metric", "val_bpb") != "val_bpb"  # a declared target: its command runs, nothing "trains"
    if n["sigma"] is not None or n["extra_trials"]:
        overview.pairs += [
            ("noise (pooled sigma)", "-" if n["sigma"] is None else f"{n['sigma']:.6f} ({n['dof']} dof)"),
            ("repeats and confirms", f"{n['extra_trials']} trials, " + (
                f"{n['extra_training_seconds']:.1f} s running the command ({100 * n['extra_share']:.1f}% of all its "
                "running time)" if declared else f"{n['extra_training_seconds']:.0f} s of training "
                f"({100 * n['extra_share']:.1f}% of all training)")),
        ]
    if n.get("confirms", {}).get("confirm_trials"):
        overview.pairs.append(("keep rule's extra trials", extra_trials_line(n["confirms"])))
    t, u = s["timing"], s["usage"]
    if t["elapsed_hours"] is not None or t["mean_wall_seconds"] is not None:
        overview.pairs += [
            ("elapsed", "-" if t["elapsed_hours"] is None else duration(t["elapsed_hours"] * 3600)),
            ("experiments per hour", _num(t["experiments_per_hour"], "{:.1f}")),
            ("mean wall per experiment", _num(t["mean_wall_seconds"], "{:.1f} s")),
        ]
    if t.get("gpu_training_share") is not None:
        overview.pairs.append(busy_pair(t, declared))
    if u["cost_usd"] is not None or u["input_tokens"] is not None:
        tokens = (u["input_tokens"] or 0) + (u["output_tokens"] or 0)
        overview.pairs += [
            ("tokens", f"{tokens:,} ({u['input_tokens'] or 0:,} in, {u['output_tokens'] or 0:,} out)"),
            ("cost", _num(u["cost_usd"], "${:.4f}")),
            ("cost per kept improvement", _num(u["cost_per_improvement_usd"], "${:.4f}")),
            ("tokens per kept improvement", _num(u["tokens_per_improvement"], "{:,.0f}")),
        ]
    run = s["run"] or {}
    if run.get("failed_proposals") or run.get("proposal_cost_usd"):
        overview.pairs.append(("failed proposals (run.json)", f"{run.get('failed_proposals') or 0}, "
                                                              f"proposal cost ${run.get('proposal_cost_usd') or 0:.4f}"))
    if s["plot"]:
        overview.pairs.append(("plot", s["plot"]))
    overview.note = _verdict(s)
    sections = [overview]
    if (s.get("speculation") or {}).get("prepared"):
        sections.append(speculation_section(s["speculation"]))

    if s["kept"]:
        kept = Section(f"Kept experiments, in order ({m} = mean ± half-range of its trials; "
                       f"gain = the improvement over the previous kept mean ({better}), also in units of sigma)",
                       headers=["experiment", "commit", m, "trials", "gain", "x sigma", "", "description"])
        others = any(k.get("metrics") for k in s["kept"])  # a declared target's secondary metrics
        if others:
            kept.headers.insert(-1, "other metrics")
        for k in s["kept"]:
            spread = f" ± {k['spread']:.6f}" if k.get("spread") is not None else ""
            kept.rows.append([str(k["experiment"]), k["commit"] or "", _bpb(k["val_bpb"]) + spread,
                              str(k.get("trials") or 1), _gain(k["delta"]),
                              "-" if k.get("margin_sigma") is None else f"{k['margin_sigma']:.1f}",
                              "noise?" if k["within_noise"] else "", *([k.get("metrics") or "-"] if others else []),
                              k["description"] or ""])
        sections.append(kept)
    h = s.get("heldout") or {}
    if h.get("steps"):
        decided = {k["experiment"]: k for k in s["kept"]}
        table = Section("Validation and held-out along the kept chain (audited: one trial's model re-evaluated; "
                        "the proposer never sees held-out)",
                        headers=["experiment", "commit", "decided on", "audited val", "held-out", "val gain",
                                 "held-out gain", ""],
                        note=("held-out diverges from val: a kept change fitted the validation set (held-out "
                              "gained less than val by more than half the gain and "
                              f"{h['threshold']:.0e}); see the flagged rows") if h["diverges"] else "")
        for step in h["steps"]:
            table.rows.append([str(step["experiment"]), step["commit"] or "",
                               decided_text(decided.get(step["experiment"])), _bpb(step["val_bpb"]),
                               _bpb(step["heldout_bpb"]), _gain(step["val_gain"]), _gain(step["heldout_gain"]),
                               "overfit val?" if step["diverges"] else ""])
        sections.append(table)
    if s["top_hits"]:
        hits = Section(f"Top hits by gain (top {min(top, len(s['top_hits']))} of {len(s['top_hits'])})",
                       headers=["rank", "gain", f"{m} (mean)", "trials", "experiment", "description"])
        for rank, k in enumerate(s["top_hits"][:top], start=1):
            hits.rows.append([str(rank), _gain(k["delta"]), _bpb(k["val_bpb"]), str(k.get("trials") or 1),
                              str(k["experiment"]), k["description"] or ""])
        hits.rows.append(["", _gain(sum(k["delta"] for k in s["top_hits"])), "", "", "", "total over baseline"])
        sections.append(hits)
    if s["crash_reasons"]:
        sections.append(Section("Crash reasons", headers=["count", "reason"],
                                rows=[[str(c["count"]), c["reason"]] for c in s["crash_reasons"]]))
    if s["by_proposer"]:
        table = Section("By proposer", headers=[
            "proposer", "model", "experiments", "keep", "discard", "crash", "keep rate", "gain", "cost"])
        for g in s["by_proposer"]:
            table.rows.append([g["proposer"] or "-", g["model"] or "-", str(g["experiments"]), str(g["keep"]),
                               str(g["discard"]), str(g["crash"]), _pct(g["keep_rate"]),
                               f"{g['improvement']:.6f}", f"${g['cost_usd']:.4f}"])
        sections.append(table)
    if s["malformed"]:
        sections.append(Section("Malformed rows (skipped)", headers=["line", "problem"],
                                rows=[[str(m["line"]), m["problem"]] for m in s["malformed"]]))
    return sections


def compare_section(summaries: list[dict]) -> Section:
    """Runs side by side: one column per run, one line per figure."""
    names = [s["tag"] or Path(s["source"]).name for s in summaries]
    section = Section("Comparison", headers=["", *names])
    metrics = {(s.get("metric") or "val_bpb") for s in summaries}
    # one metric: named in the labels; runs of different metrics: each value carries its own name
    m = metrics.pop() if len(metrics) == 1 else ""
    lab = m == "val_bpb" and not any(s.get("higher_is_better") for s in summaries)

    def value(v, s):
        return _bpb(v) + (f" {s.get('metric') or 'val_bpb'}" if v is not None and not m else "")

    figures = [] if lab else [("metric", lambda s: f"{s.get('metric') or 'val_bpb'} "
                                                  f"({'higher' if s.get('higher_is_better') else 'lower'} is better)")]
    figures += [
        ("state", lambda s: s["state"] or "-"),
        ("proposer", lambda s: ", ".join(sorted({g["proposer"] + (f"/{g['model']}" if g["model"] else "")
                                                 for g in s["by_proposer"] if g["proposer"] != "baseline"})) or "-"),
        ("experiments", lambda s: str(s["experiments"])),
        ("changes kept / discarded / crashed", lambda s: "{keep} / {discard} / {crash}".format(**s["change_counts"])),
        ("keep rate", lambda s: _pct(s["keep_rate"])),
        (f"baseline {m}".strip(), lambda s: value((s["baseline"] or {}).get("val_bpb"), s)),
        (f"best {m}".strip(), lambda s: value((s["best"] or {}).get("val_bpb"), s)),
        ("improvement", lambda s: "-" if s["improvement"] is None
         else f"{s['improvement']:.6f} ({s['improvement_pct']:.2f}%)"),
        ("kept improvements (within noise)", lambda s: f"{s['improvements']} ({s['within_noise']})"),
        ("experiments per hour", lambda s: _num(s["timing"]["experiments_per_hour"], "{:.1f}")),
        ("cost", lambda s: _num(s["usage"]["cost_usd"], "${:.4f}")),
        ("cost per kept improvement", lambda s: _num(s["usage"]["cost_per_improvement_usd"], "${:.4f}")),
    ]
    section.rows = [[label, *(fn(s) for s in summaries)] for label, fn in figures]
    return section


def extra_trials_line(e: dict) -> str:
    changed = ", ".join(f"#{c['experiment']} {c['first_trial_alone']}->{c['final']}" for c in e["changed"][:5])
    return (f"{e['confirm_trials']} confirms of {e['confirmed_experiments']} candidates, {e['confirm_seconds']:.0f} s; "
            f"changed {len(e['changed'])} decisions of the first trial alone" + (f" ({changed})" if changed else ""))


def experiments_text(s: dict) -> str:
    """`4 (the baseline and 3 changes: 1 kept, 2 discarded, 0 crashed; 6 trials)`."""
    c, n = s["change_counts"], s["changes"]
    base = s["experiments"] - n
    head = (f"the baseline and {n} change{'s' if n != 1 else ''}" if base == 1
            else f"{base} baselines and {n} changes" if base else f"{n} changes")
    return (f"{s['experiments']}  ({head}: {c['keep']} kept, {c['discard']} discarded, {c['crash']} crashed; "
            f"{s['trials']} trials)")


def keep_rate_text(s: dict) -> str:
    c = s["change_counts"]
    return f"{c['keep']}/{c['keep'] + c['discard']} changes = {_pct(s['keep_rate'])}  (the baseline not counted)"


def decided_text(k: dict | None) -> str:
    """The value a verdict was decided on: `2.709930 ± 0.084710 (mean of 2 trials)` or
    `0.991234 (1 trial)`."""
    if not k or k.get("val_bpb") is None:
        return "-"
    trials = k.get("trials") or 1
    if trials > 1 and k.get("spread") is not None:
        return f"{k['val_bpb']:.6f} ± {k['spread']:.6f} (mean of {trials} trials)"
    return f"{k['val_bpb']:.6f} ({trials} trial{'s' if trials > 1 else ''})"


def busy_pair(t: dict, declared: bool = False) -> tuple[str, str]:
    """The training share of the run: "the GPU" only when a GPU trained, with the real span (a
    declared target: the share of time its command was running)."""
    share, idle = 100 * t["gpu_training_share"], t["gpu_idle_seconds"]
    span = f" of {duration(t['elapsed_hours'] * 3600)}" if t.get("elapsed_hours") else ""
    if t.get("workers", 1) > 1 and t.get("busy_seconds") is not None:  # busy + idle add up over the workers
        span = f" of {t['workers']} workers' time ({duration(t['busy_seconds'])} busy"
        idle_text = f", {duration(idle)} idle, start-up included)"
    else:
        if declared and t.get("busy_seconds") is not None:  # short runs: the timestamps' seconds would not add up
            span = f" of {duration(t['busy_seconds'] + idle)}"
        idle_text = f" ({duration(idle)} idle between {'runs' if declared else 'trainings'})"
    if declared:
        return "command busy", f"the command ran {share:.1f}%{span}{idle_text}"
    gpu = (t.get("device") or "").startswith("cuda")
    who = "the GPU trained" if gpu else f"training ran ({t.get('device') or 'device unknown'})"
    return "GPU busy" if gpu else "training busy", f"{who} {share:.1f}%{span}{idle_text}"


def duration(seconds: float) -> str:
    """`0.4 s`, `5 min 12 s`, `7.9 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest} s" if minutes else f"{rest} s"
    return f"{seconds / 3600:.1f} h"


def speculation_section(p: dict) -> Section:
    """Ideas asked for while the previous experiment trained, and what became of them."""
    section = Section("Speculation (ideas prepared while the previous experiment trained)")
    section.pairs = [
        ("prepared", f"{p['prepared']} of {p['prepared'] + p['fresh']} changes ({p['fresh']} asked only after "
                     "the previous training)"),
        ("used as asked", str(p["used"])),
        ("rebased onto a newer best", str(p["rebased"])),
        ("thrown away", f"{p['discarded']} (overlapped a newer best; asked again), "
                        f"cost ${p['discarded_cost_usd']:.4f}"),
        ("failed", f"{p['failed']} (the proposer failed; asked again)"),
        ("proposals that trained nothing", f"${p['proposal_cost_usd']:.4f} (run.json: thrown-away and failed asks)"),
    ]
    return section


def _verdict(s: dict) -> str:
    if s["experiments"] == 0:
        return "No experiments yet: nothing kept yet."
    if s["baseline"] is None:
        return f"All {s['experiments']} experiments crashed: nothing kept yet."
    if not s["improvements"]:
        return "Nothing kept yet beyond the baseline."
    if s["within_noise"] == s["improvements"]:
        if (s.get("metric") or "val_bpb") != "val_bpb":  # a declared target's threshold is its min_delta
            return (f"Every kept gain is below min_delta {s['noise_threshold']:g} {s['metric']}: "
                    "re-run the best commit before trusting it.")
        return (f"Every kept gain is below {s['noise_threshold']:.0e}, within CUDA run-to-run noise: "
                "re-run the best commit before trusting it.")
    return ""


def _state(s: dict) -> str:
    run = s["run"]
    if not run:
        return "-"
    if s["state"] == "running":
        return f"running (pid {run.get('pid')}, updated {run.get('updated_at') or '?'}): figures are partial"
    if s["state"] == "stopped" and run.get("recorded_state") == "running":
        return "stopped (run.json says running but its process is gone)"
    return s["state"] or "-"


def _bpb(value) -> str:
    return "-" if value is None else f"{value:.6f}"


def _gain(value) -> str:
    return "-" if value is None else f"{value:+.6f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _ago(stamp: str | None) -> str:
    moment = analysis.parse_time(stamp)
    if moment is None:
        return "-"
    minutes = max(0, (time.time() - moment.timestamp()) / 60)
    ago = f"{minutes:.0f} min ago" if minutes < 120 else f"{minutes / 60:.1f} h ago"
    return f"{stamp} ({ago})"


# ---------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------


def render(sections: list[Section], out) -> None:
    """Rich tables on a terminal, aligned plain text otherwise (pipes, files, CI logs)."""
    if getattr(out, "isatty", lambda: False)():
        render_rich(sections, out)
    else:
        out.write(render_plain(sections))


def render_plain(sections: list[Section]) -> str:
    lines = []
    for section in sections:
        lines += [section.title, "-" * min(len(section.title), 100)]
        if section.pairs:
            width = max(len(k) for k, _ in section.pairs)
            lines += [f"{k + ':':<{width + 1}}  {v}" for k, v in section.pairs]
        if section.headers:
            rows = [section.headers] + [[_clip(c, PLAIN_DESCRIPTION) for c in r] for r in section.rows]
            columns = list(zip(*rows))
            widths = [max(len(c) for c in column) for column in columns]
            right = [all(_numeric(c) or c in ("", "-") for c in column[1:]) for column in columns]
            for row in rows:
                cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
                lines.append("  ".join(cells).rstrip())
        if section.note:
            lines.append(section.note)
        lines.append("")
    return "\n".join(lines)


def render_rich(sections: list[Section], out) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    for section in sections:
        if section.pairs:
            grid = Table(title=section.title, title_justify="left", show_header=False, box=None)
            grid.add_column(style="bold")
            grid.add_column(overflow="fold")
            for key, value in section.pairs:
                grid.add_row(key, value)
            console.print(grid)
        if section.headers:
            table = Table(title=section.title if not section.pairs else None, title_justify="left")
            for i, header in enumerate(section.headers):
                cells = [row[i] for row in section.rows]
                right = all(_numeric(c) or c in ("", "-") for c in cells)
                table.add_column(header, overflow="ellipsis", no_wrap=True, justify="right" if right else "left",
                                 max_width=80 if i == len(section.headers) - 1 else None)
            for row in section.rows:
                table.add_row(*row, style="yellow" if "noise?" in row else None)
            console.print(table)
        if section.note:
            console.print(f"[bold]{section.note}[/bold]", markup=True, highlight=False)
        console.print()


def write_markdown(path: Path, summaries: list[dict], compare_plot: str | None, top: int) -> None:
    """A shareable report: the same sections as Markdown, plots embedded by relative path."""
    parts = ["# autoresearch report", ""]
    if compare_plot:
        parts += [f"![comparison]({_relative(compare_plot, path)})", ""]
    if len(summaries) > 1:
        parts += _markdown_section(compare_section(summaries))
    for summary in summaries:
        sections = run_sections(summary, top)
        parts += _markdown_section(sections[0])
        if summary["plot"]:
            parts += [f"![progress]({_relative(summary['plot'], path)})", ""]
        for section in sections[1:]:
            parts += _markdown_section(section)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts), encoding="utf-8")
    except OSError as err:
        raise AutoresearchError(f"cannot write {path}: {err.strerror or err}")


def _markdown_section(section: Section) -> list[str]:
    lines = [f"## {_md(section.title)}", ""]
    if section.pairs:
        lines += ["| | |", "|---|---|"] + [f"| {_md(k)} | {_md(v)} |" for k, v in section.pairs] + [""]
    if section.headers:
        lines.append("| " + " | ".join(_md(h) for h in section.headers) + " |")
        columns = list(zip(*section.rows)) or [()] * len(section.headers)  # numbers right, as in the plain text
        right = [any(_numeric(c.split(" ")[0]) for c in column) and all(
            _numeric(c.split(" ")[0]) or c in ("", "-") for c in column) for column in columns]
        lines.append("|" + "|".join("---:" if r or h in ("gain", "val_bpb") else "---"
                                    for h, r in zip(section.headers, right)) + "|")
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in section.rows] + [""]
    if section.note:
        lines += [f"**{_md(section.note)}**", ""]
    return lines


def _md(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _relative(target: str, markdown: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), markdown.resolve().parent)).as_posix()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _numeric(text: str) -> bool:
    return text.lstrip("+-$").replace(".", "", 1).replace(",", "").replace("%", "").isdigit()
