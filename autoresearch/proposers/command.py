"""An external coding agent (Codex CLI, Claude Code, a script) as the proposer.

`--command 'CMD'` runs CMD through the shell in the run's worktree, once per experiment, with a
fresh context each time. The prompt (proposers/prompt.py, agent form) is on its stdin and in the
file named by AUTORESEARCH_PROMPT_FILE. CMD edits train.py (a declared target: its edit files,
ctx.files) in place and may write a one-line
description to the file named by AUTORESEARCH_DESCRIPTION_FILE. Both files live in a temporary
directory outside the worktree, so they never dirty it. Also set for CMD:
AUTORESEARCH_EXPERIMENT, AUTORESEARCH_EDIT_FILES (the files it may edit, one per line: train.py
in the lab; harness/claude.sh allows its Edit tool exactly those), AUTORESEARCH_MODEL when
--model was given, and
AUTORESEARCH_AGENT_WORKTREE (the worktree: a resumed harness stops any process still carrying it,
i.e. an agent that a kill -9 of the harness left running). The environment is otherwise passed
through unchanged: the agent needs its own API keys.

train.py (every edit file) in the worktree is set to the context's text first. CMD runs in its own process group, so a
terminal's Ctrl-C does not reach it: when the harness is interrupted while CMD runs, the group is
killed before the interrupt goes on. After `options.timeout` seconds the whole group gets SIGTERM,
then SIGKILL after KILL_GRACE seconds. However CMD ends, what it started goes with it: its group,
and any process that left the group but still carries AUTORESEARCH_AGENT_WORKTREE. A timeout, a
non-zero exit, or train.py left unchanged is a ProposerError carrying the tail of CMD's output. Otherwise the new train.py is read back (and
left in place); the description comes from the description file, else a `DESCRIPTION:` line of
the output; the hypothesis from a `HYPOTHESIS:` line, else the description.

Tokens and cost come from the agent's machine-readable report in the output (Claude Code's
`--output-format json` result, Codex's `--json` events; see agent_usage.py), on success and on
failure alike: a failed proposal's cost rides on the ProposerError, so --max-cost counts it. The
HYPOTHESIS:/DESCRIPTION: lines are then looked for in the agent's text inside that report.
"""

import os
import tempfile
import time
from pathlib import Path

from autoresearch.edits import parse_reply
from autoresearch.errors import AutoresearchError
from autoresearch.proposers.agent_usage import usage_from_output
from autoresearch.proposers.base import (REGISTRY, Context, NothingEdited, Proposal, Proposer, ProposerError,
                                         ProposerOptions)
from autoresearch.proposers.pricing import PriceTable
from autoresearch.proposers.prompt import build_agent_prompt
from autoresearch.process import AGENT_MARKER, KILL_GRACE, Supervised, describe_exit

TAIL_CHARS = 4000  # of the command's output, in errors
RAW_CHARS = 20_000  # of the command's output, kept in proposal.json


class CommandProposer(Proposer):
    name = "command"
    can_fix = True
    speculative = True

    def __init__(self, options: ProposerOptions):
        if not options.command or not options.command.strip():
            raise AutoresearchError("the command proposer needs a command: pass --command 'CMD'")
        self.command = options.command
        self.timeout = options.timeout
        self.model = options.model or ""
        self.prices = PriceTable(options.prices)  # Codex reports tokens only: priced by --model

    def propose(self, ctx: Context) -> Proposal:
        before = dict(ctx.files)  # the edit files (the lab: train.py)
        for name, text in before.items():
            path = Path(ctx.workdir) / name
            try:
                if not path.exists() or path.read_text() != text:
                    path.write_text(text)  # the agent edits the version this context is about
            except OSError as err:
                raise ProposerError(f"command: cannot write {path}: {err.strerror}") from None
        prompt = build_agent_prompt(ctx)
        with tempfile.TemporaryDirectory(prefix="autoresearch-command-") as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            description_file = Path(tmp) / "description.txt"
            output_file = Path(tmp) / "output.log"
            prompt_file.write_text(prompt)
            env = dict(os.environ)
            env["AUTORESEARCH_PROMPT_FILE"] = str(prompt_file)
            env["AUTORESEARCH_DESCRIPTION_FILE"] = str(description_file)
            env["AUTORESEARCH_EXPERIMENT"] = str(ctx.experiment)
            env["AUTORESEARCH_EDIT_FILES"] = "\n".join(sorted(before) or ["train.py"])
            env[AGENT_MARKER] = str(Path(ctx.workdir).resolve())  # found on resume if orphaned
            if self.model:
                env["AUTORESEARCH_MODEL"] = self.model
            code, seconds, timed_out = self._run(ctx.workdir, env, prompt_file, output_file)
            output = output_file.read_text(errors="replace")
            description_text = description_file.read_text(errors="replace") if description_file.exists() else ""

        usage, agent_text = usage_from_output(output, self.model, self.prices)
        tail, raw = _tail(output), output[-RAW_CHARS:]
        if timed_out:
            raise ProposerError(f"command timed out after {self.timeout:g}s (process group killed){tail}", usage, raw)
        if code != 0:
            raise ProposerError(f"command exited with {_exit_text(code)} after {seconds:.0f}s{tail}", usage, raw)
        after = {}
        for name in before:
            try:
                after[name] = (Path(ctx.workdir) / name).read_text()
            except OSError:
                raise ProposerError(f"command removed {name}{tail}", usage, raw) from None
        changed = {name: text for name, text in after.items() if text != before[name]}
        fields = parse_fields(agent_text)
        description = _first_line(description_text) or fields.description or "edit by external command"
        proposal = Proposal(
            hypothesis=fields.hypothesis or description,
            description=description,
            files=changed,
            model=self.model,
            usage=usage,
            prompt=prompt,
            raw=raw,
        )
        if not changed:
            raise NothingEdited(f"command left {' and '.join(before)} unchanged{tail}", proposal)
        return proposal

    def _run(self, workdir, env, prompt_file: Path, output_file: Path) -> tuple[int, float, bool]:
        """Run the agent as a supervised process (process.py): whatever it started, also what
        left its group with setsid, goes when it ends, times out, or the harness is interrupted."""
        start = time.monotonic()
        with open(prompt_file, "rb") as stdin, open(output_file, "wb") as out:
            proc = Supervised(["/bin/sh", "-c", self.command], cwd=workdir, env=env, stdin=stdin, stdout=out,
                              marker=(AGENT_MARKER, env[AGENT_MARKER]))
            try:
                proc.start()
            except OSError as err:
                raise ProposerError(f"command could not start: {err.strerror}") from None
            try:
                timed_out = proc.wait(start + self.timeout)
                if timed_out:
                    proc.terminate(KILL_GRACE)
            finally:  # also on Ctrl-C or SIGTERM of the harness: the agent must not outlive it
                proc.stop(grace=0)
        return proc.returncode, time.monotonic() - start, timed_out


def parse_fields(output: str):
    """HYPOTHESIS:/DESCRIPTION: lines of the agent's output (the last ones win over echoes)."""
    lines = output.replace("\r\n", "\n").split("\n")
    # Only look at lines outside SEARCH/REPLACE blocks; parse_reply would reject an unclosed one.
    fields = [
        line
        for line in lines
        if line.lstrip().upper().lstrip("*#>-_ ").startswith(("HYPOTHESIS", "DESCRIPTION"))
        and not line.split(":", 1)[-1].strip().startswith("<")  # the prompt's template, echoed
    ]
    return parse_reply("\n".join(reversed(fields)))


def _first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return " ".join(line.split())[:300]
    return ""


def _tail(output: str) -> str:
    text = output.strip()
    if not text:
        return " (no output)"
    if len(text) > TAIL_CHARS:
        text = "..." + text[-TAIL_CHARS:]
    return f"; output tail:\n{text}"


def _exit_text(code: int) -> str:
    return describe_exit(code).replace("exit ", "status ").replace("killed by ", "signal ")


REGISTRY["command"] = CommandProposer
