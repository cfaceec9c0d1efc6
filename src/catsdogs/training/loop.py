"""Fitting a compiled model and summarising what happened.

Nothing here knows about MLflow or DVC: tracking comes in as Keras callbacks,
and the outputs are plain files written by the caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from catsdogs.core.atomic import write_atomically, write_json_atomically
from catsdogs.training.resume import EpochCheckpoint, Kept, Restored, fast_forward

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


class DurationEstimate(keras.callbacks.Callback):
    """Prints, a few steps into training, how long the whole fit will take.

    The first step is left out (it traces the graph). The validation pass is
    timed too, on one of its batches, right then: a frozen VGG16 costs about
    as much per validation photo as per training photo, a from-scratch CNN a
    third, so no fixed ratio holds for every stage. Printed once, naming the
    stage, so a long run says early what it costs.
    """

    def __init__(
        self,
        validation_batches: int,
        label: str = "training",
        timed_steps: int = 3,
        validation_step: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self.validation_batches = validation_batches
        self.label = label
        self.timed_steps = timed_steps
        self.validation_step = validation_step
        self.started: float | None = None
        self.estimate_seconds: float | None = None
        self.validation_batch_seconds: float | None = None

    def _time_validation_batch(self) -> float:
        if self.validation_step is None or self.validation_batches == 0:
            return 0.0
        self.validation_step()  # the first call traces
        started = time.perf_counter()
        self.validation_step()
        return time.perf_counter() - started

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.estimate_seconds is not None or self.params.get("steps") is None:
            return
        if batch == 0:
            self.started = time.perf_counter()
        elif batch == self.timed_steps and self.started is not None:
            per_step = (time.perf_counter() - self.started) / self.timed_steps
            self.validation_batch_seconds = self._time_validation_batch()
            steps, epochs = self.params["steps"], self.params["epochs"]
            per_epoch = per_step * steps + self.validation_batch_seconds * self.validation_batches
            self.estimate_seconds = epochs * per_epoch
            print(
                f"\n{self.label}: about {self.estimate_seconds / 60:.1f} min for {epochs} epochs of {steps} steps "
                f"({per_step:.2f} s a step) and {self.validation_batches} validation batches "
                f"({self.validation_batch_seconds:.2f} s each) on this machine",
                flush=True,
            )


class PrecomputedValidation(keras.callbacks.Callback):
    """Validates through the model's trainable top only, on inputs its frozen bottom already made.

    A frozen VGG16 maps a validation photo to the same features every
    epoch; they are computed once (by ``vgg16_bottleneck``), and each epoch
    only the layers that train run over them. It writes ``val_loss`` and
    ``val_accuracy`` into the epoch's logs, as ``fit`` would with
    ``validation_data``: the callbacks after it (tracking, which weights
    are kept) and the history see them alike.
    """

    def __init__(self, top: keras.Model, inputs: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.top = top
        self.inputs = inputs
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        self.batch_size = batch_size

    @property
    def batches(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)

    def predict(self) -> np.ndarray:
        return np.asarray(self.top.predict(self.inputs, batch_size=self.batch_size, verbose=0), dtype=np.float32).reshape(-1)

    def one_batch(self) -> object:
        return self.top.predict_on_batch(self.inputs[: self.batch_size])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        p = self.predict()
        logs["val_loss"] = float(keras.ops.convert_to_numpy(keras.ops.mean(keras.losses.binary_crossentropy(self.labels[:, None], p[:, None]))))
        # Keras' binary accuracy: a dog when P(dog) > 0.5.
        logs["val_accuracy"] = float(np.mean((p > 0.5) == (self.labels > 0.5)))


KEEP_MONITORS = {"best_val_loss": ("val_loss", "min"), "best_val_accuracy": ("val_accuracy", "max")}


class KeepBest(keras.callbacks.EarlyStopping):
    """Puts the best epoch's weights back when ``fit`` ends.

    Keras' EarlyStopping with a patience it never reaches does exactly this
    without stopping early. Resumed, it starts from the best epoch of the
    stopped attempt (which that attempt's resume state carries) rather than
    forget it.
    """

    def __init__(self, monitor: str, mode: str, prior: Kept | None = None) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=2**31 - 1, restore_best_weights=True, start_from_epoch=0, verbose=0)
        self.prior = prior

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self.prior is not None:
            self.best, self.best_epoch, self.best_weights = self.prior.value, self.prior.epoch, list(self.prior.weights)


def keep_callback(keep: str, prior: Kept | None = None) -> KeepBest | None:
    """The callback that leaves the model with ``keep``'s epoch, or None for ``keep: last``."""
    if keep == "last":
        return None
    monitor, mode = KEEP_MONITORS[keep]
    return KeepBest(monitor, mode, prior)


def kept_epoch(history: pd.DataFrame, keep: str) -> int:
    """The 1-based epoch whose weights ``keep`` leaves in the model (the first of equals, as Keras does)."""
    if keep == "last":
        return int(history["epoch"].iloc[-1])
    monitor, mode = KEEP_MONITORS[keep]
    column = history[monitor]
    return int(history["epoch"].loc[column.idxmin() if mode == "min" else column.idxmax()])


@dataclass(frozen=True)
class TrainingResult:
    """What one call of :func:`fit` produced."""

    history: pd.DataFrame  # one row per epoch, columns HISTORY_COLUMNS
    seconds: float
    images_seen: int
    kept_epoch: int | None = None  # the epoch whose weights the model ended with
    estimated_seconds: float | None = None  # what the duration estimate printed, None if too short to time


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset | PrecomputedValidation,
    *,
    epochs: int,
    train_images: int,
    batch_size: int,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    resumed: Restored | None = None,
    label: str | None = None,
    keep: str = "last",
) -> TrainingResult:
    """Trains ``model`` and returns its per-epoch history.

    Args:
        model: a compiled model with an ``accuracy`` metric.
        train: batches of (images, labels); it must repeat when
            ``steps_per_epoch`` is set.
        validation: batches evaluated after every epoch, or a
            :class:`PrecomputedValidation` that scores the model's top on
            inputs its frozen layers already made.
        epochs: number of epochs.
        train_images: photos in one pass over ``train``, for throughput.
        batch_size: the batch size of ``train``, for throughput.
        steps_per_epoch: batches per epoch, or None for one pass over ``train``.
        callbacks: e.g. the tracking callback; they see the validation metrics.
        verbose: Keras progress output (a progress bar per epoch by default).
        resumed: what an interrupted attempt of the same fit restored into
            ``model`` (see :mod:`catsdogs.training.resume`): training goes on after its
            epochs, and its history and seconds count in the result.
        label: names the stage in the duration estimate (the model's name by default).
        keep: which epoch's weights the model ends with: ``last``,
            ``best_val_loss`` or ``best_val_accuracy``.

    Returns:
        The history, the wall time of ``fit`` and the training images seen,
        previous attempts included.
    """
    before: list[keras.callbacks.Callback] = []
    if isinstance(validation, PrecomputedValidation):
        validation_data, validation_batches, validation_step = None, validation.batches, validation.one_batch
        before.append(validation)
    else:
        validation_data = validation
        # Unknown (-2) or infinite (-1) cardinality: leave validation out of the estimate.
        validation_batches = max(int(validation.cardinality()), 0) if isinstance(validation, tf.data.Dataset) else 0
        first = validation.take(1) if isinstance(validation, tf.data.Dataset) else None
        validation_step = None if first is None else (lambda: model.predict_on_batch(next(iter(first))[0]))
    estimate = DurationEstimate(validation_batches, label=label or model.name, validation_step=validation_step)
    keeper = keep_callback(keep, resumed.kept if resumed else None)
    for callback in callbacks:
        if isinstance(callback, EpochCheckpoint):
            callback.keeper = keeper
    steps = steps_per_epoch
    if steps is None and isinstance(train, tf.data.Dataset) and (batches := int(train.cardinality())) > 0:
        # One pass per epoch, read through a single iterator for the whole
        # fit: Keras would make a new iterator (and a new shuffle) each epoch,
        # and more than one on some epochs, which a resumed fit could not
        # replay. Repeated, the stream of batches is fixed by the seed alone.
        train, steps = train.repeat(), batches
    done = resumed.epochs_done if resumed else 0
    train = fast_forward(train, done, steps)
    started = time.perf_counter()
    history = model.fit(
        train,
        initial_epoch=done,
        validation_data=validation_data,
        epochs=epochs,
        steps_per_epoch=steps,
        # The datasets shuffle themselves; Keras' default (True) only warns on them.
        shuffle=False,
        # The keeper first: a checkpoint after it saves the epoch just ended as a candidate.
        callbacks=[estimate, *before, *([keeper] if keeper else []), *callbacks],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started + (resumed.seconds if resumed else 0.0)
    earlier = resumed.history if resumed else []
    frame = pd.DataFrame({k: [row[k] for row in earlier] + list(history.history[k]) for k in HISTORY_COLUMNS[1:]})
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    per_epoch = train_images if steps_per_epoch is None else steps_per_epoch * batch_size
    return TrainingResult(history=frame, seconds=seconds, images_seen=per_epoch * len(frame), kept_epoch=kept_epoch(frame, keep),
        estimated_seconds=estimate.estimate_seconds,
    )


def summarize(result: TrainingResult) -> dict[str, float | int]:
    """The numbers a comparison needs, as written to ``metrics/training/<stage>.json``.

    Args:
        result: what :func:`fit` returned.

    Returns:
        Final and best validation accuracy and loss, the best epoch (by
        validation accuracy, 1-based), epochs run, training seconds and
        training images per second, and the epoch whose weights were kept.
    """
    history = result.history
    best = int(history["val_accuracy"].idxmax())
    last = history.iloc[-1]
    summary = {
        "final_val_accuracy": round(float(last["val_accuracy"]), 6),
        "final_val_loss": round(float(last["val_loss"]), 6),
        "best_val_accuracy": round(float(history["val_accuracy"].iloc[best]), 6),
        "best_val_loss": round(float(history["val_loss"].min()), 6),
        "best_epoch": int(history["epoch"].iloc[best]),
        "epochs": len(history),
        "training_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_seen / max(result.seconds, 1e-9), 2),
        "kept_epoch": int(result.kept_epoch if result.kept_epoch is not None else len(history)),
    }
    if result.estimated_seconds is not None:  # beside training_seconds: how well the estimate held
        summary["estimated_training_seconds"] = round(result.estimated_seconds, 2)
    return summary


def write_history(history: pd.DataFrame, path: Path) -> Path:
    """Writes the per-epoch history as CSV (a DVC plot)."""
    return write_atomically(path, lambda tmp: history.to_csv(tmp, index=False, float_format="%.6f"))


def write_metrics(summary: dict, path: Path) -> Path:
    """Writes a stage's summary as JSON (DVC metrics)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in summary.values()):
        # NaN is not JSON; a diverged run must still leave readable metrics.
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    return write_json_atomically(summary, path, sort_keys=True)
