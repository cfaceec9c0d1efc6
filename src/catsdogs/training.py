"""Fitting a compiled model and summarising what happened.

Nothing here knows about MLflow or DVC: tracking comes in as Keras callbacks,
and the outputs are plain files written by the caller.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import pandas as pd
import tensorflow as tf

from catsdogs.atomic import write_atomically, write_text_atomically
from catsdogs.resume import Restored, fast_forward

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


class DurationEstimate(keras.callbacks.Callback):
    """Prints, a few steps into training, how long the whole fit will take.

    The first step is left out (it traces the graph); a validation batch is
    counted as a third of a training step (a forward pass without the
    backward one). Printed once, so a long run says early what it costs.
    """

    def __init__(self, validation_batches: int, label: str = "training", timed_steps: int = 3) -> None:
        super().__init__()
        self.validation_batches = validation_batches
        self.label = label
        self.timed_steps = timed_steps
        self.started: float | None = None
        self.estimate_seconds: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.estimate_seconds is not None or self.params.get("steps") is None:
            return
        if batch == 0:
            self.started = time.perf_counter()
        elif batch == self.timed_steps and self.started is not None:
            per_step = (time.perf_counter() - self.started) / self.timed_steps
            steps, epochs = self.params["steps"], self.params["epochs"]
            self.estimate_seconds = epochs * per_step * (steps + self.validation_batches / 3)
            print(
                f"\n{self.label}: about {self.estimate_seconds / 60:.1f} min for {epochs} epochs of {steps} steps "
                f"({per_step:.2f} s a step on this machine)",
                flush=True,
            )


@dataclass(frozen=True)
class TrainingResult:
    """What one call of :func:`fit` produced."""

    history: pd.DataFrame  # one row per epoch, columns HISTORY_COLUMNS
    seconds: float
    images_seen: int


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    *,
    epochs: int,
    train_images: int,
    batch_size: int,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    resumed: Restored | None = None,
) -> TrainingResult:
    """Trains ``model`` and returns its per-epoch history.

    Args:
        model: a compiled model with an ``accuracy`` metric.
        train: batches of (images, labels); it must repeat when
            ``steps_per_epoch`` is set.
        validation: batches evaluated after every epoch.
        epochs: number of epochs.
        train_images: photos in one pass over ``train``, for throughput.
        batch_size: the batch size of ``train``, for throughput.
        steps_per_epoch: batches per epoch, or None for one pass over ``train``.
        callbacks: e.g. the tracking callback.
        verbose: Keras progress output (a progress bar per epoch by default).
        resumed: what an interrupted attempt of the same fit restored into
            ``model`` (see :mod:`catsdogs.resume`): training goes on after its
            epochs, and its history and seconds count in the result.

    Returns:
        The history, the wall time of ``fit`` and the training images seen,
        previous attempts included.
    """
    # Unknown (-2) or infinite (-1) cardinality: leave validation out of the estimate.
    validation_batches = max(int(validation.cardinality()), 0) if isinstance(validation, tf.data.Dataset) else 0
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
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps,
        # The datasets shuffle themselves; Keras' default (True) only warns on them.
        shuffle=False,
        callbacks=[DurationEstimate(validation_batches, label=model.name), *callbacks],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started + (resumed.seconds if resumed else 0.0)
    earlier = resumed.history if resumed else []
    frame = pd.DataFrame({k: [row[k] for row in earlier] + list(history.history[k]) for k in HISTORY_COLUMNS[1:]})
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    per_epoch = train_images if steps_per_epoch is None else steps_per_epoch * batch_size
    return TrainingResult(history=frame, seconds=seconds, images_seen=per_epoch * len(frame))


def summarize(result: TrainingResult) -> dict[str, float | int]:
    """The numbers a comparison needs, as written to ``metrics/training/<stage>.json``.

    Args:
        result: what :func:`fit` returned.

    Returns:
        Final and best validation accuracy and loss, the best epoch (by
        validation accuracy, 1-based), epochs run, training seconds and
        training images per second.
    """
    history = result.history
    best = int(history["val_accuracy"].idxmax())
    last = history.iloc[-1]
    return {
        "final_val_accuracy": round(float(last["val_accuracy"]), 6),
        "final_val_loss": round(float(last["val_loss"]), 6),
        "best_val_accuracy": round(float(history["val_accuracy"].iloc[best]), 6),
        "best_val_loss": round(float(history["val_loss"].min()), 6),
        "best_epoch": int(history["epoch"].iloc[best]),
        "epochs": len(history),
        "training_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_seen / max(result.seconds, 1e-9), 2),
    }


def write_history(history: pd.DataFrame, path: Path) -> Path:
    """Writes the per-epoch history as CSV (a DVC plot)."""
    return write_atomically(path, lambda tmp: history.to_csv(tmp, index=False, float_format="%.6f"))


def write_metrics(summary: dict, path: Path) -> Path:
    """Writes a stage's summary as JSON (DVC metrics)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in summary.values()):
        # NaN is not JSON; a diverged run must still leave readable metrics.
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    return write_text_atomically(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
