"""Judge what one experiment printed, purely: the metric, secondary metrics, or a crash reason.

A declared target's metric is read from lines of three shapes (any spacing):

    avg_score:    2340.2
    avg_score=2340.2
    METRIC avg_score=2340.2

A run is a crash, with a reason saying which, when it exits non-zero, never prints the metric,
prints a value that is not a finite number, prints the metric twice with different values (an
edited file printing a metric of its own before or after the fixed benchmark's), lacks a
`require` line or prints that line's key with another value (`correct: False` next to a forged
`correct: True`), or breaks a constraint. The nanochat lab is judged as it always was, by its
`---` summary block and FAIL line (summary.py, runner.judge).

`better(direction, a, b)` and `improvement(direction, new, old)` sign a change by direction,
for the keep rule and the report.
"""

import math
import re
from dataclasses import dataclass, field

from autoresearch.target import Target

VALUE = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity))"
MAX_SEEN = 8  # `name: value` lines listed when the metric is missing


@dataclass
class Measured:
    """What one run's output says. `reason` is None for a usable measurement, else why it is a crash."""

    value: float | None
    metrics: dict[str, float | int | str] = field(default_factory=dict)  # the metric, secondary ones, constraints'
    reason: str | None = None
    status: str = "ok"  # "ok" | "crash" | "diverged" (the lab's FAIL line)

    @property
    def ok(self) -> bool:
        return self.reason is None


def judge_output(target: Target, text: str, exit_code: int | None) -> Measured:
    """The measurement of one finished run of `target` from its whole output and exit code.
    (A timeout is the runner's to report; this judges what a run that ended printed.)"""
    if target.lab:
        return _judge_lab(text, exit_code)
    from autoresearch.runner import crash_reason

    metrics: dict[str, float | int | str] = {}
    for name in target.secondary:
        values = metric_values(text, name)
        if values and math.isfinite(values[-1]):
            metrics[name] = values[-1]
    if exit_code:
        return _crash(crash_reason(text, exit_code), metrics)
    values = metric_values(text, target.metric)
    raw = raw_values(text, target.metric)
    if not raw:
        return _crash(missing_reason(text, target.metric), metrics)
    if not values:
        return _crash(f"{target.metric} is {raw[-1]!r}, not a number", metrics)
    if len(set(values)) > 1 and not all(math.isnan(v) for v in values):
        shown = ", ".join(f"{v:g}" for v in values[:4])
        return _crash(f"{target.metric} printed {len(values)} times with different values ({shown}): "
                      "a second metric line, maybe printed by an edited file", metrics)
    value = values[-1]
    if not math.isfinite(value):
        return _crash(f"{target.metric} is {value}, not a finite number", metrics)
    metrics[target.metric] = value
    for line in target.require:
        why = missing_requirement(text, line)
        if why:
            return Measured(value, metrics, why, "crash")
    for c in target.constraints:
        got = metric_values(text, c.name)
        if not got:
            return Measured(value, metrics, f"constraint {c}: {c.name} was not printed", "crash")
        if len(set(got)) > 1:
            return Measured(value, metrics, f"constraint {c}: {c.name} printed with different values", "crash")
        metrics[c.name] = got[-1]
        if not (math.isfinite(got[-1]) and c.holds(got[-1])):
            return Measured(value, metrics, f"constraint {c} broken: {c.name} is {got[-1]:g}", "crash")
    return Measured(value, metrics)


def _crash(reason: str, metrics: dict) -> Measured:
    return Measured(None, metrics, reason, "crash")


def _judge_lab(text: str, exit_code: int | None) -> Measured:
    from autoresearch.runner import judge

    result = judge(text, exit_code, False, 0.0)
    value = result.metrics.get("val_bpb") if result.status == "ok" else None
    return Measured(value, dict(result.metrics), result.reason or None, result.status)


# ---------------------------------------------------------------------------
# Reading lines
# ---------------------------------------------------------------------------


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\s*(?:METRIC\s+)?{re.escape(name)}\s*[:=]\s*(.*?)\s*$")


def raw_values(text: str, name: str) -> list[str]:
    """The text after `name:` / `name=` / `METRIC name=` on every line that has it, in order."""
    pattern = _pattern(name)
    return [m.group(1) for line in text.splitlines() if (m := pattern.match(line))]


def metric_values(text: str, name: str) -> list[float]:
    """The numbers printed for `name`, in order; a value may carry a unit after it (`12.5 ms`)."""
    number = re.compile(rf"^{VALUE}(?:\s+\S+)?$", re.IGNORECASE)
    out = []
    for raw in raw_values(text, name):
        m = number.match(raw)
        if m:
            out.append(float(m.group(1)))
    return out


def seen_lines(text: str, limit: int = MAX_SEEN) -> list[str]:
    """The `name: value` / `name=value` lines with a number as value, for an error that says
    what the command did print."""
    pattern = re.compile(rf"^\s*(?:METRIC\s+)?([A-Za-z_][\w.\-/]*)\s*[:=]\s*{VALUE}(?:\s+\S+)?\s*$", re.IGNORECASE)
    seen = []
    for line in text.splitlines():
        if pattern.match(line) and line.strip() not in seen:
            seen.append(line.strip())
    return seen[:limit]


def missing_reason(text: str, name: str) -> str:
    seen = seen_lines(text)
    if seen:
        return f"no {name} line in the output; it printed {'; '.join(seen)}"
    return f"no {name} line in the output (no `name: value` line at all)"


def missing_requirement(text: str, required: str) -> str | None:
    """None when the line `required` was printed (any spacing around `:`/`=`) and its key never
    with another value; else the reason."""
    want = _normal(required)
    lines = [_normal(line) for line in text.splitlines()]
    if want not in lines:
        return f"required line {required!r} missing"
    key = re.match(r"^([^:=]+)[:=]", want)
    if key:
        others = sorted({line for line in lines if line.startswith(key.group(0)) and line != want})
        if others:
            return f"required line {required!r} contradicted by {others[0]!r}"
    return None


def _normal(line: str) -> str:
    line = " ".join(line.split())
    return re.sub(r"^\s*([^\s:=]+)\s*([:=])\s*", r"\1\2 ", line).strip()


# ---------------------------------------------------------------------------
# Direction
# ---------------------------------------------------------------------------


def improvement(direction: str, new: float, old: float) -> float:
    """How much better `new` is than `old`, positive when better: old - new for "min"."""
    if direction == "min":
        return old - new
    if direction == "max":
        return new - old
    raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")


def better(direction: str, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b`."""
    return improvement(direction, a, b) > 0


def best_of(direction: str, values) -> float:
    """The best of some values by direction."""
    return max(values) if direction == "max" else min(values)
