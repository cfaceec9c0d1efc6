"""Tests of the learning-curve figure."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from catsdogs.tracking.curves import learning_curves_figure, plot_learning_curves


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "loss": [0.69, 0.60, 0.52, 0.45],
            "accuracy": [0.52, 0.66, 0.73, 0.79],
            "val_loss": [0.68, 0.62, 0.58, 0.59],
            "val_accuracy": [0.55, 0.64, 0.70, 0.71],
        }
    )


def test_figure_has_an_accuracy_and_a_loss_panel_with_train_and_validation(history):
    figure = learning_curves_figure(history, "scratch_cnn")

    accuracy, loss = figure.axes
    assert figure.get_suptitle() == "scratch_cnn"
    assert "accuracy" in accuracy.get_title() and "loss" in loss.get_title()
    for axes, metric in ((accuracy, "accuracy"), (loss, "loss")):
        train, validation = axes.get_lines()
        assert list(train.get_xdata()) == [1, 2, 3, 4]
        assert list(train.get_ydata()) == list(history[metric])
        assert list(validation.get_ydata()) == list(history[f"val_{metric}"])


def test_png_is_written_and_is_a_real_picture(history, tmp_path):
    target = tmp_path / "plots" / "curves.png"

    written = plot_learning_curves(history, target, title="scratch_cnn")

    assert written == target
    with Image.open(target) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 2 * height > 600  # two panels side by side
    assert [p.name for p in target.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_rewrite_replaces_the_old_png(history, tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"stale")

    plot_learning_curves(history, target, title="again")

    assert target.read_bytes().startswith(b"\x89PNG")


def test_missing_column_is_named(history, tmp_path):
    with pytest.raises(ValueError, match="val_accuracy"):
        plot_learning_curves(history.drop(columns="val_accuracy"), tmp_path / "c.png", title="x")
    assert not (tmp_path / "c.png").exists()
