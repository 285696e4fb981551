"""The prompt every proposer sees: protocol, program.md, lab contract, history, train.py, feedback.

`build_messages(ctx)` gives (system, user) for the LLM backends, which reply with SEARCH/REPLACE
blocks (format in autoresearch/edits.py). `build_agent_prompt(ctx)` gives one text for an
external coding agent, which edits train.py in place instead.

For a declared target (ctx.target.lab False) the same sections name the target instead: its
edit files (each shown whole), its context files, the metric and direction, the budget and what
counts as a crash; the history table is in the metric's name.
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


TARGET_PROTOCOL = """\
You are a researcher running one step of an automated research loop on a program. Each call, \
you propose exactly ONE change to the files you may edit, with a hypothesis. The harness \
commits it, runs the experiment command, reads the metric from its output, and keeps the change \
only if the metric improves. You never run anything yourself.

Rules:
- Edit only the files listed as editable. Every other file is fixed, and so is the benchmark.
- One idea per reply, small and careful: a crash wastes a whole experiment.
- Read the history table: do not repeat what was already tried, build on what was kept.
- Never print the metric or a required line yourself: the fixed benchmark prints them, and a \
second metric line is a crash."""

TARGET_REPLY_FORMAT = """\
Reply in exactly this format:

HYPOTHESIS: <one sentence: what you change, what you expect, and why>
DESCRIPTION: <a short label for the results table, under 80 characters>

path/of/the/file.py
```
<<<<<<< SEARCH
<lines copied exactly from the current file, with their indentation>
=======
<the lines that replace them>
>>>>>>> REPLACE
```

Put the path of the file a block edits on the line before its fence. You may send several \
SEARCH/REPLACE blocks for one idea, also for several editable files. Each SEARCH must match \
exactly one place in its file: include enough surrounding lines to make it unique, and keep it \
short. Do not send whole files."""

TARGET_AGENT_FORMAT = """\
How to answer: edit the editable files in the current directory in place (only those; do not \
run the experiment, do not use git). Then write a one-line description of the change (under 80 \
characters) to the file named by the environment variable AUTORESEARCH_DESCRIPTION_FILE, and \
end your final message with two lines:

HYPOTHESIS: <one sentence: what you changed, what you expect, and why>
DESCRIPTION: <the same short label>"""


def build_messages(ctx: Context) -> tuple[str, str]:
    """(system, user) for an LLM that answers with SEARCH/REPLACE blocks."""
    if not ctx.target.lab:
        system = TARGET_PROTOCOL + "\n\n" + TARGET_REPLY_FORMAT
        parts = _context_sections(ctx)
        for name, text in ctx.files.items():
            parts.append(_section(f"Current {name} (editable)", _fenced(name, text)))
        parts.append(_task(ctx) + " Answer in the reply format (HYPOTHESIS, DESCRIPTION, SEARCH/REPLACE blocks).")
        return system, "\n\n".join(parts)
    system = PROTOCOL + "\n\n" + REPLY_FORMAT
    parts = _context_sections(ctx)
    parts.append(_section("Current train.py (the file to edit)", f"```python\n{ctx.train_py.rstrip()}\n```"))
    parts.append(_task(ctx) + " Answer in the reply format (HYPOTHESIS, DESCRIPTION, SEARCH/REPLACE blocks).")
    return system, "\n\n".join(parts)


def build_agent_prompt(ctx: Context) -> str:
    """One text for an external coding agent that edits train.py in its working directory."""
    if not ctx.target.lab:
        parts = [TARGET_PROTOCOL, *_context_sections(ctx)]
        parts.append(_task(ctx) + " The editable files are in the current directory: read them before editing.")
        parts.append(TARGET_AGENT_FORMAT)
        return "\n\n".join(parts)
    parts = [PROTOCOL]
    parts += _context_sections(ctx)
    parts.append(_task(ctx) + " train.py is in the current directory: read it before editing.")
    parts.append(AGENT_FORMAT)
    return "\n\n".join(parts)


def _context_sections(ctx: Context) -> list[str]:
    if not ctx.target.lab:
        return _target_sections(ctx)
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


def _target_sections(ctx: Context) -> list[str]:
    editable = ", ".join(ctx.files) or "(none)"
    parts = [
        _section("Research program (program.md)", ctx.program.strip() or "(empty)"),
        _section("The target", f"{ctx.target.description.strip()}\nEditable files: {editable}."),
    ]
    for name, text in ctx.context_files.items():
        parts.append(_section(f"{name} (fixed, for reference)", _fenced(name, text)))
    parts.append(_section(
        f"History of this run ({len(ctx.history)} experiments)",
        history_table(ctx.history, ctx.best, ctx.noise, ctx.target.metric, ctx.target.direction),
    ))
    if ctx.feedback:
        parts.append(_section("The last attempt crashed", _clip_tail(ctx.feedback.strip(), MAX_FEEDBACK)))
    return parts


def _fenced(name: str, text: str) -> str:
    language = {"py": "python", "js": "javascript", "rs": "rust", "c": "c", "cpp": "cpp", "sh": "bash"}
    lang = language.get(name.rsplit(".", 1)[-1], "") if "." in name else ""
    return f"```{lang}\n{text.rstrip()}\n```"


def _task(ctx: Context) -> str:
    if not ctx.target.lab:
        better = "raise" if ctx.target.direction == "max" else "lower"
        if ctx.feedback:
            return (f"This is experiment {ctx.experiment}, a fix attempt: find the cause of the crash above "
                    "and fix it with a minimal change that keeps the idea.")
        return f"This is experiment {ctx.experiment}: propose the next single change to {better} {ctx.target.metric}."
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


def history_table(rows: list[dict], best: dict | None = None, noise: float | None = None,
                  metric: str = "val_bpb", direction: str = "min") -> str:
    """A compact table of every experiment so far (one entry each, the metric the mean over its
    trials): old ones shortened, recent ones in full. `best` and `noise` are the Ledger's."""
    if not rows:
        return "No experiments yet: the baseline has not run."
    if metric != "val_bpb":
        rows = [{**r, "val_bpb": r.get(metric, r.get("val_bpb"))} for r in rows]
        best = {**best, "val_bpb": best.get(metric, best.get("val_bpb"))} if best else best
    lines = [_summary_line(rows, best, noise)]
    recent = rows[-RECENT_ROWS:]
    old = rows[: len(rows) - len(recent)]
    if old:
        shown = old[-MAX_OLD_ROWS:]
        lines.append("")
        lines.append(f"Older experiments (experiment status {metric}: description):")
        if len(old) > len(shown):
            lines.append(f"- ({len(old) - len(shown)} oldest experiments omitted)")
        lines += [
            f"- #{_cell(r.get('experiment'))} {_cell(r.get('status'))} {_bpb(r)}: {_cell(r.get('description'), 60)}"
            for r in shown
        ]
    lines.append("")
    lines.append(f"| exp | commit | {metric} | status | description | hypothesis |")
    lines.append("|---|---|---|---|---|---|")
    for r in recent:
        status = _cell(r.get("status"))
        if status == "crash" and r.get("reason"):
            status += f" ({_cell(r.get('reason'), 40)})"
        lines.append(
            f"| {_cell(r.get('experiment'))} | {_cell(r.get('commit'))} | {_bpb(r)} | {status} "
            f"| {_cell(r.get('description'))} | {_cell(r.get('hypothesis'))} |"
        )
    text = "\n".join(lines)
    if metric != "val_bpb":  # the summary line's wording, in the target's terms
        word = "higher" if direction == "max" else "lower"
        text = f"{metric}: {word} is better. " + text.replace("Baseline val_bpb", f"Baseline {metric}", 1)
    return text


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
