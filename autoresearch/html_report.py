"""`autoresearch report --html FILE` and results/<tag>/report.html: the night on one page.

One self-contained file (inline CSS, an inline SVG plot drawn here; no script, no network), so it
opens from a synced folder or a mail attachment: the progress plot with the running best, the
figures of `report` (analysis.summarize, laid out by report.run_sections), the kept chain with
its evidence, and every experiment with its hypothesis, verdict, reason, trials and diff (in a
<details>, opened in place). An A/B tag gets its arms side by side (ab_report.ab_summary).

    write_html_report(Path("results/mar5"))   # the loop, after every row: never raises
"""

import html
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from autoresearch import analysis
from autoresearch.errors import AutoresearchError
from autoresearch.plot import COMPARE_COLORS, metric_label, y_range
from autoresearch.report import Section, compare_section, decided_text, run_sections

PAGE = "report.html"
DIFF_CHARS = 30_000  # per experiment: a diff past this is cut, with a pointer to the full file
TOP = 20


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def write_html_report(results_dir: Path, warn=None) -> Path | None:
    """Rewrite results_dir/report.html from its results.tsv and run.json, atomically (tmp file +
    rename, so a reader never sees half a page). For the loop: a failure is one warning through
    `warn` (stderr by default) and None, never an exception."""
    folder = Path(results_dir)
    try:
        table = analysis.read_results(folder / "results.tsv")
        summary = analysis.summarize(table, analysis.read_run(folder), folder.name)
        return write_html(folder / PAGE, [(table, summary)])
    except Exception as err:  # a report must never cost a row or the night
        message = f"warning: could not write {folder / PAGE}: {err}"
        (warn or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
        return None


def write_html(path: Path, runs: list[tuple[analysis.Table, dict]]) -> Path:
    """The page for one run (or several, one after another) at `path`, atomically."""
    return _write(Path(path), page(runs))


def write_ab_html(path: Path, summary: dict) -> Path:
    return _write(Path(path), ab_page(summary))


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AutoresearchError(f"cannot write {path}: {err.strerror or err}")
    return path


# ---------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; --keep: #1e8449; --discard: #999; --crash: #c0392b; --trial: #2874a6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 12px;
       max-width: 1200px; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.4em; margin: .3em 0; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
.meta { color: #555; font-size: .9em; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: .4em .7em; margin: .5em 0; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: .9em; min-width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
th { background: #f4f6f8; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.pairs th { width: 16em; background: none; font-weight: 600; position: static; }
.keep { color: var(--keep); font-weight: 600; } .discard { color: #666; }
.crash { color: var(--crash); font-weight: 600; } .trial { color: var(--trial); }
details summary { cursor: pointer; color: #2456a6; }
pre.diff { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: .85em; max-width: 100%;
           white-space: pre; margin: .3em 0; }
.hyp { color: #444; font-size: .92em; }
svg { width: 100%; height: auto; display: block; background: #fff; }
@media (max-width: 700px) {
  body { font-size: 14px; padding: 6px; }
  table.pairs th { width: auto; }
  th, td { padding: 3px 5px; }
  svg text { font-size: 26px; }  /* the 1000-unit-wide plot is scaled to a third on a phone */
}
"""


REFRESH_SECONDS = 120  # a page of a running run reloads itself: it is rewritten after every row


def _document(title: str, body: list[str], running: bool = False) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if running else "",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>", f'<p class="meta">written {made} by autoresearch</p>',
        *body, "</body></html>", ""])


def page(runs: list[tuple[analysis.Table, dict]]) -> str:
    """One run's page; several runs (`report --tag a --tag b --html F`) side by side first."""
    body = [section_html(compare_section([s for _, s in runs]))] if len(runs) > 1 else []
    for table, s in runs:
        body += run_body(table, s)
    names = ", ".join(s["tag"] or Path(s["source"]).parent.name for _, s in runs)
    return _document(f"autoresearch: {names}", body, running=any(s["state"] == "running" for _, s in runs))


def run_body(table: analysis.Table, s: dict) -> list[str]:
    sections = run_sections(s, TOP)
    overview, rest = sections[0], sections[1:]
    body = [f'<section id="run-{_e(s["tag"] or "run")}">', section_html(overview, heading="h2")]
    body += ["<h2>Progress</h2>", progress_svg(table.rows, s)]
    if s["kept"]:
        body += kept_html(s)
    for section in rest:
        if section.title.startswith(("Kept experiments", "Top hits")):
            continue  # the kept chain above has their figures, with the audit beside them
        body.append(section_html(section))
    body += experiments_html(table, s)
    if s["torn_line"]:
        body.append(f'<p class="note">results.tsv line {s["torn_line"]} was cut off mid-write (a run killed '
                    "while appending) and is skipped.</p>")
    body.append("</section>")
    return body


def section_html(section: Section, heading: str = "h2") -> str:
    parts = [f"<{heading}>{_e(section.title)}</{heading}>"]
    if section.pairs:
        parts.append('<div class="scroll"><table class="pairs">')
        parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in section.pairs]
        parts.append("</table></div>")
    if section.headers:
        parts.append(_table(section.headers, section.rows))
    if section.note:
        parts.append(f'<p class="note">{_e(section.note)}</p>')
    return "\n".join(parts)


def _table(headers: list[str], rows: list[list[str]], raw: frozenset = frozenset()) -> str:
    """A table of text cells; columns in `raw` hold HTML built here (already escaped)."""
    numeric = [all(_numeric(r[i]) for r in rows if r[i] not in ("", "-")) and i not in raw
               for i in range(len(headers))]
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if i in raw else _e(cell)
            cells.append(f'<td class="num">{text}</td>' if numeric[i] else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def kept_html(s: dict) -> list[str]:
    """The kept chain with its evidence: the mean it was kept on, trials, gain (also in sigma),
    the audit and the held-out number (a declared target: the audit, its value if it printed
    one, and the other metrics the run recorded)."""
    rows = []
    for k in s["kept"]:
        audit = k.get("audit") or "-"
        rows.append([str(k["experiment"]), k["commit"] or "", decided_text(k),
                     "-" if k["delta"] is None else f"{k['delta']:+.6f}",
                     "-" if k.get("margin_sigma") is None else f"{k['margin_sigma']:.1f}",
                     "noise?" if k["within_noise"] else "", audit,
                     _bpb(k.get("audit_val_bpb")), _bpb(k.get("heldout_bpb")), k["description"] or ""])
    headers = ["experiment", "commit", "decided on", "gain", "x sigma", "", "audit", "audited val", "held-out",
               "description"]
    if (s.get("metric") or "val_bpb") != "val_bpb":  # a declared target: its audit command, no held-out split
        headers = headers[:7] + ["audit's value", "other metrics", "description"]
        rows = [row[:7] + [_bpb(k.get("audit_val_bpb")), k.get("metrics") or "-", row[9]]
                for row, k in zip(rows, s["kept"])]
    gain = "this one - previous kept mean" if s.get("higher_is_better") else "previous kept mean - this one"
    return [f"<h2>Kept chain (each kept on the mean of its trials; gain = {gain})</h2>", _table(headers, rows)]


def experiments_html(table: analysis.Table, s: dict) -> list[str]:
    """Every experiment, newest first: verdict, the value it was decided on, its trials, reason,
    hypothesis, cost, and its diff in place."""
    folder = Path(s["source"]).parent
    rows = []
    for exp in reversed(analysis.experiments_of(table.rows)):
        last, first = vars(exp.last), vars(exp.first)
        status = exp.status
        values = exp.values
        if status == "crash" or not values:
            decided = "-"
        else:
            mean = sum(values) / len(values)
            decided = f"{mean:.6f} (mean of {len(values)} trials)" if len(values) > 1 else f"{mean:.6f} (1 trial)"
        trials = ", ".join("crash" if r.status == "crash" else f"{r.val_bpb:.6f}" for r in exp.rows)
        delta = last.get("delta")
        cost = sum(getattr(r, "cost_usd", None) or 0.0 for r in exp.rows)
        tokens = sum((getattr(r, "input_tokens", None) or 0) + (getattr(r, "output_tokens", None) or 0)
                     for r in exp.rows)
        what = f"<b>{_e(first.get('description') or '')}</b>"
        if first.get("hypothesis"):
            what += f'<div class="hyp">{_e(first["hypothesis"])}</div>'
        what += _diff_html(folder, exp.number)
        verdict = status if exp.decided else "pending"
        rows.append([str(exp.number), f'<span class="{_e(status)}">{_e(verdict)}</span>', _e(decided),
                     _e("-" if delta is None else f"{delta:+.6f}"), _e(trials), _e(last.get("reason") or ""),
                     _e(first.get("proposer") or ""), _e(f"${cost:.4f} / {tokens:,}"), what])
    return [f"<h2>Every experiment, newest first ({len(rows)})</h2>",
            _table(["#", "verdict", "decided on", "mean − best", "trials", "reason", "proposer",
                    "cost / tokens", "change"], rows, raw=frozenset(range(9)))]


def _diff_html(folder: Path, number) -> str:
    path = f"{folder}/runs/{int(number):04d}/diff.patch"  # a str, not a Path: 10,000 of these per page
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    if not text.strip():
        return ""
    cut = ""
    if len(text) > DIFF_CHARS:
        text, cut = text[:DIFF_CHARS], f"\n... cut at {DIFF_CHARS:,} characters; the full diff is {path}"
    lines = text.count("\n")
    return (f'<details><summary>diff ({lines} lines)</summary><pre class="diff">{_e(text + cut)}</pre></details>')


# ---------------------------------------------------------------------------
# The progress plot, as SVG
# ---------------------------------------------------------------------------

W, H = 1000, 420
LEFT, RIGHT, TOP_M, BOTTOM = 80, 20, 20, 45


def progress_svg(rows: list[dict], s: dict) -> str:
    """Each decided experiment at the value it was decided on (its mean): discards grey, keeps
    green, the running best as a step line, crashes as red ticks on the bottom edge."""
    experiments = analysis.experiments_of(rows)
    points = [(e.number, e.mean, e.status) for e in experiments
              if e.decided and e.status != "crash" and e.mean is not None]
    crashes = [e.number for e in experiments if e.decided and e.status == "crash"]
    if not points:
        return '<p class="meta">No measured experiment yet.</p>'
    higher = bool(s.get("higher_is_better"))
    label = metric_label(s.get("metric"), higher)
    base = (s["baseline"] or {}).get("val_bpb")
    base = points[0][1] if base is None else base  # (a declared metric may be 0)
    best = (s["best"] or {}).get("val_bpb")
    best = base if best is None else best
    # from the baseline out to the best mean: a discard past the best (within the noise) is drawn
    # where it is, not clamped to the edge
    means = [best, *(v for _, v, _ in points)]
    low, high = y_range(base, max(means) if higher else min(means))
    numbers = [p[0] for p in points] + crashes
    x0, x1 = min(numbers), max(numbers)
    x1 = x1 if x1 > x0 else x0 + 1

    def x(n):
        return LEFT + (n - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def y(v):
        return TOP_M + (high - min(max(v, low), high)) / (high - low) * (H - TOP_M - BOTTOM)

    out = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{_e(s.get("metric") or "val_bpb")} per experiment">',
           f'<rect x="{LEFT}" y="{TOP_M}" width="{W - LEFT - RIGHT}" height="{H - TOP_M - BOTTOM}" '
           'fill="none" stroke="#ccc"/>']
    for i in range(5):  # y grid and labels
        v = low + (high - low) * i / 4
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="12" text-anchor="end">{v:.4f}</text>')
    for i in range(6):
        n = round(x0 + (x1 - x0) * i / 5)
        out.append(f'<text x="{x(n):.1f}" y="{H - BOTTOM + 18}" font-size="12" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" font-size="13" text-anchor="middle">experiment #'
               '</text><text x="14" y="{0}" font-size="13" transform="rotate(-90 14 {0})" text-anchor="middle">'
               '{1}</text>'.format((TOP_M + H - BOTTOM) / 2, _e(label)))
    # many dots as one path of zero-length round-capped segments: small at 10,000 points
    discards = "".join(f"M{x(n):.1f} {y(v):.1f}h0" for n, v, st in points if st != "keep")
    if discards:
        out.append(f'<path d="{discards}" stroke="#b0b0b0" stroke-width="6" stroke-linecap="round"/>')
    steps, level = [], None
    for n, v, st in points:
        if st == "keep" and analysis.better(v, level, higher):
            level = v
            steps.append((n, v))
    if steps:
        d = f"M{x(steps[0][0]):.1f} {y(steps[0][1]):.1f}"
        for n, v in steps[1:]:
            d += f"H{x(n):.1f}V{y(v):.1f}"
        d += f"H{x(x1):.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="#27ae60" stroke-width="2.5" opacity=".8"/>')
    for k in s["kept"]:
        if k["val_bpb"] is not None:
            out.append(f'<circle cx="{x(k["experiment"]):.1f}" cy="{y(k["val_bpb"]):.1f}" r="5" fill="#2ecc71" '
                       f'stroke="#000" stroke-width=".7"><title>{_e(k["experiment"])}: {_e(decided_text(k))} '
                       f'{_e(k["description"] or "")}</title></circle>')
    for n in crashes:
        out.append(f'<line x1="{x(n):.1f}" x2="{x(n):.1f}" y1="{H - BOTTOM - 8}" y2="{H - BOTTOM}" '
                   'stroke="#e74c3c" stroke-width="2"/>')
    above = sum(1 for _, v, _ in points if (v < low if higher else v > high))
    legend = (f"{len(s['kept'])} kept (green), {sum(1 for p in points if p[2] != 'keep')} discarded (grey), "
              f"{len(crashes)} crashed (red ticks)")
    if above:
        legend += (f"; {above} experiment{'s' if above != 1 else ''} worse than the baseline, drawn on the "
                   f"{'bottom' if higher else 'top'} edge")
    out.append("</svg>")
    out.append(f'<p class="meta">{_e(legend)}; the green line is the running best.</p>')
    return "\n".join(out)


# ---------------------------------------------------------------------------
# An A/B: its arms side by side
# ---------------------------------------------------------------------------


def ab_page(summary: dict) -> str:
    from autoresearch.ab_report import ab_sections

    body = [section_html(section) for section in ab_sections(summary)]
    body += ["<h2>Running best per arm</h2>", arms_svg(summary)]
    return _document(f"autoresearch A/B: {summary['tag']}", body)


def arms_svg(summary: dict) -> str:
    base = summary["baseline"]["val_bpb"]
    arms = summary["arms"]
    higher = bool(summary.get("higher_is_better"))
    bests = [base] + [a["running_best"][-1]["val_bpb"] for a in arms if a["running_best"]]
    low, high = y_range(base, max(bests) if higher else min(bests))
    last = max([a["last_experiment"] for a in arms] + [1])

    def x(n):
        return LEFT + n / last * (W - LEFT - RIGHT)

    def y(v):
        return TOP_M + (high - v) / (high - low) * (H - TOP_M - BOTTOM)

    out = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="running best per arm">',
           f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(base):.1f}" y2="{y(base):.1f}" stroke="#888" '
           f'stroke-dasharray="6 4"/><text x="{LEFT + 4}" y="{y(base) - 4:.1f}" font-size="12">shared baseline '
           f"{base:.6f}</text>"]
    for i in range(5):
        v = low + (high - low) * i / 4
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="12" text-anchor="end">{v:.4f}</text>')
    out.append('<text x="14" y="{0}" font-size="13" transform="rotate(-90 14 {0})" text-anchor="middle">{1}</text>'
               .format((TOP_M + H - BOTTOM) / 2, _e(metric_label(summary.get("metric"), higher))))
    for i, arm in enumerate(arms):
        color = COMPARE_COLORS[i % len(COMPARE_COLORS)]
        pts = arm["running_best"]
        d = f"M{x(pts[0]['experiment']):.1f} {y(pts[0]['val_bpb']):.1f}"
        for p in pts[1:]:
            d += f"H{x(p['experiment']):.1f}V{y(p['val_bpb']):.1f}"
        d += f"H{x(max(arm['last_experiment'], pts[-1]['experiment'])):.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2.5"/>'
                   f'<text x="{W - RIGHT - 6}" y="{TOP_M + 16 + 16 * i}" font-size="12" text-anchor="end" '
                   f'fill="{color}">{_e(arm["name"])}: best {pts[-1]["val_bpb"]:.6f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _bpb(value) -> str:
    return "-" if value is None else f"{value:.6f}"


def _numeric(text: str) -> bool:
    return text.lstrip("+-$").replace(".", "", 1).replace(",", "").replace("%", "").isdigit()
