"""No LLM: seeded hill-climbing over the UPPER_CASE numeric constants of the edit files (train.py
in the lab; every .py edit file of a declared target).

The offline default and the control arm. It finds `NAME = <int | float | 2**N>` assignments at
module level and in the branch of `if PROFILE == "gpu": ... else: ...` that belongs to the run's
profile, picks one, and changes it by a small factor, as a SEARCH/REPLACE edit applied with
autoresearch/edits.py (so it goes through the same path as an LLM's edit).

- floats: x0.5, x0.7, x1.4, x2 (0.0 becomes 0.01, 0.05 or 0.1); a float <= 1 whose name says
  RATIO, FRAC, BETA, DROPOUT or MOMENTUM stays <= 1.
- ints: powers of two double or halve; other ints step by 1 (below 16) or by a quarter.
  `2**N` moves N by one. Everything stays > 0, ints >= 1.
- No (name, value) pair that the history already tried (read from descriptions of the form
  `NAME old -> new`, the form this proposer writes) is proposed again.
- Hill-climbing: when the last kept experiment moved one parameter, the same parameter is pushed
  further in the same direction half of the time.
- Deterministic: the same seed, history and train.py give the same proposal.
- Several edit files: their constants form one pool (a name in two files is tried as one name).

On a fix attempt (ctx.feedback set) it raises ProposerError: it cannot read a crash log, and the
crashed change is simply discarded (`can_fix` is False so the loop can skip asking).
"""

import ast
import math
import random
import re
from dataclasses import dataclass

from autoresearch.edits import EditBlock, EditError, apply_file_blocks, check_syntax
from autoresearch.proposers.base import (REGISTRY, Context, Exhausted, Proposal, Proposer, ProposerError,
                                         ProposerOptions)

FLOAT_FACTORS = (0.5, 0.7, 1.4, 2.0)
ZERO_FLOAT_STEPS = (0.01, 0.05, 0.1)
UNIT_BOUNDED = ("RATIO", "FRAC", "BETA", "DROPOUT", "MOMENTUM")  # values in [0, 1]
# Not hyperparameters worth climbing: seeds, hardware constants for the MFU figure, and the lab's
# fixed constants (train.py must not change them even if it copies one).
NEVER = ("SEED", "PEAK", "FLOPS", "TIME_BUDGET", "MAX_SEQ_LEN", "EVAL_TOKENS", "VOCAB_SIZE")
CHANGE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\S+)\s*->\s*(\S+)")


@dataclass
class Param:
    name: str
    lineno: int  # 1-based
    col: int  # where the value literal starts on its line
    end_col: int
    value: float | int
    kind: str  # "int" | "float" | "pow"
    base: int = 0  # for "pow": base**value
    comment: str = ""
    path: str = "train.py"  # the edit file it lives in

    def literal(self) -> str:
        return source_literal(self.kind, self.value, self.base)


@dataclass
class Candidate:
    param: Param
    new: float | int
    direction: int  # +1 up, -1 down


# ---------------------------------------------------------------------------
# Finding hyperparameters
# ---------------------------------------------------------------------------


def find_params(source: str, profile: str) -> list[Param]:
    """UPPER_CASE numeric assignments at module level and in `profile`'s branch."""
    tree = ast.parse(source)
    lines = source.split("\n")
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.If):
            found += [p for s in _profile_branch(stmt, profile) for p in _param(s, lines)]
        else:
            found += _param(stmt, lines)
    return found


def _profile_branch(stmt: ast.If, profile: str) -> list[ast.stmt]:
    """The statements of `if PROFILE == "x": ... else: ...` that run for `profile`; [] otherwise."""
    named = _profile_test(stmt.test)
    if named is None:
        return []
    if named == profile:
        return stmt.body
    if len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If):  # elif
        return _profile_branch(stmt.orelse[0], profile)
    return stmt.orelse


def _profile_test(test: ast.expr) -> str | None:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return None
    left, right = test.left, test.comparators[0]
    for a, b in ((left, right), (right, left)):
        if isinstance(a, ast.Name) and a.id == "PROFILE" and isinstance(b, ast.Constant) and isinstance(b.value, str):
            return b.value
    return None


def _param(stmt: ast.stmt, lines: list[str]) -> list[Param]:
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
        return []
    name, value = stmt.targets[0].id, stmt.value
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or any(w in name for w in NEVER):
        return []
    if value.lineno != value.end_lineno:
        return []
    line = lines[value.lineno - 1]
    rest = line[value.end_col_offset :]
    comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
    common = dict(name=name, lineno=value.lineno, col=value.col_offset, end_col=value.end_col_offset, comment=comment)
    if isinstance(value, ast.Constant) and type(value.value) in (int, float):
        return [Param(value=value.value, kind=type(value.value).__name__, **common)]
    if (
        isinstance(value, ast.BinOp)
        and isinstance(value.op, ast.Pow)
        and all(isinstance(v, ast.Constant) and type(v.value) is int for v in (value.left, value.right))
        and value.left.value >= 2
    ):
        return [Param(value=value.right.value, kind="pow", base=value.left.value, **common)]
    return []


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------


def candidates(p: Param) -> list[Candidate]:
    if p.kind == "pow":
        steps = [p.value + 1, p.value - 1]
        return [Candidate(p, v, 1 if v > p.value else -1) for v in steps if v >= 1]
    if p.kind == "int":
        n = p.value
        if n <= 0:
            return [Candidate(p, 1, 1)] if n == 0 else []
        if n >= 2 and n & (n - 1) == 0:
            steps = [n * 2, n // 2]
        elif n < 16:
            steps = [n + 1, n - 1]
        else:
            steps = [round(n * 1.25), round(n * 0.75)]
        return [Candidate(p, v, 1 if v > n else -1) for v in steps if v >= 1 and v != n]
    x = p.value
    if x < 0 or not math.isfinite(x):
        return []
    if x == 0:
        values = list(ZERO_FLOAT_STEPS)
    else:
        values = [_round(x * f) for f in FLOAT_FACTORS]
    unit = x <= 1 and any(w in p.name for w in UNIT_BOUNDED)
    out = []
    for v in values:
        if v <= 0 or v == x or (unit and v >= 1 and "BETA" in p.name) or (unit and v > 1):
            continue
        out.append(Candidate(p, v, 1 if v > x else -1))
    return out


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def source_literal(kind: str, value, base: int = 0) -> str:
    if kind == "pow":
        return f"{base}**{value}"
    if kind == "int":
        return str(int(value))
    text = repr(float(value))
    return text if "e" not in text else f"{value:g}"


def tried_pairs(history: list[dict]) -> set[tuple[str, float]]:
    """(name, value) pairs already proposed, read from `NAME old -> new` descriptions."""
    tried = set()
    for row in history:
        for name, _old, new in CHANGE.findall(str(row.get("description") or "")):
            value = _number(new)
            if value is not None:
                tried.add((name, value))
    return tried


def _number(text: str) -> float | None:
    text = text.strip().rstrip(".,;)")
    m = re.fullmatch(r"(\d+)\*\*(\d+)", text)
    if m:
        return float(int(m.group(1)) ** int(m.group(2)))
    try:
        return float(text)
    except ValueError:
        return None


def _numeric(c: Candidate) -> float:
    return float(c.param.base ** c.new) if c.param.kind == "pow" else float(c.new)


def _last_kept_move(history: list[dict]) -> tuple[str, int] | None:
    """(name, direction) of the most recent kept `NAME old -> new` experiment."""
    for row in reversed(history):
        if row.get("status") != "keep":
            continue
        m = CHANGE.search(str(row.get("description") or ""))
        if not m:
            return None
        old, new = _number(m.group(2)), _number(m.group(3))
        if old is None or new is None or old == new:
            return None
        return m.group(1), 1 if new > old else -1
    return None


def choose(params: list[Param], history: list[dict], rng: random.Random) -> tuple[Candidate, bool]:
    tried = tried_pairs(history)
    fresh = [c for p in params for c in candidates(p) if (p.name, _numeric(c)) not in tried]
    if not fresh:
        raise Exhausted("hparam: every nearby value of every hyperparameter was already tried")
    move = _last_kept_move(history)
    if move and rng.random() < 0.5:
        onward = [c for c in fresh if c.param.name == move[0] and c.direction == move[1]]
        if onward:
            return rng.choice(onward), True
    names = sorted({c.param.name for c in fresh})
    name = rng.choice(names)
    return rng.choice([c for c in fresh if c.param.name == name]), False


# ---------------------------------------------------------------------------
# The proposer
# ---------------------------------------------------------------------------


class HparamProposer(Proposer):
    name = "hparam"
    edits_files = False  # text in, text out: no scratch checkout needed
    can_fix = False

    def __init__(self, options: ProposerOptions):
        self.seed = options.seed

    def propose(self, ctx: Context) -> Proposal:
        if ctx.feedback:
            raise ProposerError("hparam cannot fix a crash: the crashed change is discarded")
        params = params_of_files(ctx.files, ctx.profile, "hparam")
        if not params:
            raise ProposerError(f"hparam: {' and '.join(ctx.files)} has no UPPER_CASE numeric hyperparameters to change")
        rng = random.Random(f"{self.seed}|{ctx.experiment}|{len(ctx.history)}")
        cand, onward = choose(params, ctx.history, rng)
        path = cand.param.path
        block = edit_for(ctx.files[path], cand)
        block.path = path
        try:
            new = apply_file_blocks(ctx.files, [block])[path]
            check_syntax(new, path)
        except EditError as err:  # a bug here, not in the model: say so plainly
            raise ProposerError(f"hparam: generated edit does not apply: {err}") from None
        p = cand.param
        old, new_lit = p.literal(), source_literal(p.kind, cand.new, p.base)
        description = f"{p.name} {old} -> {new_lit}"
        why = f" ({p.comment})" if p.comment else ""
        if onward:
            hypothesis = f"{p.name}{why} improved when moved this way last time; moving it further to {new_lit} may help more."
        else:
            word = "raising" if cand.direction > 0 else "lowering"
            goal = "lower val_bpb within the fixed budget" if ctx.target.lab else (
                f"{'raise' if ctx.target.direction == 'max' else 'lower'} {ctx.target.metric}")
            hypothesis = f"{word} {p.name}{why} from {old} to {new_lit} may {goal}."
            hypothesis = hypothesis[0].upper() + hypothesis[1:]
        return Proposal(
            hypothesis=hypothesis,
            description=description,
            files={path: new},
            prompt=f"hparam seed={self.seed} profile={ctx.profile} experiment={ctx.experiment}",
            raw=f"{block.search}=======\n{block.replace}",
        )


def params_of_files(files: dict[str, str], profile: str, who: str) -> list[Param]:
    """The constants of every Python edit file, each Param knowing its file."""
    params = []
    for path, text in files.items():
        if not path.endswith(".py"):
            continue
        try:
            found = find_params(text, profile)
        except SyntaxError as err:
            raise ProposerError(f"{who}: {path} does not parse: {err.msg} (line {err.lineno})") from None
        for p in found:
            p.path = path
        params += found
    return params


def edit_for(source: str, cand: Candidate) -> EditBlock:
    """A SEARCH/REPLACE block that changes one value, with enough context lines to be unique."""
    lines = source.split("\n")
    p = cand.param
    i = p.lineno - 1
    line = lines[i]
    new_line = _replace_keeping_comment(line, p.col, p.end_col, source_literal(p.kind, cand.new, p.base))
    lo = i
    while _count(lines, lines[lo : i + 1]) > 1 and lo > 0:
        lo -= 1
    search = lines[lo : i + 1]
    replace = lines[lo:i] + [new_line]
    return EditBlock("\n".join(search) + "\n", "\n".join(replace) + "\n", p.path)


def _replace_keeping_comment(line: str, col: int, end: int, literal: str) -> str:
    """Swap the literal; keep the comment in its column when the spaces allow it."""
    rest = line[end:]
    gap = len(rest) - len(rest.lstrip(" "))
    if rest.strip().startswith("#"):
        gap = max(1, gap - (len(literal) - (end - col)))
        return line[:col] + literal + " " * gap + rest.lstrip(" ")
    return line[:col] + literal + rest


def _count(lines: list[str], window: list[str]) -> int:
    n = len(window)
    return sum(1 for k in range(len(lines) - n + 1) if lines[k : k + n] == window)


REGISTRY["hparam"] = HparamProposer
