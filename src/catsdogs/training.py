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

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


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

    Returns:
        The history, the wall time of ``fit`` and the training images seen.
    """
    started = time.perf_counter()
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(callbacks),
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    frame = pd.DataFrame({k: history.history[k] for k in HISTORY_COLUMNS[1:]})
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    per_epoch = train_images if steps_per_epoch is None else steps_per_epoch * batch_size
    return TrainingResult(history=frame, seconds=seconds, images_seen=per_epoch * len(frame))


def summarize(result: TrainingResult) -> dict[str, float | int]:
    """The numbers a comparison needs, as written to ``metrics/<stage>.json``.

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
    path.parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(path, index=False, float_format="%.6f")
    return path


def write_metrics(summary: dict, path: Path) -> Path:
    """Writes a stage's summary as JSON (DVC metrics)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in summary.values()):
        # NaN is not JSON; a diverged run must still leave readable metrics.
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
