"""When is a change kept? The keep rules, as pure functions of measurements.

    noise (default)  keep a change only when it is better than the best beyond the noise:
                     one measurement that wins clearly is kept, one that loses or barely wins
                     is discarded, one in between is measured once more (a confirm trial) and
                     judged on its mean against the best's mean.
    greedy           upstream's rule: keep a strictly lower val_bpb than the best's.

The noise is the pooled standard deviation of repeated trials of one commit (the baseline's
repeats, then every confirm), so it is re-estimated as the night goes on. Its uncertainty is
carried by Student's t with the pooled degrees of freedom: with one pair measured (1 dof) the
thresholds are wide and most promising changes get a confirm, which adds a degree of freedom.
docs/keep_rule.md gives the reasons for the three levels below and the benchmark behind them.
"""

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Sequence

from scipy import stats

from autoresearch.errors import AutoresearchError

RULES = ("noise", "greedy")
MIN_DELTA = 1e-4  # val_bpb: below this a gain is not worth a keep, whatever the noise says
# One-sided tail levels of the gain's t statistic (gain / standard error of the difference):
CLEAR_LEVEL = 0.005  # one trial this far above zero is kept at once (about 2.6 sigma)
KEEP_LEVEL = 0.05  # after the confirm, the mean gain must be significant at 5 %
LOW_LEVEL = 0.31  # one trial not even half a sigma above zero is discarded without a confirm
MAX_TRIALS = 2  # a candidate is measured at most twice (its first trial and one confirm)


@dataclass(frozen=True)
class Noise:
    """The pooled run-to-run standard deviation of val_bpb and its degrees of freedom."""

    sigma: float | None  # None until some commit was measured twice
    dof: int = 0

    def __str__(self) -> str:
        if self.sigma is None:
            return "unknown (no repeated trial yet)"
        return f"{self.sigma:.6f} ({self.dof} dof)"


def pooled_noise(groups: Sequence[Sequence[float]]) -> Noise:
    """Pool the variance of each group of repeated measurements of one commit."""
    squares, dof = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            mean = fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return Noise(math.sqrt(squares / dof), dof) if dof else Noise(None, 0)


@dataclass(frozen=True)
class Verdict:
    decision: str  # "keep" | "discard" | "confirm"
    mean: float  # the candidate's mean val_bpb so far
    delta: float  # mean minus the best's mean (negative: better)
    z: float | None  # gain over its standard error; None when the noise is unknown
    why: str  # one line for the log and the row's reason
    sigma: float | None = None  # the noise it was judged with


def judge(rule: str, candidate: Sequence[float], best: Sequence[float], noise: Noise,
          min_delta: float = MIN_DELTA) -> Verdict:
    """The verdict on a candidate's trials (val_bpb values) against the best's trials."""
    if not candidate or not best:
        raise ValueError("judge needs at least one measurement on each side")
    mean, reference = fmean(candidate), fmean(best)
    delta = mean - reference
    gain = -delta
    if rule == "greedy":
        decision = "keep" if mean < reference else "discard"
        return Verdict(decision, mean, delta, None, f"greedy: {mean:.6f} vs best {reference:.6f}", noise.sigma)
    if rule != "noise":
        raise AutoresearchError(f"bad --keep-rule {rule!r}: use {' or '.join(RULES)}")
    n = len(candidate)
    can_confirm = n < MAX_TRIALS
    if noise.sigma is None:  # nothing repeated yet: only a second trial can tell
        if gain <= min_delta:
            return Verdict("discard", mean, delta, None, f"gain {gain:+.6f} below --min-delta {min_delta:g}", noise.sigma)
        decision = "confirm" if can_confirm else "keep"
        return Verdict(decision, mean, delta, None, f"gain {gain:+.6f}, noise not measured yet", noise.sigma)
    se = noise.sigma * math.sqrt(1 / n + 1 / len(best))
    z = gain / se if se > 0 else (math.inf if gain > 0 else -math.inf)

    def level(tail: float) -> float:
        return float(stats.t.ppf(1 - tail, noise.dof))

    text = f"gain {gain:+.6f} = {z:+.2f} x its standard error (sigma {noise.sigma:.6f}, {noise.dof} dof)"
    if gain <= min_delta:
        return Verdict("discard", mean, delta, z, f"{text}; below --min-delta {min_delta:g}", noise.sigma)
    if not can_confirm:
        decision = "keep" if z > level(KEEP_LEVEL) else "discard"
        return Verdict(decision, mean, delta, z, f"{text} after {n} trials", noise.sigma)
    if z > level(CLEAR_LEVEL):
        return Verdict("keep", mean, delta, z, f"{text}: a clear win", noise.sigma)
    # The lower edge uses the normal quantile, not t: with few degrees of freedom t would send
    # almost everything to a discard, while a confirm is exactly what adds a degree of freedom.
    if z <= float(stats.norm.ppf(1 - LOW_LEVEL)):  # LOW_LEVEL is looked up here, bench/keep_rule.py tunes it
        return Verdict("discard", mean, delta, z, f"{text}: within the noise", noise.sigma)
    return Verdict("confirm", mean, delta, z, f"{text}: grey zone, confirming", noise.sigma)
