"""A training stage says, a few steps in, how long its fit will take."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from catsdogs import models
from catsdogs.training import DurationEstimate, fit


def _data(n: int, batch: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, 48, 48, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, (np.arange(n) % 2).astype("float32"))).batch(batch)


def test_fit_prints_one_estimate_of_the_whole_run(capsys):
    model = models.compile_model(models.build_scratch_cnn(48), "rmsprop", 1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, _data(48, 4), _data(8, 4), epochs=2, train_images=48, batch_size=4, verbose=0)
    # The stages' datasets shuffle themselves: no Keras warning about it in their logs.
    assert not [w for w in caught if "shuffle" in str(w.message)]
    out = capsys.readouterr().out
    assert out.count("scratch_cnn: about") == 1
    assert "for 2 epochs of 12 steps" in out
    keras.backend.clear_session()


def test_estimate_is_epochs_times_steps_plus_a_third_of_validation():
    callback = DurationEstimate(validation_batches=30, timed_steps=2)
    callback.set_params({"epochs": 4, "steps": 60})
    callback.on_train_batch_end(0)
    callback.started -= 1.0  # pretend the two timed steps took 1 s
    callback.on_train_batch_end(1)
    assert callback.estimate_seconds is None
    callback.on_train_batch_end(2)
    per_step = 0.5
    assert abs(callback.estimate_seconds - 4 * per_step * (60 + 10)) < 0.1


def test_a_run_too_short_to_time_prints_nothing(capsys):
    callback = DurationEstimate(validation_batches=1)
    callback.set_params({"epochs": 1, "steps": 2})
    for batch in range(2):
        callback.on_train_batch_end(batch)
    assert callback.estimate_seconds is None and capsys.readouterr().out == ""
