"""make bench: its measurements, its figures and its targets."""

from __future__ import annotations

import json
import time

import keras
import numpy as np
import pytest

from catsdogs import speed
from catsdogs.benchmark import STAGES, BenchmarkError, run_benchmark, stage_timings, targets_met
from catsdogs.config import parse_params
from catsdogs.inputs import load_split_arrays

from conftest import TINY_PARAMS


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def test_vgg16_conv_flops_match_the_published_count():
    # VGG16's 13 convolutions at 224x224: 15.35 G multiply-adds (Simonyan & Zisserman's model).
    flops = speed.conv_flops_per_image(speed.vgg16_convolutional_base(224))
    assert flops == pytest.approx(2 * 15.35e9, rel=0.005)


def test_one_by_one_loading_gives_the_pipelines_photos(small_dataset):
    images, labels = speed.load_one_by_one(small_dataset / "train", 48)
    ours, our_labels, _ = load_split_arrays(small_dataset / "train", image_size=48)
    assert images.shape == ours.shape == (24, 48, 48, 3)
    np.testing.assert_array_equal(labels, our_labels)
    # Same photos, same size: PIL and TensorFlow resize alike up to rounding.
    assert np.abs(images - ours).mean() < 2.0


def test_matmul_rate_is_positive_and_finite():
    rate = speed.matmul_flops_per_second(sizes=(128, 256), repeats=2)
    assert 1e8 < rate < 1e15


class _UnevenModel:
    """Predicts in 0.2 s, except that one timed pass takes 2 s (a busy neighbour)."""

    def __init__(self, seconds):
        self.seconds = iter(seconds)

    def predict(self, images, batch_size, verbose):
        time.sleep(next(self.seconds))


def test_a_prediction_rate_is_not_thrown_by_one_slow_pass():
    images = np.zeros((10, 4, 4, 3), np.float32)
    model = _UnevenModel([0.0, 2.0, 0.2, 0.2])  # the warm-up, then three timed passes
    assert speed.predict_rate(model, images, batch_size=5) == pytest.approx(10 / 0.2, rel=0.2)


def _fake_timings(directory, missing=()):
    directory.mkdir(parents=True)
    for i, stage in enumerate(STAGES):
        if stage not in missing:
            (directory / f"{stage}.json").write_text(json.dumps(
                {"stage": stage, "wall_seconds": 60.0 + i, "peak_memory_mib": 1000.0 + i}
            ))
    return directory


def test_missing_stage_timings_say_to_run_the_pipeline(tmp_path):
    timings = _fake_timings(tmp_path / "timings", missing=("fine_tune",))
    with pytest.raises(BenchmarkError, match=r"fine_tune\.json not found: run the pipeline first"):
        stage_timings(timings)


def test_run_benchmark_measures_every_figure(small_dataset, tmp_path, capsys):
    params = parse_params({**TINY_PARAMS, "base": {"seed": 1, "image_size": 48}})
    timings = _fake_timings(tmp_path / "timings")
    result = run_benchmark(params, small_dataset, timings_dir=timings, repro=False)
    assert result["pipeline_minutes"] == pytest.approx(sum(60 + i for i in range(len(STAGES))) / 60, abs=0.01)
    assert result["peak_memory_gib"] == pytest.approx((1000 + len(STAGES) - 1) / 1024, abs=0.01)
    assert set(result["images_per_second"]) == {
        "decode_resize", "chapter_numpy_loading", "augmented_pipeline",
        "scratch_cnn.train", "augmented_cnn.train", "augmented_cnn.train_without_augmentation",
        "fine_tune.train", "vgg16_extraction",
    }
    assert all(v > 0 for v in result["images_per_second"].values())
    assert 0 < result["vgg16_flops"]["fraction_of_matmul"] < 1.5
    assert result["augmented_epoch_speedup_ceiling"] > 0
    assert result["augmented_epoch_seconds"]["steps"] == 3  # 24 photos in batches of 8
    assert set(result["met"]) == {"pipeline_minutes", "peak_memory_gib", "augmented_epoch_speedup", "loading_speedup"}
    json.dumps(result)  # all of it can be written
    out = capsys.readouterr().out
    assert "One augmented epoch" in out and "GFLOP/s" in out


def test_targets_met_compares_each_figure_with_its_target():
    met = targets_met({"pipeline_minutes": 44.0, "peak_memory_gib": 6.0, "loading_speedup": 3.5,
                       "augmented_epoch_speedup": 1.1, "noop_repro_seconds": 2.9})
    assert met == {"pipeline_minutes": True, "peak_memory_gib": False, "loading_speedup": True,
                   "augmented_epoch_speedup": False, "noop_repro_seconds": True}
