"""The keep rules and the noise estimate, on scripted measurements: every path of judge()."""

import math

import pytest
from scipy import stats

from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import LEVELS, Levels, Noise, best_wants_trial, judge, pooled_noise

BEST = [1.0000, 1.0010]  # the baseline's two trials: sigma = 0.000707 with 1 dof
SIGMA = Noise(0.0005, 20)  # a night's worth of pairs
PAIR = [1.0, 1.0005]  # a best measured twice


def test_pooled_noise_is_the_pooled_sample_deviation():
    noise = pooled_noise([[1.0, 1.002], [0.99], [0.98, 0.981, 0.979]])
    # (0.001^2 * 2) + (0.001^2 * 2) over 1 + 2 degrees of freedom
    assert noise.dof == 3 and noise.sigma == pytest.approx(math.sqrt(4e-6 / 3))
    assert pooled_noise([[1.0], [0.9]]) == Noise(None, 0)
    assert str(Noise(None)).startswith("unknown")


def test_a_clear_win_is_kept_on_one_trial():
    v = judge("noise", [0.9950], BEST, SIGMA)
    assert v.decision == "keep" and v.delta == pytest.approx(-0.0055) and v.z > 8 and v.trials == 1


def test_an_unclear_win_is_confirmed_then_kept_on_its_mean():
    first = judge("noise", [0.9995], PAIR, SIGMA)  # 0.00075 better: 1.2 x its error
    assert first.decision == "confirm" and "trial 2 of at most 5" in first.why
    second = judge("noise", [0.9995, 0.9980], PAIR, SIGMA)  # 0.0015 better: 3.0 x
    assert second.decision == "keep" and second.z > stats.t.ppf(1 - LEVELS.clear, SIGMA.dof)
    assert "clear win after 2 trials" in second.why


def test_the_trials_go_on_while_unclear_and_the_cap_decides_on_the_mean():
    trials = [0.9995, 1.0000, 0.9998, 0.9996]  # a small gain that stays unclear
    for n in range(1, LEVELS.max_trials):
        assert judge("noise", trials[:n], PAIR, SIGMA).decision == "confirm", n
    bar = stats.t.ppf(1 - LEVELS.keep, SIGMA.dof)
    kept = judge("noise", trials + [0.9990], PAIR, SIGMA)  # mean 0.99958: 0.00067 better
    assert kept.decision == "keep" and bar < kept.z < stats.t.ppf(1 - LEVELS.clear, SIGMA.dof)
    assert "after 5 trials" in kept.why
    lost = judge("noise", trials + [1.0010], PAIR, SIGMA)  # mean 0.99998: 0.00027 better
    assert lost.decision == "discard" and lost.z < bar


def test_a_win_that_the_confirm_reverses_is_discarded_early():
    assert judge("noise", [0.9995], PAIR, SIGMA).decision == "confirm"
    v = judge("noise", [0.9995, 1.0006], PAIR, SIGMA)  # 0.0002 better: hopeless in 3 more
    assert v.decision == "discard" and "within the noise after 2 trials" in v.why


def test_a_loss_and_a_gain_within_the_noise_are_discarded_without_a_confirm():
    assert judge("noise", [1.0040], BEST, SIGMA).decision == "discard"
    assert judge("noise", [1.0003], BEST, SIGMA).decision == "discard"  # 0.0002 better: 0.33 x its error
    assert judge("noise", [0.9999], BEST, SIGMA).decision == "confirm"  # 0.0006 better: 0.98 x


def test_a_gain_below_min_delta_is_discarded_whatever_the_noise():
    tiny = Noise(1e-7, 50)
    v = judge("noise", [0.99995], [1.0], tiny, min_delta=1e-4)
    assert v.decision == "discard" and "min-delta" in v.why
    assert judge("noise", [0.99985], [1.0], tiny, min_delta=1e-4).decision == "keep"


def test_with_few_degrees_of_freedom_the_t_quantiles_ask_for_a_confirm():
    # The same first trial, 3.3 x its error: kept at once with 20 dof, confirmed with 1 dof.
    assert judge("noise", [0.9980], [1.0, 1.0], Noise(0.0005, 20)).decision == "keep"
    assert judge("noise", [0.9980], [1.0, 1.0], Noise(0.0005, 1)).decision == "confirm"


def test_unknown_noise_confirms_a_gain_once():
    assert judge("noise", [0.999], [1.0], Noise(None)).decision == "confirm"
    assert judge("noise", [0.999, 0.999], [1.0], Noise(None)).decision == "keep"
    assert judge("noise", [1.001], [1.0], Noise(None)).decision == "discard"


def test_a_deterministic_metric_keeps_any_gain_of_min_delta_at_once_without_dividing_by_zero():
    zero = Noise(0.0, 5)
    v = judge("noise", [0.9999], [1.0, 1.0], zero, min_delta=1e-4)
    assert v.decision == "keep" and v.z == math.inf and "deterministic" in v.why
    assert judge("noise", [0.99991], [1.0], zero, min_delta=1e-4).decision == "discard"  # 9e-5 < 1e-4
    assert judge("noise", [1.0], [1.0], zero, min_delta=0.0).decision == "discard"  # no gain at all
    assert judge("noise", [1.0000001], [1.0], zero, min_delta=0.0).decision == "discard"


def test_direction_max_judges_higher_as_better():
    up = judge("noise", [0.7055], [0.70, 0.7005], SIGMA, direction="max")
    assert up.decision == "keep" and up.delta == pytest.approx(0.00525) and up.z > 0
    assert judge("noise", [0.6950], [0.70, 0.7005], SIGMA, direction="max").decision == "discard"
    assert judge("noise", [0.70100], [0.70, 0.7005], SIGMA, direction="max").decision == "confirm"
    assert judge("greedy", [0.71], [0.70], SIGMA, direction="max").decision == "keep"
    assert judge("noise", [0.7002], [0.70], Noise(0.0, 3), direction="max").decision == "keep"
    with pytest.raises(AutoresearchError, match="bad direction"):
        judge("noise", [1.0], [1.0], SIGMA, direction="up")


def test_levels_are_a_parameter_and_one_trial_caps_reproduce_a_single_test():
    one = Levels(max_trials=1)
    assert judge("noise", [0.9995], PAIR, SIGMA, levels=one).decision == "keep"  # 1.2 x > t_0.85(20)
    assert judge("noise", [0.9998], PAIR, SIGMA, levels=one).decision == "discard"  # 0.5 x


def test_the_best_wants_a_second_trial_only_when_kept_on_one_noisy_trial():
    assert best_wants_trial([1.0], SIGMA)
    assert not best_wants_trial([1.0, 1.001], SIGMA)
    assert not best_wants_trial([1.0], Noise(0.0, 3)) and not best_wants_trial([1.0], Noise(None))


def test_greedy_keeps_any_strictly_lower_mean():
    assert judge("greedy", [0.99999], [1.0], SIGMA).decision == "keep"
    assert judge("greedy", [1.0], [1.0], SIGMA).decision == "discard"


def test_an_unknown_rule_is_a_one_line_error():
    with pytest.raises(AutoresearchError, match="bad --keep-rule"):
        judge("lucky", [1.0], [1.0], SIGMA)
