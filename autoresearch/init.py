"""`autoresearch init`: declare a target in an existing repository.

Validates the answers exactly as autoresearch.toml is validated (target.parse_target), dry-runs
the command once, shows the value it read, and only then writes autoresearch.toml and, when
there is none, a starter program.md. Any problem is an AutoresearchError of one line, and then
nothing is written.
"""

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.judge import Measured, judge_output, raw_values, seen_lines
from autoresearch.target import FILE, Target, parse_target


@dataclass
class DryRun:
    measured: Measured
    seconds: float
    exit_code: int | None  # None: killed at the timeout
    output: str


@dataclass
class Initialised:
    target: Target
    dry_run: DryRun
    wrote: list[str] = field(default_factory=list)


def init_target(root: Path, edit: list[str], run: str, metric: str, direction: str, timeout: float = 600.0,
                require: list[str] | None = None, context: list[str] | None = None,
                force: bool = False) -> Initialised:
    """Check, dry-run, then write autoresearch.toml (and program.md if missing) under `root`."""
    root = Path(root).resolve()
    if not (root / ".git").exists():
        raise AutoresearchError(f"{root} is not a git repository: run `git init` there and commit your program first")
    if (root / FILE).exists() and not force:
        raise AutoresearchError(f"{root / FILE} already exists; edit it, or pass --force to replace it")
    table = {"edit": list(edit), "run": run, "metric": metric, "direction": direction, "timeout": timeout}
    if require:
        table["require"] = list(require)
    if context:
        table["context"] = list(context)
    try:
        target = parse_target({"target": table}, root)
    except AutoresearchError as err:  # the same rules as the file, said in terms of the flags
        raise AutoresearchError(str(err).replace(f"{FILE}: ", "", 1)) from None
    dry = dry_run(target, root)
    m = dry.measured
    if dry.exit_code is None:
        raise AutoresearchError(f"the dry run of `{run}` did not finish in {timeout:g} s; pass a larger --timeout or a faster command")
    if not m.ok:
        if dry.exit_code == 0 and not raw_values(dry.output, metric):
            seen = seen_lines(dry.output)
            saw = "; ".join(seen) if seen else "no `name: value` line at all"
            raise AutoresearchError(f"the dry run of `{run}` printed no {metric} line (it printed: {saw}); fix --metric or make the command print `{metric}: <number>`")
        raise AutoresearchError(f"the dry run of `{run}` is a crash: {m.reason}; fix it before declaring the target")
    wrote = [FILE]
    (root / FILE).write_text(toml_text(target))
    if not (root / "program.md").exists():
        (root / "program.md").write_text(starter_program(target))
        wrote.append("program.md")
    return Initialised(target, dry, wrote)


def dry_run(target: Target, root: Path) -> DryRun:
    """Run the target's command once in `root`, output and exit code as the harness sees them."""
    code, output, seconds = run_command(target.argv(), Path(root), target.timeout)
    measured = judge_output(target, output, code) if code is not None else Measured(None, {}, f"timeout after {target.timeout:g} s", "crash")
    return DryRun(measured, seconds, code, output)


def run_command(argv: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout and stderr together, seconds). The command runs in
    its own process group, which is killed whole at the timeout."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out.decode(errors="replace"), time.monotonic() - start


def toml_text(target: Target) -> str:
    """autoresearch.toml for `target`, with a comment per key (JSON strings are TOML strings)."""
    q = json.dumps
    lines = [
        "# The research target (docs/targets.md). Written by `autoresearch init`.",
        "[target]",
        f"edit = [{', '.join(q(p) for p in target.edit_patterns)}]  # the only files a proposal may change",
        f"run = {q(target.run)}  # one experiment, run in the worktree",
        f"metric = {q(target.metric)}  # read from a `{target.metric}: <number>` line of its output",
        f"direction = {q(target.direction)}  # {'higher' if target.higher_is_better else 'lower'} is better",
        f"timeout = {target.timeout:g}  # seconds before a run is killed (a crash)",
    ]
    if target.require:
        lines.append(f"require = [{', '.join(q(r) for r in target.require)}]  # lines a run must print")
    if target.context:
        lines.append(f"context = [{', '.join(q(c) for c in target.context)}]  # fixed files shown to the proposer")
    return "\n".join(lines) + "\n"


def starter_program(target: Target) -> str:
    better = "higher" if target.higher_is_better else "lower"
    fixed = f" {', '.join(target.context)} {'is' if len(target.context) == 1 else 'are'} fixed." if target.context else ""
    must = f" A run must also print {', '.join(repr(r) for r in target.require)}." if target.require else ""
    return f"""# Research program

Goal: make `{target.metric}` {better} ({better} is better). Each experiment runs `{target.run}`.

You may edit {', '.join(target.edit)}.{fixed} A run that exits non-zero, prints no
`{target.metric}` line or takes over {target.timeout:g} s is a crash.{must}

Describe here what you know: where the time goes, ideas worth trying, what must never change.
"""
