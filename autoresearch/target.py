"""What is researched: a Target. Either the built-in nanochat lab (train.py, val_bpb, lower is
better) or a program the user declares in `autoresearch.toml` at the repository root:

    [target]
    edit = ["bot.py"]                  # the only files a proposal may change (paths or globs)
    run = "python evaluate.py"         # the experiment: a shell command run in the worktree
    metric = "avg_score"               # read from the command's output
    direction = "max"                  # "max" or "min"
    timeout = 150                      # hard limit in seconds for one run (default 600)
    require = ["correct: True"]        # output lines that must be present, or the run is a crash
    context = ["game.py", "evaluate.py"]  # fixed files shown to the proposer

Optional keys beyond those (docs/targets.md has the reasons): budget (text or seconds, shown to
the proposer), min_delta (the smallest gain worth a keep, in the metric's units), prepare (a
command run once in a fresh worktree before the first experiment), secondary (other metrics
to record), constraints (`"peak_mb <= 1024"`: a run that breaks one is a crash), audit (a
command run from the base commit's fixed files on every keep) and network (false: the sandbox
cuts it).

`load_target(root)` reads and validates the file (None when there is none); bad input is an
AutoresearchError of one line that names the fix. `lab_target(root)` describes the lab in the
same terms, so the loop treats both alike. Judging a run's output is pure: autoresearch/judge.py.
"""

import glob
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from autoresearch.errors import AutoresearchError
from autoresearch.records import COLUMNS

FILE = "autoresearch.toml"
DIRECTIONS = ("max", "min")
DEFAULT_TIMEOUT = 600.0
REQUIRED = ("edit", "run", "metric", "direction")
OPTIONAL = ("timeout", "require", "context", "budget", "min_delta", "prepare", "secondary",
            "constraints", "audit", "network")
HINTS = {
    "edit": 'the files a proposal may change, e.g. edit = ["bot.py"]',
    "run": 'the command that runs one experiment, e.g. run = "python evaluate.py"',
    "metric": 'the name the command prints as `name: value`, e.g. metric = "avg_score"',
    "direction": 'direction = "max" (higher is better) or "min" (lower is better)',
}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-/]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
SHELL_BUILTINS = frozenset({"cd", "exec", "env", "export", "set", ".", "source", "true", ":", "test", "["})
IGNORED_DIRS = (".git", "results", "__pycache__", ".venv", "venv", "node_modules")


@dataclass(frozen=True)
class Constraint:
    """`name op limit`: a run whose `name` breaks it (or never prints it) is a crash."""

    name: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return {"<=": value <= self.limit, "<": value < self.limit, ">=": value >= self.limit,
                ">": value > self.limit, "==": value == self.limit, "!=": value != self.limit}[self.op]

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.limit:g}"


@dataclass(frozen=True)
class Target:
    """One research target. Paths are relative to the repository root, POSIX style."""

    edit: tuple[str, ...]  # the edit files, globs expanded, sorted
    run: str  # shell command of one experiment, run in the worktree
    metric: str
    direction: str  # "max" | "min"
    timeout: float = DEFAULT_TIMEOUT
    require: tuple[str, ...] = ()
    context: tuple[str, ...] = ()  # fixed files shown to the proposer
    budget: str = ""  # shown to the proposer, never enforced (timeout is)
    min_delta: float = 0.0  # in the metric's units
    prepare: str = ""
    secondary: tuple[str, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    audit: str = ""
    network: bool = False
    edit_patterns: tuple[str, ...] = ()  # as written in autoresearch.toml
    lab: bool = False  # the built-in nanochat lab (summary block, FAIL line, prepare.py contract)
    fixed: tuple[str, ...] = field(default=())  # for the lab: its fixed files; declared: see fixed_files()

    @property
    def recorded(self) -> tuple[str, ...]:
        """The other metrics a row records (results.tsv's metrics column): secondary, then the
        constraints' names, each once."""
        names = [*self.secondary, *(c.name for c in self.constraints)]
        return tuple(dict.fromkeys(n for n in names if n != self.metric))

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"

    def argv(self) -> list[str]:
        """The experiment as an argv: the lab's train.py under this Python, else the shell."""
        if self.lab:
            return [sys.executable, "train.py"]
        return ["/bin/sh", "-c", self.run]

    def describe(self) -> str:
        """The target in a few lines, for the proposer's prompt (what counts as a crash included)."""
        better = "higher is better" if self.higher_is_better else "lower is better"
        lines = [
            f"Metric: {self.metric} ({better}), read from the `{self.metric}: <number>` line the "
            f"experiment prints.",
            f"Experiment: `{self.run}` in the repository root, killed after {self.timeout:g} s.",
            f"Files you may edit: {', '.join(self.edit)}. Every other file is fixed: changing one is a crash.",
        ]
        if self.budget:
            lines.append(f"Budget: {self.budget}")
        crash = ["a non-zero exit", f"no `{self.metric}` line", "a value that is not a finite number",
                 f"`{self.metric}` printed twice with different values"]
        crash += [f"a missing `{line}` line" for line in self.require]
        crash += [f"breaking `{c}`" for c in self.constraints]
        lines.append("A crash: " + "; ".join(crash) + ".")
        if self.min_delta:
            lines.append(f"A change is kept only when it improves {self.metric} by at least {self.min_delta:g}.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# The built-in lab
# ---------------------------------------------------------------------------


def lab_target(timeout: float = DEFAULT_TIMEOUT, min_delta: float = 1e-4, budget: str = "") -> Target:
    """The nanochat lab as a Target: train.py is edited, prepare.py is fixed, val_bpb goes down.
    timeout and budget are the lab's (config.py computes them from the profile)."""
    return Target(edit=("train.py",), run="python train.py", metric="val_bpb", direction="min",
                  timeout=timeout, context=("prepare.py",), budget=budget, min_delta=min_delta,
                  edit_patterns=("train.py",), lab=True, fixed=("prepare.py",))


def find_target(root: Path) -> Target:
    """The declared target of `root`, else the lab (its files must be there)."""
    declared = load_target(root)
    if declared is not None:
        return declared
    from autoresearch.lab import find_lab

    find_lab(Path(root))
    return lab_target()


# ---------------------------------------------------------------------------
# autoresearch.toml
# ---------------------------------------------------------------------------


def load_target(root: Path, check_commands: bool = True) -> Target | None:
    """The target declared in root/autoresearch.toml, validated; None when there is no such file."""
    path = Path(root) / FILE
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise AutoresearchError(f"{FILE}: not valid TOML ({err}); fix the syntax") from None
    return parse_target(data, Path(root), check_commands)


def parse_target(data: dict, root: Path, check_commands: bool = True) -> Target:
    """Validate the parsed TOML of autoresearch.toml against the files under `root`."""
    extra = sorted(set(data) - {"target"})
    if extra:
        raise AutoresearchError(f"{FILE}: unknown table or key {extra[0]!r}; everything goes under [target]")
    table = data.get("target")
    if not isinstance(table, dict):
        raise AutoresearchError(f"{FILE} has no [target] table; add one with {', '.join(REQUIRED)} (docs/targets.md)")
    unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise AutoresearchError(
            f"{FILE}: unknown key {unknown[0]!r} in [target]; known keys: {', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        if key not in table:
            raise AutoresearchError(f"{FILE}: [target] needs `{key}`: {HINTS[key]}")

    patterns = _strings(table, "edit", one_ok=True)
    if not patterns:
        raise AutoresearchError(f"{FILE}: `edit` is empty; {HINTS['edit']}")
    run = _text(table, "run")
    metric = _name(table, "metric")
    if metric in COLUMNS:  # results.tsv names its second column after the metric: it must not clash
        raise AutoresearchError(f"{FILE}: metric {metric!r} is also the name of a results.tsv column; print the "
                                f"number under another name (e.g. {metric}_value) and set metric to it")
    direction = _text(table, "direction")
    if direction not in DIRECTIONS:
        raise AutoresearchError(f'{FILE}: direction must be "max" or "min", not {direction!r}')
    timeout = _number(table, "timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise AutoresearchError(f"{FILE}: timeout must be a positive number of seconds, not {timeout:g}")
    min_delta = _number(table, "min_delta", 0.0)
    if min_delta < 0:
        raise AutoresearchError(f"{FILE}: min_delta must be >= 0 (in the units of {metric}), not {min_delta:g}")
    budget = table.get("budget", "")
    if isinstance(budget, bool) or not isinstance(budget, (str, int, float)):
        raise AutoresearchError(f'{FILE}: budget must be text or seconds, e.g. budget = "one run takes ~10 s"')
    if isinstance(budget, (int, float)):
        budget = f"one experiment should take about {budget:g} s"
    network = table.get("network", False)
    if not isinstance(network, bool):
        raise AutoresearchError(f"{FILE}: network must be true or false")

    edit = expand_edit(root, patterns)
    context = tuple(_relative(root, p, "context") for p in _strings(table, "context"))
    both = sorted(set(edit) & set(context))
    if both:
        raise AutoresearchError(
            f"{FILE}: {both[0]} is both in edit and context; a file is either edited or fixed context, remove it from one")
    for name in context:
        if not (root / name).is_file():
            raise AutoresearchError(f"{FILE}: context file {name} does not exist in {root}; fix the path")
    secondary = tuple(_checked_name(s, "secondary") for s in _strings(table, "secondary"))
    constraints = tuple(parse_constraint(c) for c in _strings(table, "constraints"))
    prepare = _text(table, "prepare", "")
    audit = _text(table, "audit", "")
    if check_commands:
        for key, command in (("run", run), ("prepare", prepare), ("audit", audit)):
            if command:
                check_command(root, command, key)
    return Target(edit=edit, run=run, metric=metric, direction=direction, timeout=timeout,
                  require=tuple(_strings(table, "require")), context=context, budget=str(budget),
                  min_delta=min_delta, prepare=prepare, secondary=secondary, constraints=constraints,
                  audit=audit, network=network, edit_patterns=tuple(patterns))


def expand_edit(root: Path, patterns: list[str]) -> tuple[str, ...]:
    """The files the edit patterns name (globs expanded, `**` included), relative and sorted."""
    found = set()
    for pattern in patterns:
        _relative(root, pattern, "edit")
        matches = [Path(m) for m in glob.glob(pattern, root_dir=root, recursive=True)]
        files = [m.as_posix() for m in matches if (root / m).is_file() and not _ignored(m)]
        if not files:
            raise AutoresearchError(f"{FILE}: edit pattern {pattern!r} matches no file in {root}; fix the path or create the file")
        found.update(os.path.normpath(f).replace(os.sep, "/") for f in files)
    return tuple(sorted(found))


def parse_constraint(text: str) -> Constraint:
    m = CONSTRAINT.match(text)
    limit = _float(m.group(3)) if m else None
    if m is None or limit is None:
        raise AutoresearchError(f"{FILE}: constraint {text!r} is not `name <op> number` (ops <= < >= > == !=), e.g. \"peak_mb <= 1024\"")
    return Constraint(m.group(1), m.group(2), limit)


def check_command(root: Path, command: str, key: str = "run") -> None:
    """The command's program exists (on PATH, or as a path in the repository), and so does the
    script of `python x.py`; else an error naming the fix."""
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise AutoresearchError(f"{FILE}: {key} = {command!r} is not a valid shell command ({err}); fix the quoting") from None
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # FOO=1 python x.py
        words.pop(0)
    if not words or words[0] in SHELL_BUILTINS or any(c in words[0] for c in "$`"):
        return
    program = words[0]
    if "/" in program:
        if not (root / program).exists() and not Path(program).exists():
            raise AutoresearchError(f"{FILE}: {key} command {program} not found in {root}; fix the path")
    elif shutil.which(program) is None:
        raise AutoresearchError(f"{FILE}: {key} command {program!r} not found on PATH; install it or fix `{key}`")
    if Path(program).name.startswith("python") and len(words) > 1 and words[1].endswith(".py"):
        if not (root / words[1]).is_file():
            raise AutoresearchError(f"{FILE}: {key} runs {words[1]}, which does not exist in {root}; fix the path")


# ---------------------------------------------------------------------------
# Files: which are edited, which are fixed, what the proposer sees
# ---------------------------------------------------------------------------


def fixed_files(target: Target, root: Path) -> list[str]:
    """Every tracked file outside `edit` (the lab: its fixed files). A run or a proposal that
    changes one is a crash; the command always runs against the base commit's versions."""
    if target.lab:
        return list(target.fixed)
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise AutoresearchError(f"{root} is not a git repository: run `git init` and commit your program first")
    edit = set(target.edit)
    return sorted(f for f in out.stdout.split("\0") if f and f not in edit)


def changed_fixed_files(target: Target, worktree: Path, base: str = "HEAD") -> list[str]:
    """Fixed files that differ in `worktree` from the commit `base` (modified or deleted; a new
    untracked file is not a fixed file). After a proposal or a run, any is a crash naming it."""
    out = subprocess.run(["git", "diff", "--name-only", "-z", base, "--"], cwd=worktree, capture_output=True, text=True)
    if out.returncode != 0:
        raise AutoresearchError(f"cannot compare {worktree} with {base}: {out.stderr.strip()}")
    changed = [name for name in out.stdout.split("\0") if name]
    if target.lab:
        return [name for name in changed if name in target.fixed]
    return [name for name in changed if name not in target.edit]


def read_edit_files(target: Target, root: Path) -> dict[str, str]:
    """The edit files' current texts, by relative path."""
    return {name: (Path(root) / name).read_text() for name in target.edit}


def read_context_files(target: Target, root: Path) -> dict[str, str]:
    """What the proposer is shown of the fixed files: the lab's contract (prepare.py's fixed
    sections), or each declared context file whole."""
    if target.lab:
        from autoresearch.lab import lab_contract

        prepare = Path(root) / "prepare.py"
        return {"prepare.py": lab_contract(prepare.read_text())} if prepare.is_file() else {}
    return {name: (Path(root) / name).read_text(errors="replace") for name in target.context}


def write_edit_files(root: Path, files: dict[str, str], target: Target) -> list[str]:
    """Write a proposal's files into the worktree; only edit files, else an AutoresearchError
    (a bug in the caller: proposals are checked before). Returns the paths that changed."""
    changed = []
    for name, text in sorted(files.items()):
        if name not in target.edit:
            raise AutoresearchError(f"{name} is not an edit file of this target ({', '.join(target.edit)})")
        path = Path(root) / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    return changed


def brief(target: Target):
    """What the proposer is told about the target (a proposers.base.TargetBrief)."""
    from autoresearch.proposers.base import TargetBrief

    return TargetBrief(metric=target.metric, direction=target.direction,
                       description="" if target.lab else target.describe(), lab=target.lab)


def build_context(target: Target, worktree: Path, *, program: str, history: list[dict], experiment: int,
                  profile: str = "cpu", files: dict[str, str] | None = None, feedback: str | None = None,
                  best: dict | None = None, noise: float | None = None):
    """The proposer's Context for one experiment: the edit files (`files`, else as they are in
    `worktree`), the context files and the target's brief. The lab's context is exactly the one
    the loop built before targets existed (train_py and lab_contract set)."""
    from autoresearch.proposers.base import Context

    files = dict(files) if files is not None else read_edit_files(target, worktree)
    shown = read_context_files(target, worktree)
    return Context(
        program=program,
        train_py=files.get("train.py", ""),
        lab_contract=shown.get("prepare.py", "") if target.lab else "",
        history=history, workdir=Path(worktree), experiment=experiment, profile=profile,
        feedback=feedback, best=best, noise=noise,
        files=files, context_files={} if target.lab else shown, target=brief(target),
    )


def proposal_files(target: Target, proposal) -> dict[str, str]:
    """The files a proposal writes into the worktree: its edit files that exist in the target
    (the lab: train.py). A file outside `edit` is an AutoresearchError naming it."""
    outside = sorted(set(proposal.files) - set(target.edit))
    if outside:
        raise AutoresearchError(f"the proposal changes {outside[0]}, which is not an edit file ({', '.join(target.edit)})")
    return dict(proposal.files)


# ---------------------------------------------------------------------------
# Small readers
# ---------------------------------------------------------------------------


def _strings(table: dict, key: str, one_ok: bool = False) -> list[str]:
    value = table.get(key, [])
    if one_ok and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise AutoresearchError(f'{FILE}: {key} must be a list of strings, e.g. {key} = ["..."]')
    return [v.strip() for v in value]


def _text(table: dict, key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise AutoresearchError(f"{FILE}: {key} must be a non-empty string; {HINTS.get(key, 'see docs/targets.md')}")
    return value.strip()


def _name(table: dict, key: str) -> str:
    return _checked_name(_text(table, key), key)


def _checked_name(value: str, key: str) -> str:
    if not NAME.match(value):
        raise AutoresearchError(f"{FILE}: {key} {value!r} is not a metric name (letters, digits, _ . - /, no spaces)")
    return value


def _number(table: dict, key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AutoresearchError(f"{FILE}: {key} must be a number, e.g. {key} = {default:g}")
    return float(value)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _relative(root: Path, pattern: str, key: str) -> str:
    raw = pattern.replace("\\", "/")
    if raw.startswith("/") or ".." in raw.split("/"):
        raise AutoresearchError(f"{FILE}: {key} path {pattern!r} leaves the repository; use a path relative to {root}")
    return os.path.normpath(raw).replace(os.sep, "/")


def _ignored(path: Path) -> bool:
    return any(part in IGNORED_DIRS for part in path.parts) or path.name == FILE


def proposer_context(target, worktree: Path, program: str, files: dict, lab, history: list, best,
                     noise: float | None, experiment: int, feedback: str | None = None):
    """What one ask is shown: program.md, the edit files, the contract (the lab's, or the declared
    target's, stated by build_context), the history, the best (ledger.Best) and the noise."""
    from autoresearch.proposers import Context

    best_entry = {"commit": best.commit, "experiment": best.experiment, "val_bpb": best.mean,
                  "trials": len(best.values)}
    if target is not None:
        return build_context(target, worktree, program=program, history=history, experiment=experiment,
                             profile=lab.profile, files=files, feedback=feedback,
                             best={**best_entry, target.metric: best.mean}, noise=noise)
    return Context(program, files["train.py"], lab.contract, history, worktree, experiment, lab.profile,
                   feedback=feedback, best=best_entry, noise=noise)
