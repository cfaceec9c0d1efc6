"""The duration estimate: its arithmetic, and that it measures every kind of work."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from catsdogs.core.config import parse_params
from catsdogs.core.profile_params import load_params_with_profile
from catsdogs.core.durations import format_duration
from catsdogs.speed.estimate import STAGE_OVERHEAD_SECONDS, Counts, print_estimate, stage_seconds

from conftest import TINY_PARAMS

ROOT = Path(__file__).resolve().parents[1]
RATES = {
    "scratch_cnn.train": 50.0, "regularized_cnn.train": 40.0, "augmented_cnn.train": 30.0,
    "vgg16_features.train": 1000.0, "vgg16_augmented.train": 10.0, "fine_tune.train": 5.0,
    "scratch_cnn.predict": 200.0, "regularized_cnn.predict": 100.0, "vgg16.predict": 20.0, "vgg16.top_predict": 50.0,
}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def test_stage_seconds_is_epochs_times_training_and_validation():
    params = parse_params({
        "scratch_cnn": {"epochs": 4, "steps_per_epoch": None},
        "augmented_cnn": {"epochs": 3, "steps_per_epoch": 10, "batch_size": 30},
        "fine_tune": {"epochs": 2, "steps_per_epoch": 5, "batch_size": 20},
        "vgg16_augmented": {"epochs": 2, "steps_per_epoch": 25, "batch_size": 30},
    })
    counts = Counts(train=3000, validation=1000, test=1000)
    seconds = stage_seconds(params, RATES, counts)
    assert seconds["scratch_cnn"] == pytest.approx(4 * (3000 / 50 + 1000 / 200) + STAGE_OVERHEAD_SECONDS)
    assert seconds["augmented_cnn"] == pytest.approx(3 * (300 / 30 + 1000 / 100) + STAGE_OVERHEAD_SECONDS)
    # Validation on saved outputs: fine_tune runs blocks 4-5, vgg16_augmented the head only.
    assert seconds["fine_tune"] == pytest.approx(2 * (100 / 5 + 1000 / 50) + STAGE_OVERHEAD_SECONDS)
    assert seconds["vgg16_augmented"] == pytest.approx(2 * (750 / 10 + 1000 / 3000) + STAGE_OVERHEAD_SECONDS)
    assert seconds["vgg16_bottleneck"] == pytest.approx(5000 / 20 + STAGE_OVERHEAD_SECONDS)
    assert seconds["evaluate"] == pytest.approx(
        1000 * (1 / 50 + 1 / 200 + 2 / 100) + 3 * 64 / 20 + STAGE_OVERHEAD_SECONDS
    )


def test_the_book_takes_far_longer_than_the_default_at_the_same_speeds():
    counts = Counts(3000, 1000, 1000)
    default = sum(stage_seconds(load_params_with_profile(ROOT / "params.yaml", None), RATES, counts).values())
    book = sum(stage_seconds(load_params_with_profile(ROOT / "params.yaml", "book"), RATES, counts).values())
    assert book > 10 * default


@pytest.mark.parametrize("seconds, text", [(600, "10 min"), (3 * 3600, "3.0 h"), (3 * 86400, "3.0 days")])
def test_format_duration(seconds, text):
    assert format_duration(seconds, rough=True) == text


def test_measure_rates_times_every_kind_of_work(capsys):
    params = parse_params({**TINY_PARAMS, "base": {"seed": 1, "image_size": 48}})
    seconds = print_estimate(params, Counts(32, 16, 16), steps=1)
    out = capsys.readouterr().out
    assert "Estimated total" in out and "fine_tune" in out
    assert set(seconds) == {
        "scratch_cnn", "regularized_cnn", "augmented_cnn", "vgg16_bottleneck",
        "vgg16_features", "vgg16_augmented", "fine_tune", "evaluate",
    }
    assert all(value > STAGE_OVERHEAD_SECONDS for value in seconds.values())
