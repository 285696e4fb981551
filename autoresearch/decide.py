"""The run's decisions, as pure functions over values: what a finished training counts as
(`judge_run`), and what its row says (`decide`): crash, a baseline trial, keep, discard, one more
trial, or a win over a best that has moved since (to be re-measured as a combination).

No git, no files, no clock: the loop gathers the values, calls these, and applies the result.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoresearch.keep_rule import Noise, Verdict, judge
from autoresearch.runner import RunResult


@dataclass
class Trained:
    """A finished training as the loop judges it."""

    result: RunResult
    status: str  # "ok" (finished, to be judged against its base) or "crash"
    reason: str
    fixable: bool = False  # a crash the proposer may be shown (not a timeout, not a tampering)
    val_bpb: float = 0.0
    cache_changed: bool = False  # the lab's cache changed: the run stops after this row
    model: Path | None = None  # the model train.py handed over (when the audit is on)


@dataclass(frozen=True)
class Decision:
    """What one trial's row says, and what follows from it."""

    status: str  # keep | discard | crash | trial
    reason: str
    verdict: Verdict | None = None  # the keep rule's call (None for a crash)
    combine: bool = False  # a win over a best that has moved: re-apply the change on the new best


def judge_run(result: RunResult, reasons: Sequence[str], cache_changed: bool, model: Path | None,
              target=None, log: str = "") -> Trained:
    """A crash for what the run did (`reasons`: tampering, a held-out read, a changed cache), for
    how it ended, or for its val_bpb; otherwise ok, to be judged against its base.

    A declared target (`target`, a target.Target that is not the lab) is judged by its own
    output instead (judge.judge_output: the metric, require lines, a metric printed twice,
    constraints); its value is carried as the result's val_bpb, the row's second column."""
    if reasons:
        return Trained(result, "crash", "; ".join(reasons), cache_changed=cache_changed)
    if target is not None and not target.lab and result.status not in ("timeout", "cancelled", "lost"):
        from autoresearch.judge import judge_output

        measured = judge_output(target, log, result.returncode)
        result.metrics = {**measured.metrics, "val_bpb": measured.value}
        result.status, result.reason = ("ok", "") if measured.ok else ("crash", measured.reason)
        if not measured.ok:
            return Trained(result, "crash", measured.reason, fixable=True)
        return Trained(result, "ok", "", val_bpb=float(measured.value))
    if result.status != "ok":
        return Trained(result, "crash", result.reason or result.status,
                       fixable=result.status in ("crash", "diverged"))
    val = result.metrics.get("val_bpb")
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        return Trained(result, "crash", f"val_bpb is {val}")
    return Trained(result, "ok", "", val_bpb=float(val), model=model)


def tamper_reasons(changed: Sequence[str], known: set[str], lab: bool) -> list[str]:
    """What a run changed in its folder that makes it a crash: a file it was given (fixed or
    edited), and in the lab any file it wrote (a declared target's new files are its own)."""
    modified = [name for name in changed if name in known]
    written = [name for name in changed if name not in known] if lab else []
    return ((["modified " + ", ".join(modified[:5])] if modified else [])
            + (["wrote files: " + ", ".join(written[:5])] if written else []))


def refused(reason: str, log: Path) -> Trained:
    """A change that never trained because what it did is itself a crash (a declared target's
    proposal that changed a fixed file)."""
    return Trained(RunResult("crash", {}, log, 0.0, None, reason), "crash", reason)


def decide(trained: Trained, earlier: Sequence[float], trial: int, *, baseline: bool, parent: str,
           base: Sequence[float], moved_to: str | None, noise: Noise, rule: str, min_delta: float, baseline_repeats: int,
           direction: str = "min") -> Decision:
    """The row of trial `trial` (`earlier`: the measured values of the trials before it).

    A baseline trial sets the bar: `trial` until it has its repeats, then keep. A candidate is
    judged against `base`, the trials of `parent`, the commit it was built on. `moved_to`: the best commit
    when it is no longer that base; a keep then becomes a discard whose change is to be combined
    with the new best (nothing untested is kept).
    """
    if trained.status == "crash":
        reason = trained.reason if trial == 1 else f"trial {trial} crashed: {trained.reason}"
        return Decision("crash", reason)
    values = [*earlier, trained.val_bpb]
    if baseline:
        mean = sum(values) / len(values)
        status = "keep" if len(values) >= baseline_repeats else "trial"
        return Decision(status, "", Verdict("keep", mean, 0.0, None, "baseline", noise.sigma))
    verdict = judge(rule, values, tuple(base), noise, min_delta, direction)  # delta > 0 is better for max
    status = {"keep": "keep", "discard": "discard", "confirm": "trial"}[verdict.decision]
    if status == "keep" and moved_to is not None:
        return Decision("discard", f"beat its base {parent} ({verdict.why}), but the best moved to {moved_to}", verdict,
                        combine=True)
    return Decision(status, verdict.why, verdict)
