"""Which epoch's weights a stage keeps, and validation on precomputed features."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from catsdogs.core.config import ParamsError, parse_params
from catsdogs.training.loop import PrecomputedValidation, fit, summarize
from catsdogs.training.resume import EpochCheckpoint, ResumeState


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def _photos(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype("float32")
    images = rng.normal(0, 1, (n, 8, 8, 3)).astype("float32") + labels[:, None, None, None]
    return images, labels


def _model() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="bottom", trainable=False)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="top")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", metrics=["accuracy"])
    return model


class WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def _flipped_data() -> tuple[tf.data.Dataset, tf.data.Dataset]:
    images, labels = _photos(64, 0)
    val_images, val_labels = _photos(32, 1)
    # Validation labels flipped: the better the model learns, the worse its
    # validation, so the best epoch by validation is the first, not the last.
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    validation = tf.data.Dataset.from_tensor_slices((val_images, 1 - val_labels)).batch(8)
    return train, validation


def _train(keep: str):
    train, validation = _flipped_data()
    model = _model()
    recorder = WeightsPerEpoch()
    result = fit(model, train, validation, epochs=4, train_images=64, batch_size=8, callbacks=[recorder], verbose=0, keep=keep)
    return model, recorder, result


@pytest.mark.parametrize("keep", ["last", "best_val_loss", "best_val_accuracy"])
def test_the_model_ends_with_the_kept_epochs_weights(keep):
    model, recorder, result = _train(keep)
    history = result.history
    expected = {
        "last": 4,
        "best_val_loss": int(history["val_loss"].idxmin()) + 1,
        "best_val_accuracy": int(history["val_accuracy"].idxmax()) + 1,
    }[keep]
    assert result.kept_epoch == expected == summarize(result)["kept_epoch"]
    for kept, now in zip(recorder.weights[expected - 1], model.get_weights()):
        np.testing.assert_array_equal(kept, now)
    if keep == "best_val_loss":
        assert expected < 4, history  # the flipped validation makes the last epoch not the best
        assert not all(np.array_equal(a, b) for a, b in zip(recorder.weights[-1], model.get_weights()))


class StopAfter(keras.callbacks.Callback):
    """Ends fit after ``epochs`` epochs, as a stop signal between epochs would."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.stop_training = True


def test_a_resumed_fit_keeps_the_best_epoch_of_the_stopped_attempt(tmp_path):
    keep = "best_val_loss"
    whole_model, _, whole = _train(keep)
    # Else the best epoch would come after the stop and the test prove nothing.
    assert whole.kept_epoch <= 2, whole.history

    state = ResumeState(tmp_path, "toy", "key")
    with state:
        train, validation = _flipped_data()
        fit(_model(), train, validation, epochs=4, train_images=64, batch_size=8, verbose=0, keep=keep,
            callbacks=[EpochCheckpoint(state, None, None), StopAfter(2)])
    with state:
        model = _model()
        restored = state.restore(model)
        assert restored.epochs_done == 2 and restored.kept is not None and restored.kept.epoch + 1 == whole.kept_epoch
        train, validation = _flipped_data()
        resumed = fit(model, train, validation, epochs=4, train_images=64, batch_size=8, verbose=0, keep=keep,
            callbacks=[EpochCheckpoint(state, restored, None)], resumed=restored)

    assert resumed.kept_epoch == whole.kept_epoch
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    for ours, theirs in zip(model.get_weights(), whole_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_keep_is_checked_in_params():
    assert parse_params({"scratch_cnn": {"keep": "best_val_loss"}}).scratch_cnn.keep == "best_val_loss"
    with pytest.raises(ParamsError, match="scratch_cnn.keep: unknown value 'best'"):
        parse_params({"scratch_cnn": {"keep": "best"}})


def test_precomputed_validation_gives_what_the_whole_model_would():
    images, labels = _photos(64, 0)
    val_images, val_labels = _photos(30, 1)
    model = _model()
    bottom = keras.Model(model.input, model.get_layer("flatten").output)
    features = bottom.predict(val_images, verbose=0)
    top_input = keras.Input(features.shape[1:])
    top = keras.Model(top_input, model.get_layer("top")(top_input))
    validation = PrecomputedValidation(top, features, val_labels, batch_size=8)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    result = fit(model, train, validation, epochs=2, train_images=64, batch_size=8, verbose=0)

    assert validation.batches == 4
    loss, accuracy = model.evaluate(val_images, val_labels, batch_size=8, verbose=0)
    assert result.history["val_loss"].iloc[-1] == pytest.approx(loss, abs=1e-5)
    assert result.history["val_accuracy"].iloc[-1] == pytest.approx(accuracy, abs=1e-6)
