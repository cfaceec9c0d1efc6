"""How long a run of the pipeline will take on this machine, before it starts.

A few training and prediction steps of each kind of model are timed here, on
random photos of the configured size and batch size, and multiplied by the
work params.yaml asks for: epochs x photos per epoch, a validation pass per
epoch, the bottleneck extraction and the evaluation. It ignores the
download and the dataset build (seconds), and adds a fixed start-up cost per
stage (importing TensorFlow and MLflow, saving and logging the model).

    python -m catsdogs.speed.estimate [--params params.yaml] [--profile book]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from catsdogs.core.durations import format_duration
from catsdogs.models import networks

from catsdogs.core.config import Params, TrainParams
from catsdogs.core.profile_params import load_params_with_profile
from catsdogs.core.runtime import configure_runtime
from catsdogs.core.study import FROM_SCRATCH, TRANSFER
from catsdogs.data.augmentation import make_augmentation
from catsdogs.models.bottleneck import TIMED_PHOTOS, last_frozen_layer, top_from
from catsdogs.speed import throughput

# Start-up and wrap-up of one stage process outside training (import
# TensorFlow and MLflow, save and register the model): 10-20 s measured here.
STAGE_OVERHEAD_SECONDS = 15.0
# Photos the evaluate stage scores with VGG16 models and with from-scratch ones.
VGG16_STAGES, SCRATCH_STAGES = TRANSFER, FROM_SCRATCH


@dataclass(frozen=True)
class Counts:
    """Photos per split."""

    train: int
    validation: int
    test: int

    @classmethod
    def from_params(cls, params: Params) -> "Counts":
        ds = params.build_small_dataset
        return cls(2 * ds.train_per_class, 2 * ds.validation_per_class, 2 * ds.test_per_class)


def measure_rates(params: Params, steps: int = 3) -> dict[str, float]:
    """Images per second of each kind of work the pipeline does, on this machine.

    Keys: ``<stage>.train`` for the six training stages, ``scratch_cnn.predict``,
    ``regularized_cnn.predict``, ``vgg16.predict`` (bottleneck extraction)
    and ``vgg16.top_predict`` (the layers after fine_tune's frozen ones, on
    their saved outputs: its validation and evaluation).
    """
    size = params.base.image_size
    augment = make_augmentation(params.augmentation, params.base.seed)
    rates: dict[str, float] = {}

    def train(stage: str, model: keras.Model, augmented: bool) -> None:
        settings: TrainParams = getattr(params, stage)
        networks.compile_model(model, settings.optimizer, settings.learning_rate)
        data = throughput.in_memory_batches(size, settings.batch_size, augment if augmented else None)
        rates[f"{stage}.train"] = throughput.train_rate(model, data, steps=steps, batch_size=settings.batch_size)
        print(f"  {stage}: {rates[f'{stage}.train']:.1f} training photos/s", flush=True)

    photos = throughput.random_photos(2 * params.vgg16.feature_batch_size, size)
    for stage, build, augmented in (
        ("scratch_cnn", networks.build_scratch_cnn, False),
        ("regularized_cnn", networks.build_regularized_cnn, False),
        ("augmented_cnn", networks.build_regularized_cnn, True),
    ):
        model = build(size)
        train(stage, model, augmented)
        if not augmented:
            rates[f"{stage}.predict"] = throughput.predict_rate(model, photos, params.vgg16.feature_batch_size)
    frozen = throughput.vgg16_model(size, trainable_from=None, preprocessing=params.vgg16.preprocessing)
    rates["vgg16.predict"] = throughput.predict_rate(frozen, photos, params.vgg16.feature_batch_size)
    print(f"  VGG16: {rates['vgg16.predict']:.1f} photos/s through the base", flush=True)
    # fine_tune validates and evaluate scores it on the saved outputs of its frozen blocks: the rest of VGG16 runs.
    frozen_layer = last_frozen_layer(frozen.get_layer("vgg16"), params.fine_tune.trainable_from)
    if frozen_layer is not None:
        top = top_from(frozen, frozen_layer)
        middle = np.zeros((2 * params.vgg16.feature_batch_size, *top.input_shape[1:]), np.float32)
        rates["vgg16.top_predict"] = throughput.predict_rate(top, middle, params.vgg16.feature_batch_size)
    else:
        rates["vgg16.top_predict"] = rates["vgg16.predict"]
    print(f"  VGG16 after {frozen_layer or 'nothing frozen'}: {rates['vgg16.top_predict']:.1f} photos/s", flush=True)
    train("vgg16_augmented", frozen, True)
    tuned = throughput.vgg16_model(size, trainable_from=params.fine_tune.trainable_from, preprocessing=params.vgg16.preprocessing)
    train("fine_tune", tuned, True)
    head = networks.build_classifier_head(frozen.get_layer("vgg16").output_shape[1:])
    settings = params.vgg16_features
    networks.compile_model(head, settings.optimizer, settings.learning_rate)
    features = np.zeros((settings.batch_size * 2, *head.input_shape[1:]), np.float32)
    data = tf.data.Dataset.from_tensor_slices((features, np.zeros(len(features), np.float32))).repeat().batch(settings.batch_size)
    rates["vgg16_features.train"] = throughput.train_rate(head, data, steps=steps * 5, batch_size=settings.batch_size)
    return rates


def _epoch_photos(settings: TrainParams, counts: Counts) -> int:
    return counts.train if settings.steps_per_epoch is None else settings.steps_per_epoch * settings.batch_size


def stage_seconds(params: Params, rates: dict[str, float], counts: Counts) -> dict[str, float]:
    """Estimated wall seconds of every compute stage.

    Args:
        params: the parameters of the run.
        rates: what :func:`measure_rates` returned.
        counts: photos per split.
    """
    validation_rate = {
        "scratch_cnn": rates["scratch_cnn.predict"],
        "regularized_cnn": rates["regularized_cnn.predict"],
        "augmented_cnn": rates["regularized_cnn.predict"],
        # The frozen base's work is saved by vgg16_bottleneck: validation runs
        # the head alone (a third of a training step), or fine_tune's own blocks.
        "vgg16_features": rates["vgg16_features.train"] * 3,
        "vgg16_augmented": rates["vgg16_features.train"] * 3,
        "fine_tune": rates["vgg16.top_predict"],
    }
    seconds: dict[str, float] = {}
    for stage in (*SCRATCH_STAGES, "vgg16_bottleneck", *VGG16_STAGES, "evaluate"):
        if stage == "vgg16_bottleneck":
            work = (counts.train + counts.validation + counts.test) / rates["vgg16.predict"]
        elif stage == "evaluate":
            # The VGG16 models are scored from the saved outputs (heads: next
            # to nothing) and checked end to end on TIMED_PHOTOS each.
            work = counts.test * (
                1 / rates["vgg16.top_predict"] + 1 / rates["scratch_cnn.predict"] + 2 / rates["regularized_cnn.predict"]
            ) + len(VGG16_STAGES) * min(TIMED_PHOTOS, counts.test) / rates["vgg16.predict"]
        else:
            settings: TrainParams = getattr(params, stage)
            per_epoch = _epoch_photos(settings, counts) / rates[f"{stage}.train"] + counts.validation / validation_rate[stage]
            work = settings.epochs * per_epoch
            if stage == "vgg16_features":
                # Its saved model chains the base: registering it runs a photo through VGG16.
                work += params.vgg16_features.batch_size / rates["vgg16.predict"]
        seconds[stage] = work + STAGE_OVERHEAD_SECONDS
    return seconds


def print_estimate(params: Params, counts: Counts | None = None, steps: int = 3) -> dict[str, float]:
    """Measures this machine, prints the estimated duration of each stage and the total.

    Returns:
        Estimated seconds per stage.
    """
    runtime = configure_runtime(params.base.precision)
    counts = Counts.from_params(params) if counts is None else counts
    print(f"Estimating the run's duration on this machine ({runtime.describe()}), "
          f"{params.base.image_size}x{params.base.image_size} photos:", flush=True)
    rates = measure_rates(params, steps=steps)
    seconds = stage_seconds(params, rates, counts)
    for stage, value in seconds.items():
        print(f"  {stage:<17} ~ {format_duration(value, rough=True)}")
    print(f"Estimated total: ~ {format_duration(sum(seconds.values()), rough=True)} "
          "(from a few timed steps; expect +-20 %)", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", default=None, help="a profile of profiles/ applied on top, e.g. book")
    args = parser.parse_args(argv)
    params = load_params_with_profile(args.params, args.profile)
    print_estimate(params)


if __name__ == "__main__":
    main()
