"""A training stage says, a few steps in, how long its fit will take."""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from catsdogs.models import networks
from catsdogs.training.loop import DurationEstimate, fit


def _data(n: int, batch: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, 48, 48, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, (np.arange(n) % 2).astype("float32"))).batch(batch)


def test_fit_prints_one_estimate_of_the_whole_run(capsys):
    model = networks.compile_model(networks.build_scratch_cnn(48), "rmsprop", 1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, _data(48, 4), _data(8, 4), epochs=2, train_images=48, batch_size=4, verbose=0)
    # The stages' datasets shuffle themselves: no Keras warning about it in their logs.
    assert not [w for w in caught if "shuffle" in str(w.message)]
    out = capsys.readouterr().out
    assert out.count("scratch_cnn: about") == 1
    assert "for 2 epochs of 12 steps" in out
    keras.backend.clear_session()


def test_estimate_is_epochs_times_steps_plus_the_timed_validation_batches():
    calls = []

    def validation_step():
        calls.append(time.perf_counter())
        time.sleep(0.05)  # a validation batch that takes 50 ms

    callback = DurationEstimate(validation_batches=30, timed_steps=2, validation_step=validation_step)
    callback.set_params({"epochs": 4, "steps": 60})
    callback.on_train_batch_end(0)
    callback.started -= 1.0  # pretend the two timed steps took 1 s
    callback.on_train_batch_end(1)
    assert callback.estimate_seconds is None
    callback.on_train_batch_end(2)
    assert len(calls) == 2  # one call traces, the second is timed
    per_step = 0.5
    assert 0.05 <= callback.validation_batch_seconds < 0.2
    expected = 4 * (per_step * 60 + callback.validation_batch_seconds * 30)
    assert abs(callback.estimate_seconds - expected) < 0.1
    assert callback.estimate_seconds > 4 * (per_step * 60 + 0.05 * 30) - 0.1


def test_the_estimate_names_the_stage_not_the_architecture(capsys):
    # augmented_cnn trains the regularized architecture, whose Keras name is regularized_cnn.
    model = networks.compile_model(networks.build_regularized_cnn(48), "rmsprop", 1e-3)
    fit(model, _data(48, 4), _data(8, 4), epochs=1, train_images=48, batch_size=4, verbose=0, label="augmented_cnn")
    out = capsys.readouterr().out
    assert "augmented_cnn: about" in out and "regularized_cnn: about" not in out
    assert "and 2 validation batches" in out
    keras.backend.clear_session()


def test_fit_keeps_its_estimate_beside_the_measured_time():
    model = networks.compile_model(networks.build_scratch_cnn(48), "rmsprop", 1e-3)
    result = fit(model, _data(48, 4), _data(8, 4), epochs=1, train_images=48, batch_size=4, verbose=0)
    assert result.estimated_seconds is not None and result.estimated_seconds > 0
    keras.backend.clear_session()
