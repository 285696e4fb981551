"""The prompt every proposer sees: protocol, program.md, lab contract, history, train.py, feedback.

`build_messages(ctx)` gives (system, user) for the LLM backends, which reply with SEARCH/REPLACE
blocks (format in autoresearch/edits.py). `build_agent_prompt(ctx)` gives one text for an
external coding agent, which edits train.py in place instead.
"""

from autoresearch.proposers.base import Context

MAX_FIELD = 120  # characters per description / hypothesis cell of the history table
RECENT_ROWS = 40  # rows shown in full; older ones are compressed to one short line each
MAX_OLD_ROWS = 300  # beyond this, the oldest compressed rows are only counted
MAX_FEEDBACK = 6000  # characters of crash feedback (the log tail is at its end)

PROTOCOL = """\
You are an ML researcher running one step of an automated research loop on a small GPT \
training script. Each call, you propose exactly ONE change to train.py, with a hypothesis. The \
harness commits it, trains for a fixed time budget, and keeps the change only if val_bpb \
(validation bits per byte, lower is better) goes down. You never run anything yourself.

Rules:
- Edit only train.py. prepare.py (data, tokenizer, evaluation, constants) is fixed.
- One idea per reply, small and syntactically careful: a crash wastes a whole experiment.
- Read the history table: do not repeat what was already tried, build on what was kept.
- Keep the final `---` summary that train.py prints; the harness parses it."""

REPLY_FORMAT = """\
Reply in exactly this format:

HYPOTHESIS: <one sentence: what you change, what you expect, and why>
DESCRIPTION: <a short label for the results table, under 80 characters>

train.py
```
<<<<<<< SEARCH
<lines copied exactly from the current train.py, with their indentation>
=======
<the lines that replace them>
>>>>>>> REPLACE
```

You may send several SEARCH/REPLACE blocks for one idea. Each SEARCH must match exactly one \
place in train.py: include enough surrounding lines to make it unique, and keep it short. \
Do not send the whole file."""

AGENT_FORMAT = """\
How to answer: edit train.py in the current directory in place (it is the only file you may \
change; do not run training, do not use git). Then write a one-line description of the change \
(under 80 characters) to the file named by the environment variable \
AUTORESEARCH_DESCRIPTION_FILE, and end your final message with two lines:

HYPOTHESIS: <one sentence: what you changed, what you expect, and why>
DESCRIPTION: <the same short label>"""


def build_messages(ctx: Context) -> tuple[str, str]:
    """(system, user) for an LLM that answers with SEARCH/REPLACE blocks."""
    system = PROTOCOL + "\n\n" + REPLY_FORMAT
    parts = _context_sections(ctx)
    parts.append(_section("Current train.py (the file to edit)", f"```python\n{ctx.train_py.rstrip()}\n```"))
    parts.append(_task(ctx) + " Answer in the reply format (HYPOTHESIS, DESCRIPTION, SEARCH/REPLACE blocks).")
    return system, "\n\n".join(parts)


def build_agent_prompt(ctx: Context) -> str:
    """One text for an external coding agent that edits train.py in its working directory."""
    parts = [PROTOCOL]
    parts += _context_sections(ctx)
    parts.append(_task(ctx) + " train.py is in the current directory: read it before editing.")
    parts.append(AGENT_FORMAT)
    return "\n\n".join(parts)


def _context_sections(ctx: Context) -> list[str]:
    parts = [
        _section("Research program (program.md)", ctx.program.strip() or "(empty)"),
        _section("Lab contract (prepare.py, fixed)", ctx.lab_contract.strip() or "(none given)"),
        _section(
            f"History of this run ({len(ctx.history)} experiments; profile {ctx.profile})",
            history_table(ctx.history, ctx.best, ctx.noise),
        ),
    ]
    if ctx.feedback:
        parts.append(_section("The last attempt crashed", _clip_tail(ctx.feedback.strip(), MAX_FEEDBACK)))
    return parts


def _task(ctx: Context) -> str:
    profile = f"The run uses the `{ctx.profile}` profile (edit that branch of any per-profile settings)."
    if ctx.feedback:
        return (
            f"This is experiment {ctx.experiment}, a fix attempt: find the cause of the crash "
            f"above and fix it with a minimal change that keeps the idea. {profile}"
        )
    return f"This is experiment {ctx.experiment}: propose the next single change to train.py. {profile}"


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}"


def _clip_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[... earlier output cut ...]\n" + text[-limit:]


# ---------------------------------------------------------------------------
# History table
# ---------------------------------------------------------------------------


def history_table(rows: list[dict], best: dict | None = None, noise: float | None = None) -> str:
    """A compact table of every experiment so far (one entry each, val_bpb the mean over its
    trials): old ones shortened, recent ones in full. `best` and `noise` are the Ledger's."""
    if not rows:
        return "No experiments yet: the baseline has not run."
    lines = [_summary_line(rows, best, noise)]
    recent = rows[-RECENT_ROWS:]
    old = rows[: len(rows) - len(recent)]
    if old:
        shown = old[-MAX_OLD_ROWS:]
        lines.append("")
        lines.append("Older experiments (experiment status val_bpb: description):")
        if len(old) > len(shown):
            lines.append(f"- ({len(old) - len(shown)} oldest experiments omitted)")
        lines += [
            f"- #{_cell(r.get('experiment'))} {_cell(r.get('status'))} {_bpb(r)}: {_cell(r.get('description'), 60)}"
            for r in shown
        ]
    lines.append("")
    lines.append("| exp | commit | val_bpb | status | description | hypothesis |")
    lines.append("|---|---|---|---|---|---|")
    for r in recent:
        status = _cell(r.get("status"))
        if status == "crash" and r.get("reason"):
            status += f" ({_cell(r.get('reason'), 40)})"
        lines.append(
            f"| {_cell(r.get('experiment'))} | {_cell(r.get('commit'))} | {_bpb(r)} | {status} "
            f"| {_cell(r.get('description'))} | {_cell(r.get('hypothesis'))} |"
        )
    return "\n".join(lines)


def _summary_line(rows: list[dict], best: dict | None, noise: float | None) -> str:
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in ("keep", "discard", "crash")}
    text = f"{counts['keep']} kept, {counts['discard']} discarded, {counts['crash']} crashed."
    baseline = next((r for r in rows if r.get("status") == "keep"), None)
    if baseline is not None and best and best.get("val_bpb") is not None:
        text += (
            f" Baseline val_bpb {_float(baseline.get('val_bpb')):.6f}; best {float(best['val_bpb']):.6f} "
            f"(experiment {_cell(best.get('experiment'))}, commit {_cell(best.get('commit'))})."
        )
    if noise:
        text += (f" Run-to-run noise: sigma {noise:.6f}; a change is kept only when it beats the best by more "
                 f"than the noise (a promising one is trained again to confirm).")
    return text


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _bpb(row: dict) -> str:
    value = _float(row.get("val_bpb"))
    trials = row.get("trials") or 1
    return (f"{value:.6f}" + (f" (mean of {trials})" if trials > 1 else "")) if value else "-"


def _cell(value, limit: int = MAX_FIELD) -> str:
    text = " ".join(str(value if value is not None else "").split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."
