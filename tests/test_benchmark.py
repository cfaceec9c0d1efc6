"""make bench: its measurements, its figures and its targets."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from catsdogs.core.study import dvc_stage
from catsdogs.speed import throughput
from catsdogs.speed.benchmark import (
    STAGES, BenchmarkError, noop_repro_breakdown, run_benchmark, shown, spread, stage_timings, targets_met,
)
from catsdogs.core.config import parse_params
from catsdogs.data.inputs import load_split_arrays

from conftest import TINY_PARAMS


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def test_vgg16_conv_flops_match_the_published_count():
    # VGG16's 13 convolutions at 224x224: 15.35 G multiply-adds (Simonyan & Zisserman's model).
    flops = throughput.conv_flops_per_image(throughput.vgg16_convolutional_base(224))
    assert flops == pytest.approx(2 * 15.35e9, rel=0.005)


def test_one_by_one_loading_gives_the_pipelines_photos(small_dataset):
    images, labels = throughput.load_one_by_one(small_dataset / "train", 48)
    ours, our_labels, _ = load_split_arrays(small_dataset / "train", image_size=48)
    assert images.shape == ours.shape == (24, 48, 48, 3)
    np.testing.assert_array_equal(labels, our_labels)
    # Same photos, same size: PIL and TensorFlow resize alike up to rounding.
    assert np.abs(images - ours).mean() < 2.0


def test_matmul_rate_is_positive_and_finite():
    rate = throughput.matmul_flops_per_second(sizes=(128, 256), repeats=2)
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
    assert throughput.predict_rate(model, images, batch_size=5) == pytest.approx(10 / 0.2, rel=0.2)


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
    rates = result["images_per_second"]
    assert set(rates) == {
        "decode_resize", "chapter_numpy_loading", "augmented_pipeline", "augmented_pipeline_five_layers",
        "scratch_cnn.train", "augmented_cnn.train", "augmented_cnn.train_without_augmentation",
        "fine_tune.train", "vgg16_extraction",
    }
    figures = [*rates.values(), *(result[name] for name in (
        "loading_speedup", "augmentation_step_ratio", "augmented_epoch_speedup",
        "augmented_epoch_speedup_ceiling", "vgg16_fraction_of_matmul"))]
    for figure in figures:  # every figure: the median of 3 rounds, with its range
        assert len(figure["runs"]) == 3
        assert figure["range"] == [min(figure["runs"]), max(figure["runs"])]
        assert figure["median"] == sorted(figure["runs"])[1] and figure["median"] > 0
    assert 0 < result["vgg16_fraction_of_matmul"]["median"] < 1.5
    assert result["augmented_epoch_seconds"]["steps"] == 3  # 24 photos in batches of 8
    assert set(result["met"]) == {"pipeline_minutes", "peak_memory_gib", "augmented_epoch_speedup", "loading_speedup",
                                  "augmentation_step_ratio", "vgg16_fraction_of_matmul"}
    cpu = result["machine"]["cpu"]
    assert cpu["model"] and set(cpu["vector_instruction_sets"]) <= set(cpu["flags"])
    json.dumps(result)  # all of it can be written
    out = capsys.readouterr().out
    assert "One augmented epoch" in out and "GFLOP/s" in out and "median of 3 rounds" in out


def test_spread_gives_the_median_and_the_range():
    assert spread([3.0, 1.0, 2.5]) == {"median": 2.5, "range": [1.0, 3.0], "runs": [3.0, 1.0, 2.5]}
    assert shown(spread([3.0, 1.0, 2.5]), " s") == "2.5 s (1.0-3.0)"


def test_a_noop_repro_breakdown_names_each_part(repo_copy, monkeypatch):
    monkeypatch.chdir(repo_copy)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    breakdown = noop_repro_breakdown()
    assert list(breakdown)[:2] == ["start-up", "reading dvc.yaml and dvc.lock"]
    assert {f"checking {dvc_stage(stage)}" for stage in STAGES} <= set(breakdown)
    assert all(seconds >= 0 for seconds in breakdown.values())


def test_targets_met_compares_each_figure_with_its_target():
    met = targets_met({"pipeline_minutes": 44.0, "peak_memory_gib": 6.0, "loading_speedup": {"median": 3.5},
                       "augmentation_step_ratio": {"median": 0.85}, "augmented_epoch_speedup": {"median": 1.1},
                       "augmented_epoch_speedup_ceiling": {"median": 1.6},
                       "vgg16_fraction_of_matmul": {"median": 0.71}, "noop_repro_seconds": {"median": 1.9}})
    assert met == {"pipeline_minutes": True, "peak_memory_gib": False, "loading_speedup": True,
                   "augmentation_step_ratio": False, "augmented_epoch_speedup": False,
                   "vgg16_fraction_of_matmul": True, "noop_repro_seconds": True}


def test_the_epoch_target_gives_way_to_a_low_ceiling():
    # A ceiling of 1.2x: 90 % of it (1.08x) is what the bench can ask for.
    assert targets_met({"augmented_epoch_speedup": {"median": 1.1}, "augmented_epoch_speedup_ceiling": {"median": 1.2}}) == {
        "augmented_epoch_speedup": True}
    assert targets_met({"augmented_epoch_speedup": {"median": 1.0}, "augmented_epoch_speedup_ceiling": {"median": 1.2}}) == {
        "augmented_epoch_speedup": False}
