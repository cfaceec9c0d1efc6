"""The statistics against values worked out by hand."""

import math

import numpy as np
import pytest

from catsdogs.evaluation import statistics as st
def test_wilson_interval_matches_the_hand_computed_one():
    # 750 of 1,000, z = 1.959964: centre (0.75 + z^2/2000) / (1 + z^2/1000) = 0.749043,
    # half-width z * sqrt(0.75 * 0.25 / 1000 + z^2 / 4e6) / (1 + z^2/1000) = 0.026804.
    low, high = st.wilson_interval(750, 1000)
    assert low == pytest.approx(0.722239, abs=2e-6)
    assert high == pytest.approx(0.775847, abs=2e-6)
    # None right of 10: the textbook upper bound z^2 / (10 + z^2) = 0.2775.
    assert st.wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=2e-6)


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="11 of 10"):
        st.wilson_interval(11, 10)


def test_mcnemar_on_a_known_disagreement_table():
    # 10 photos only the first model got right, 2 only the second:
    # two-sided exact p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096.
    assert st.mcnemar_exact(10, 2) == pytest.approx(158 / 4096, rel=1e-12)
    assert st.mcnemar_exact(2, 10) == pytest.approx(158 / 4096, rel=1e-12)
    assert st.mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert st.mcnemar_exact(0, 0) == 1.0


def table_outcomes(both: int, only_first: int, only_second: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    first = [True] * both + [True] * only_first + [False] * only_second + [False] * neither
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return np.array(first), np.array(second)


def test_paired_comparison_of_a_known_table():
    first, second = table_outcomes(both=80, only_first=10, only_second=2, neither=8)
    paired = st.paired_comparison("a", "b", first, second)
    assert (paired.n, paired.b, paired.c) == (100, 10, 2)
    assert paired.difference == pytest.approx(-0.08)
    # half-width 1.959964 * sqrt(12 - 8^2 / 100) / 100 = 0.066060
    assert paired.low == pytest.approx(-0.08 - 0.066060, abs=1e-5)
    assert paired.high == pytest.approx(-0.08 + 0.066060, abs=1e-5)
    assert paired.p_value == pytest.approx(158 / 4096)
    assert st.verdict(paired) == st.CONTRADICTS
    reverse = st.paired_comparison("b", "a", second, first)
    assert st.verdict(reverse) == st.SUPPORTS
    close = st.paired_comparison("a", "b", *table_outcomes(80, 6, 4, 10))
    assert st.verdict(close) == st.NOISE


def test_paired_comparison_needs_the_same_photos():
    with pytest.raises(ValueError, match="same non-empty photos"):
        st.paired_comparison("a", "b", np.ones(3, bool), np.ones(4, bool))


def test_calibration_of_known_probabilities():
    labels = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    # every bin holds one photo: gaps 0.1, 0.2, 0.2, 0.1
    assert st.expected_calibration_error(labels, p) == pytest.approx(0.15)
    curve = st.reliability_curve(labels, p)
    assert curve["photos"].tolist() == [1, 1, 1, 1]
    assert curve["dog_share"].tolist() == [0.0, 0.0, 1.0, 1.0]
    # Two photos at P(dog) 0.55, one a dog: 0.05 off; two sure and right: 0.
    assert st.expected_calibration_error([0, 1, 1, 0], [0.55, 0.55, 1.0, 0.0]) == pytest.approx(0.025)
    stats = st.model_statistics("m", labels, p, resamples=200, seed=0)
    assert stats.brier == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert stats.accuracy == 1.0


def test_bootstrap_auc_interval_is_seeded_and_shrinks_with_photos():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    p = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 2000), 0, 1)
    small = st.bootstrap_auc_interval(labels[:200], p[:200], resamples=500, seed=1)
    again = st.bootstrap_auc_interval(labels[:200], p[:200], resamples=500, seed=1)
    large = st.bootstrap_auc_interval(labels, p, resamples=500, seed=1)
    assert small == again
    from sklearn.metrics import roc_auc_score

    assert small[0] < roc_auc_score(labels[:200], p[:200]) < small[1]
    assert large[0] < roc_auc_score(labels, p) < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    # A perfect ranking stays perfect in every resample.
    assert st.bootstrap_auc_interval([0, 0, 1, 1] * 5, [0.1, 0.2, 0.8, 0.9] * 5, resamples=100, seed=0) == (1.0, 1.0)


def test_story_uses_the_best_from_scratch_model_and_skips_missing_ones():
    n = 50
    correct = {
        "scratch_cnn": np.arange(n) < 30,
        "regularized_cnn": np.arange(n) < 35,
        "vgg16_features": np.arange(n) < 48,
    }
    accuracy = {m: float(v.mean()) for m, v in correct.items()}
    steps = st.story_comparisons(correct, accuracy)
    pairs = [(p.before, p.after) for p, _ in steps]
    assert pairs == [("scratch_cnn", "regularized_cnn"), ("regularized_cnn", "vgg16_features")]
    table = st.comparisons_table(steps)
    assert table["only_after_right"].tolist() == [5, 13]
    assert table["verdict"].tolist() == [st.NOISE, st.SUPPORTS]  # 5 vs 0: p = 1/16; 13 vs 0: p < 0.001


def test_temperature_undoes_over_confidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(int)
    sharpened = 1 / (1 + np.exp(-3 * z))  # logits three times too large
    temperature = st.fit_temperature(labels, sharpened)
    assert temperature == pytest.approx(3.0, rel=0.05)
    softened = st.apply_temperature(sharpened, temperature)
    assert st.expected_calibration_error(labels, softened) < st.expected_calibration_error(labels, sharpened) / 2
    assert math.isclose(st.apply_temperature(np.array([0.5]), 2.0)[0], 0.5)
