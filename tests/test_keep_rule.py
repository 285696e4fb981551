"""The keep rules and the noise estimate, on scripted measurements."""

import math

import pytest
from scipy import stats

from autoresearch.errors import AutoresearchError
from autoresearch.keep_rule import Noise, judge, pooled_noise

BEST = [1.0000, 1.0010]  # the baseline's two trials: sigma = 0.000707 with 1 dof
SIGMA = Noise(0.0005, 20)  # a night's worth of pairs


def test_pooled_noise_is_the_pooled_sample_deviation():
    noise = pooled_noise([[1.0, 1.002], [0.99], [0.98, 0.981, 0.979]])
    # (0.001^2 * 2) + (0.001^2 * 2) over 1 + 2 degrees of freedom
    assert noise.dof == 3 and noise.sigma == pytest.approx(math.sqrt(4e-6 / 3))
    assert pooled_noise([[1.0], [0.9]]) == Noise(None, 0)
    assert str(Noise(None)).startswith("unknown")


def test_a_clear_win_is_kept_on_one_trial():
    v = judge("noise", [0.9950], BEST, SIGMA)
    assert v.decision == "keep" and v.delta == pytest.approx(-0.0055) and v.z > 8


def test_a_grey_zone_win_is_confirmed_then_kept_on_its_mean():
    first = judge("noise", [0.9995], [1.0, 1.0005], SIGMA)  # 0.00075 better: 1.2 x its error
    assert first.decision == "confirm"
    second = judge("noise", [0.9995, 0.9990], [1.0, 1.0005], SIGMA)  # 0.001 better: 2.0 x
    assert second.decision == "keep" and second.z > stats.t.ppf(0.95, SIGMA.dof)


def test_a_grey_zone_win_that_the_confirm_reverses_is_discarded():
    assert judge("noise", [0.9995], [1.0, 1.0005], SIGMA).decision == "confirm"
    v = judge("noise", [0.9995, 1.0002], [1.0, 1.0005], SIGMA)  # 0.0004 better: 0.8 x
    assert v.decision == "discard" and "after 2 trials" in v.why


def test_a_loss_and_a_gain_within_half_a_sigma_are_discarded_without_a_confirm():
    assert judge("noise", [1.0040], BEST, SIGMA).decision == "discard"
    assert judge("noise", [1.0003], BEST, SIGMA).decision == "discard"  # 0.0002 better: 0.33 x its error
    assert judge("noise", [1.0001], BEST, SIGMA).decision == "confirm"  # 0.0004 better: 0.65 x


def test_a_gain_below_min_delta_is_discarded_whatever_the_noise():
    tiny = Noise(1e-7, 50)
    v = judge("noise", [0.99995], [1.0], tiny, min_delta=1e-4)
    assert v.decision == "discard" and "min-delta" in v.why
    assert judge("noise", [0.99985], [1.0], tiny, min_delta=1e-4).decision == "keep"


def test_with_few_degrees_of_freedom_the_t_quantiles_ask_for_a_confirm():
    # The same first trial, 3.3 x its error: kept at once with 20 dof, confirmed with 1 dof.
    assert judge("noise", [0.9980], [1.0, 1.0], Noise(0.0005, 20)).decision == "keep"
    assert judge("noise", [0.9980], [1.0, 1.0], Noise(0.0005, 1)).decision == "confirm"


def test_unknown_noise_confirms_a_gain_and_zero_noise_decides_at_once():
    assert judge("noise", [0.999], [1.0], Noise(None)).decision == "confirm"
    assert judge("noise", [1.001], [1.0], Noise(None)).decision == "discard"
    assert judge("noise", [0.999], [1.0, 1.0], Noise(0.0, 1)).decision == "keep"


def test_greedy_keeps_any_strictly_lower_mean():
    assert judge("greedy", [0.99999], [1.0], SIGMA).decision == "keep"
    assert judge("greedy", [1.0], [1.0], SIGMA).decision == "discard"


def test_an_unknown_rule_is_a_one_line_error():
    with pytest.raises(AutoresearchError, match="bad --keep-rule"):
        judge("lucky", [1.0], [1.0], SIGMA)
