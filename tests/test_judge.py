"""Judging a run's output, purely: the metric, secondary metrics, constraints, crash reasons."""

import math
from pathlib import Path

import pytest

from autoresearch.judge import better, best_of, improvement, judge_output, metric_values
from autoresearch.target import Constraint, Target, lab_target

DATA = Path(__file__).resolve().parent / "data"


def target(**kw) -> Target:
    base = dict(edit=("bot.py",), run="python evaluate.py", metric="avg_score", direction="max")
    base.update(kw)
    return Target(**base)


@pytest.mark.parametrize("line", [
    "avg_score: 2340.2", "avg_score:    2340.2", "  avg_score :2340.2", "avg_score=2340.2",
    "avg_score = 2340.2", "METRIC avg_score=2340.2", "avg_score: 2.3402e3", "avg_score: 2340.2 points",
])
def test_every_metric_line_shape_is_read(line):
    m = judge_output(target(), f"starting\n{line}\ndone\n", 0)
    assert m.ok and m.value == pytest.approx(2340.2) and m.metrics["avg_score"] == m.value


def test_a_longer_name_or_a_prefix_is_not_the_metric():
    m = judge_output(target(), "avg_score_std: 3.0\nbest_avg_score: 9\n", 0)
    assert not m.ok and m.reason.startswith("no avg_score line in the output; it printed avg_score_std: 3.0")


@pytest.mark.parametrize("text, code, words", [
    ("avg_score: 1\n", 1, "exit 1"),
    ("Traceback (most recent call last):\n  x\nValueError: bad move\n", 1, "exit 1: ValueError: bad move"),
    ("avg_score: 1\n", -9, "killed by SIGKILL"),
    ("hello\n", 0, "no avg_score line in the output (no `name: value` line at all)"),
    ("avg_score: nan\n", 0, "avg_score is nan, not a finite number"),
    ("avg_score: inf\n", 0, "avg_score is inf, not a finite number"),
    ("avg_score: fast\n", 0, "avg_score is 'fast', not a number"),
    ("avg_score: 99\navg_score: 12\n", 0, "avg_score printed 2 times with different values (99, 12)"),
])
def test_crashes_say_which(text, code, words):
    m = judge_output(target(), text, code)
    assert not m.ok and m.status == "crash" and m.value is None and words in m.reason


def test_the_same_value_printed_twice_is_fine():
    assert judge_output(target(), "avg_score: 5\navg_score: 5.0\n", 0).value == 5.0


def test_required_lines_any_spacing_and_never_contradicted():
    t = target(require=("correct: True",))
    assert judge_output(t, "avg_score: 5\ncorrect:   True\n", 0).ok
    missing = judge_output(t, "avg_score: 5\n", 0)
    assert missing.reason == "required line 'correct: True' missing" and missing.value == 5.0
    forged = judge_output(t, "correct: True\navg_score: 5\ncorrect: False\n", 0)
    assert forged.reason == "required line 'correct: True' contradicted by 'correct: False'"


def test_constraints_and_secondary_metrics():
    t = target(secondary=("seconds", "absent"), constraints=(Constraint("peak_mb", "<=", 1024),))
    ok = judge_output(t, "avg_score: 5\nseconds: 2.5\npeak_mb: 900\n", 0)
    assert ok.ok and ok.metrics == {"seconds": 2.5, "avg_score": 5.0, "peak_mb": 900.0}
    broken = judge_output(t, "avg_score: 5\npeak_mb: 2048\n", 0)
    assert broken.reason == "constraint peak_mb <= 1024 broken: peak_mb is 2048"
    unprinted = judge_output(t, "avg_score: 5\n", 0)
    assert unprinted.reason == "constraint peak_mb <= 1024: peak_mb was not printed"
    crashed = judge_output(t, "seconds: 1.5\n", 3)
    assert crashed.metrics == {"seconds": 1.5} and crashed.reason == "exit 3"


def test_lab_target_reads_the_summary_block_of_a_real_log():
    text = (DATA / "upstream_h100.log").read_text()
    m = judge_output(lab_target(), text, 0)
    assert m.ok and m.value == pytest.approx(m.metrics["val_bpb"]) and 0.5 < m.value < 2


def test_lab_target_reports_divergence_and_missing_summary():
    m = judge_output(lab_target(), (DATA / "diverged_upstream.log").read_text(), 1)
    assert m.status == "diverged" and m.reason.startswith("diverged: FAIL")
    # a declared-style metric line is not a lab summary: the lab reads only its `---` block
    assert judge_output(lab_target(), "val_bpb: 0.9\n", 0).reason == "no summary (exit 0)"


def test_direction_signs_improvements():
    assert improvement("min", 0.9, 1.0) == pytest.approx(0.1) and better("min", 0.9, 1.0)
    assert improvement("max", 0.9, 1.0) == pytest.approx(-0.1) and not better("max", 0.9, 1.0)
    assert not better("max", 1.0, 1.0) and best_of("max", [1, 3, 2]) == 3 and best_of("min", [2, 1]) == 1
    with pytest.raises(ValueError):
        improvement("up", 1, 2)


def test_metric_values_keeps_order_and_skips_non_numbers():
    values = metric_values("x: 1\nx: oops\nMETRIC x=3\nx: -inf\n", "x")
    assert values[:2] == [1.0, 3.0] and math.isinf(values[2])
