"""Learning-curve figure of a training run: accuracy and loss, train vs validation.

The figure is the classic one from the Keras book: dots for training, a line
for validation, one panel for accuracy and one for loss, so runs of the three
training stages can be compared at a glance in the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catsdogs.core.atomic import write_atomically

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def learning_curves_figure(history: pd.DataFrame, title: str) -> Figure:
    """Draws the two-panel learning-curve figure.

    The figure is bound to an Agg canvas of its own rather than to pyplot, so
    drawing needs no display, picks no global backend and leaks no figure.

    Args:
        history: one row per epoch with the columns ``epoch``, ``loss``,
            ``accuracy``, ``val_loss`` and ``val_accuracy``.
        title: the figure's title, e.g. the stage name.

    Returns:
        The figure, with an accuracy panel and a loss panel.

    Raises:
        ValueError: a column is missing or the history is empty.
    """
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise ValueError(f"history lacks the column(s) {', '.join(missing)}")
    if history.empty:
        raise ValueError("history has no epochs to plot")

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    panels = ((accuracy_axes, "accuracy", "Accuracy"), (loss_axes, "loss", "Loss"))
    for axes, metric, label in panels:
        axes.plot(history["epoch"], history[metric], "bo", label=f"Training {metric}")
        axes.plot(history["epoch"], history[f"val_{metric}"], "b", label=f"Validation {metric}")
        axes.set_title(f"Training and validation {metric}")
        axes.set_xlabel("Epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return figure


def plot_learning_curves(history: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Writes the learning-curve figure as a PNG.

    Args:
        history: one row per epoch (see :func:`learning_curves_figure`).
        path: the PNG to write; its folder is created if missing.
        title: the figure's title, e.g. the stage name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    figure = learning_curves_figure(history, title)
    # A half-written PNG must never stand in for the real one.
    return write_atomically(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
