"""When is a change kept? The keep rules, as pure functions of measurements.

    noise (default)  a sequential test: keep a change only when it is better than the best beyond
                     the noise. A first trial that wins clearly is kept, one that loses, or wins
                     by too little to ever reach the bar, is discarded; one in between is trained
                     again (a confirm trial), and again, until the evidence is clear either way
                     or the candidate has MAX_TRIALS trials, when it is judged on its mean.
    greedy           upstream's rule: keep a strictly better mean than the best's.

The noise is the pooled standard deviation of repeated trials of one commit (the baseline's
repeats, then every confirm), so it is re-estimated as the night goes on. Its uncertainty is
carried by Student's t with the pooled degrees of freedom. "Better" is lower by default
(val_bpb); direction="max" judges a metric where higher is better. docs/keep_rule.md gives the
reasons for every level below and the benchmark behind them.
"""

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Sequence

from scipy import stats

from autoresearch.errors import AutoresearchError

RULES = ("noise", "greedy")
DIRECTIONS = ("min", "max")
MIN_DELTA = 1e-4  # val_bpb: below this a gain is not worth a keep, whatever the noise says


@dataclass(frozen=True)
class Levels:
    """The sequential test's constants (one-sided tail levels of the gain's t statistic)."""

    clear: float = 0.005  # kept before the cap when this far above zero (about 2.6 standard errors)
    keep: float = 0.15  # at the cap, the mean gain must be significant at this level
    futile: float = 0.20  # discarded early when, were the gain what it looks like now, the
    #                      chance of clearing the keep bar by the cap is below this
    max_trials: int = 5  # a candidate is trained at most this many times


LEVELS = Levels()
# Kept for callers of the first rule's names: the clear and final levels.
CLEAR_LEVEL, KEEP_LEVEL, MAX_TRIALS = LEVELS.clear, LEVELS.keep, LEVELS.max_trials


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
    mean: float  # the candidate's mean so far
    delta: float  # mean minus the best's mean (negative: better when direction is "min")
    z: float | None  # gain over its standard error; None when the noise is unknown
    why: str  # one line for the log and the row's reason
    sigma: float | None = None  # the noise it was judged with
    trials: int = 0  # the candidate's trials it was judged on


def judge(rule: str, candidate: Sequence[float], best: Sequence[float], noise: Noise,
          min_delta: float = MIN_DELTA, direction: str = "min", levels: Levels = LEVELS) -> Verdict:
    """The verdict on a candidate's trials against the best's trials (every trial of the best
    the caller has: re-measurements of the best belong here too, and temper its lucky mean)."""
    if not candidate or not best:
        raise ValueError("judge needs at least one measurement on each side")
    if direction not in DIRECTIONS:
        raise AutoresearchError(f"bad direction {direction!r}: use min or max")
    n = len(candidate)
    mean, reference = fmean(candidate), fmean(best)
    delta = mean - reference
    gain = -delta if direction == "min" else delta  # positive: better

    def verdict(decision: str, z: float | None, why: str) -> Verdict:
        return Verdict(decision, mean, delta, z, why, noise.sigma, n)

    if rule == "greedy":
        better = " (higher is better)" if direction == "max" else ""
        return verdict("keep" if gain > 0 else "discard", None, f"greedy: {mean:.6f} vs best {reference:.6f}{better}")
    if rule != "noise":
        raise AutoresearchError(f"bad --keep-rule {rule!r}: use {' or '.join(RULES)}")
    if gain <= 0 or gain < min_delta - 1e-12:  # (a gain of exactly min_delta, up to rounding, is enough)
        text = f"gain {gain:+.6f}" + (f" below --min-delta {min_delta:g}" if gain > 0 else ": no better")
        return verdict("discard", None if not noise.sigma else gain / _se(noise.sigma, n, len(best)), text)
    if noise.sigma is None:  # nothing repeated yet: only another trial can tell
        decision = "confirm" if n < 2 else "keep"
        return verdict(decision, None, f"gain {gain:+.6f}, noise not measured yet")
    if noise.sigma == 0:  # a deterministic metric: every gain is real
        return verdict("keep", math.inf, f"gain {gain:+.6f} on a deterministic metric (sigma 0)")
    return _sequential(gain, n, len(best), noise, levels, verdict)


def _se(sigma: float, n: int, m: int) -> float:
    """Standard error of the difference of a mean of n trials and a mean of m trials."""
    return sigma * math.sqrt(1 / n + 1 / m)


def _sequential(gain: float, n: int, m: int, noise: Noise, levels: Levels, verdict) -> Verdict:
    sigma, dof = noise.sigma, noise.dof
    z = gain / _se(sigma, n, m)
    text = f"gain {gain:+.6f} = {z:+.2f} x its standard error (sigma {sigma:.6f}, {dof} dof)"
    if n >= levels.max_trials:
        keep = z > float(stats.t.ppf(1 - levels.keep, dof))
        return verdict("keep" if keep else "discard", z, f"{text} after {n} trials")
    if z > float(stats.t.ppf(1 - levels.clear, dof)):
        return verdict("keep", z, f"{text}: a clear win" + (f" after {n} trials" if n > 1 else ""))
    if _reach(gain, n, m, sigma, levels) < levels.futile:
        return verdict("discard", z, f"{text}: within the noise" + (f" after {n} trials" if n > 1 else ""))
    return verdict("confirm", z, f"{text}: unclear, trial {n + 1} of at most {levels.max_trials}")


def _reach(gain: float, n: int, m: int, sigma: float, levels: Levels) -> float:
    """The chance that the mean gain at the cap clears the keep bar, if the true gain is the one
    measured so far (conditional power at the current estimate). The bar uses the normal
    quantile: with few degrees of freedom t would call almost every candidate futile, while
    more trials are exactly what add degrees of freedom."""
    cap = levels.max_trials
    bar = float(stats.norm.ppf(1 - levels.keep)) * _se(sigma, cap, m)
    spread = sigma * math.sqrt(cap - n) / cap  # of the final mean gain, given the trials so far
    return float(stats.norm.cdf((gain - bar) / spread))


# ---------------------------------------------------------------------------
# Hooks for loop behaviour that does not exist yet (docs/keep_rule.md, "Not built")
# ---------------------------------------------------------------------------


def best_wants_trial(best: Sequence[float], noise: Noise, levels: Levels = LEVELS) -> bool:
    """Whether a loop that can re-measure the best should train it once more before judging the
    next candidate: a best kept on a single trial is the luckiest measurement of its commit,
    and every later candidate must beat that luck; a second trial halves the bias's variance.
    Nothing in the loop calls this yet; judge() already takes every trial of the best."""
    return noise.sigma is not None and noise.sigma > 0 and len(best) < 2 and levels.max_trials > 1
