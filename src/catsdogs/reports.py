"""The evaluate stage's reports: the comparison table, figures and DVC plot data.

Everything lands in one folder, rebuilt whole on every run::

    comparison.csv, comparison.md   one row per model, like the chapter's comparison
    per_class.csv                   test precision, recall and F1 per model and class
    classification_reports.md       scikit-learn's report and the confusion matrix per model
    figures/roc.png                 every model's ROC curve in one chart
    figures/test_accuracy.png       test accuracy per model beside the chapter's figure
    figures/misclassified.png       the champion's most confident mistakes
    plots/roc/<model>.csv           fpr, tpr: for `dvc plots show`
    plots/predictions/<model>.csv   actual, predicted per photo: DVC's confusion template

Figures are drawn on Agg canvases of their own, as in :mod:`catsdogs.curves`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from catsdogs.inputs import LABELS

if TYPE_CHECKING:  # evaluation imports this module
    from catsdogs.champion import Choice
    from catsdogs.evaluation import ModelEvaluation

# Validation accuracy the chapter this project reproduces reports for each
# model, trained on the same kind of split (3,000 training photos). The
# reference beside ours, never used to choose anything. For the dense head on
# VGG16 features it reports 0.87-0.90: 0.88 stands for that range.
CHAPTER_VAL_ACCURACY: dict[str, float] = {
    "scratch_cnn": 0.72,
    "regularized_cnn": 0.78,
    "augmented_cnn": 0.82,
    "vgg16_features": 0.88,
    "vgg16_augmented": 0.90,
    "fine_tune": 0.96,
}
CHAPTER_RANGE: dict[str, str] = {"vgg16_features": "0.87-0.90"}
DESCRIPTIONS: dict[str, str] = {
    "scratch_cnn": "small CNN trained from scratch",
    "regularized_cnn": "fourth conv block and dropout",
    "augmented_cnn": "the same, on augmented photos",
    "vgg16_features": "dense head on VGG16 features",
    "vgg16_augmented": "frozen VGG16 and a head, augmented photos",
    "fine_tune": "top VGG16 blocks fine-tuned",
}
TABLE_COLUMNS = (
    "model", "training_photos", "epochs", "training_seconds", "parameters", "best_val_accuracy",
    "chapter_val_accuracy", "test_accuracy", "test_precision", "test_recall", "test_f1", "test_roc_auc",
    "ms_per_image", "registered_version", "champion",
)
MAX_MISCLASSIFIED = 16
THUMBNAIL_SIDE = 200  # pixels: enough to recognise the animal, small enough for a 4x4 grid
CHAMPION_COLOR = "tab:orange"
OTHER_COLOR = "tab:blue"


def comparison_table(
    evaluations: Sequence[ModelEvaluation],
    summaries: Mapping[str, Mapping[str, object]],
    training_photos: int,
    *,
    versions: Mapping[str, str | None],
    champion: str,
) -> pd.DataFrame:
    """One row per model: how it was trained, validated and how it did on the test set.

    Args:
        evaluations: each model's test results, in pipeline order.
        summaries: each stage's ``metrics/training/<stage>.json``.
        training_photos: photos in the training split.
        versions: each stage's registered version, or None.
        champion: the champion's stage.

    Returns:
        A frame with :data:`TABLE_COLUMNS`; ``chapter_val_accuracy`` is NaN
        for a model the chapter did not train.
    """
    rows = []
    for e in evaluations:
        summary = summaries[e.stage]
        rows.append(
            {
                "model": e.stage,
                "training_photos": training_photos,
                "epochs": summary.get("epochs"),
                "training_seconds": summary.get("training_seconds"),
                "parameters": e.parameters,
                "best_val_accuracy": summary.get("best_val_accuracy"),
                "chapter_val_accuracy": CHAPTER_VAL_ACCURACY.get(e.stage, math.nan),
                **e.summary(),
                "registered_version": versions.get(e.stage),
                "champion": e.stage == champion,
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def format_duration(seconds: float | None) -> str:
    """E.g. ``"45 s"``, ``"12 min 5 s"``, ``"2 h 3 min"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _number(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _count(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{int(value):,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A GitHub-flavoured Markdown table; ``align`` holds one ``l`` or ``r`` per column."""
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def comparison_markdown(table: pd.DataFrame, *, test_photos: int, choice: Choice, champion_note: str) -> str:
    """The comparison as the chapter would write it: a line, the table, the champion.

    Args:
        table: from :func:`comparison_table`.
        test_photos: photos in the test split.
        choice: the champion choice.
        champion_note: what happened to the ``champion`` alias.

    Returns:
        Markdown text.
    """
    header = [
        "Model", "What changes", "Training photos", "Epochs", "Training time", "Best val. accuracy",
        "Chapter val. accuracy", "Test accuracy", "Test F1", "Test ROC AUC", "ms / photo",
    ]
    rows = []
    for row in table.itertuples(index=False):
        name = f"**{row.model}** (champion)" if row.champion else row.model
        chapter = _number(row.chapter_val_accuracy, 2)
        if row.model in CHAPTER_RANGE:
            chapter += f" ({CHAPTER_RANGE[row.model]})"
        rows.append([
            name,
            DESCRIPTIONS.get(row.model, ""),
            _count(row.training_photos),
            _count(row.epochs),
            format_duration(row.training_seconds),
            _number(row.best_val_accuracy),
            chapter,
            _number(row.test_accuracy),
            _number(row.test_f1),
            _number(row.test_roc_auc),
            _number(row.ms_per_image, 1),
        ])
    training_photos = int(table["training_photos"].iloc[0])
    return "\n".join([
        "# Cats vs dogs: the models side by side",
        "",
        f"Each model learned from the same {training_photos:,} training photos and is scored here on "
        f"{test_photos:,} test photos that none of them saw; its best validation accuracy and the one "
        "the chapter reports for the same model are beside the test scores.",
        "",
        markdown_table(header, rows, "llrrrrrrrrr"),
        "",
        f"**Champion: {choice.winner.stage}**, with {choice.reason}. {champion_note}",
        "",
        "Test accuracy decides, not validation accuracy: the validation photos already chose each "
        "model's epochs and settings, so only the test photos still give an unbiased score. "
        "Precision, recall and F1 are weighted by class; ms / photo is the prediction time per "
        "photo in batches on this machine. Per-class scores and confusion matrices are in "
        "classification_reports.md.",
        "",
    ])


def classification_markdown(evaluations: Sequence[ModelEvaluation]) -> str:
    """Each model's scikit-learn classification report and confusion matrix, in Markdown."""
    parts = ["# Classification reports on the test set", ""]
    for e in evaluations:
        confusion = e.scores.confusion
        rows = [[f"actual {label}", *(str(n) for n in confusion[i])] for i, label in enumerate(LABELS)]
        parts += [
            f"## {e.stage}",
            "",
            "```",
            e.scores.report.rstrip(),
            "```",
            "",
            markdown_table(["", *(f"predicted {label}" for label in LABELS)], rows, "lrr"),
            "",
        ]
    return "\n".join(parts)


def per_class_table(evaluations: Sequence[ModelEvaluation]) -> pd.DataFrame:
    """Test precision, recall, F1 and support per model and class, one row each."""
    frames = [e.scores.per_class.reset_index().assign(model=e.stage) for e in evaluations]
    table = pd.concat(frames, ignore_index=True)
    return table[["model", "label", "precision", "recall", "f1", "support"]]


def predictions_table(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per photo, ``actual`` and ``predicted`` label names, for DVC's confusion template."""
    names = np.asarray(LABELS)
    return pd.DataFrame({"actual": names[np.asarray(labels).astype(int)], "predicted": names[np.asarray(predicted).astype(int)]})


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def roc_figure(evaluations: Sequence[ModelEvaluation]) -> Figure:
    """Every model's test ROC curve on one chart, its AUC in the legend."""
    figure = _new_figure(7, 6.5)
    axes = figure.subplots()
    for e in evaluations:
        axes.plot(e.roc["fpr"], e.roc["tpr"], linewidth=2, label=f"{e.stage} (AUC {e.scores.roc_auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.5)")
    axes.set(
        xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
        xlabel="False positive rate (cats called dogs)", ylabel="True positive rate (dogs found)",
        title="ROC curves on the test set",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def accuracy_figure(table: pd.DataFrame) -> Figure:
    """Test accuracy per model as bars, the chapter's validation accuracy as a line across each."""
    figure = _new_figure(max(6.5, 1.5 * len(table) + 2), 5.5)
    axes = figure.subplots()
    x = np.arange(len(table))
    accuracy = table["test_accuracy"].to_numpy(dtype=float)
    chapter = table["chapter_val_accuracy"].to_numpy(dtype=float)
    colors = [CHAMPION_COLOR if c else OTHER_COLOR for c in table["champion"]]
    bars = axes.bar(x, accuracy, width=0.6, color=colors, label="test accuracy (ours)")
    # Inside the bars: above them the labels would collide with the chapter's lines.
    axes.bar_label(bars, labels=[f"{v:.3f}" for v in accuracy], label_type="center", color="white", fontweight="bold")
    known = ~np.isnan(chapter)
    axes.hlines(
        chapter[known], x[known] - 0.38, x[known] + 0.38, colors="black", linewidths=2.5, zorder=3,
        label="chapter's validation accuracy",
    )
    low = min(0.5, float(np.nanmin(np.concatenate([accuracy, chapter]))) - 0.05)
    axes.set(ylim=(max(0.0, low), 1.02), ylabel="Accuracy", title="Test accuracy per model")
    axes.set_xticks(x, [f"{m}\n(champion)" if c else m for m, c in zip(table["model"], table["champion"])])
    axes.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    return figure


def confidence(p_dog: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The probability a model gave to the label it predicted."""
    p_dog = np.asarray(p_dog, dtype=float).reshape(-1)
    return np.where(np.asarray(predicted) == 1, p_dog, 1.0 - p_dog)


def misclassified(
    labels: np.ndarray, p_dog: np.ndarray, predicted: np.ndarray, limit: int = MAX_MISCLASSIFIED
) -> np.ndarray:
    """Indices of the wrongly classified photos, the most confident mistakes first.

    Args:
        labels: true labels, 0 cat, 1 dog.
        p_dog: predicted probabilities of "dog".
        predicted: predicted labels.
        limit: at most this many.

    Returns:
        Up to ``limit`` indices into ``labels``.
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    predicted = np.asarray(predicted).astype(int).reshape(-1)
    wrong = np.flatnonzero(predicted != labels)
    sure = confidence(p_dog, predicted)[wrong]
    return wrong[np.argsort(-sure, kind="stable")][:limit]


def _thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        photo.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return np.asarray(photo)


def misclassified_figure(
    photo_paths: Sequence[Path],
    labels: np.ndarray,
    p_dog: np.ndarray,
    predicted: np.ndarray,
    model: str,
    limit: int = MAX_MISCLASSIFIED,
) -> Figure:
    """A grid of a model's most confident mistakes, each titled with what it said.

    Args:
        photo_paths: the test photos, in the order of ``labels``.
        labels: true labels, 0 cat, 1 dog.
        p_dog: the model's probabilities of "dog".
        predicted: the model's predicted labels.
        model: the model's name, for the title.
        limit: at most this many photos.

    Returns:
        The figure; a short note instead of a grid when nothing was wrong.
    """
    chosen = misclassified(labels, p_dog, predicted, limit)
    n_wrong = int((np.asarray(predicted).reshape(-1) != np.asarray(labels).astype(int).reshape(-1)).sum())
    sure = confidence(p_dog, predicted)
    total = len(labels)
    if len(chosen) == 0:
        figure = _new_figure(6, 2)
        figure.text(0.5, 0.5, f"{model} classified all {total} test photos correctly", ha="center", va="center", fontsize=13)
        return figure
    columns = min(4, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    figure = _new_figure(max(3.2 * columns, 6.5), 3.3 * rows + 0.6)  # wide enough for the title
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes in grid:
        axes.axis("off")
    for axes, index in zip(grid, chosen):
        said, actual = LABELS[int(predicted[index])], LABELS[int(labels[index])]
        axes.imshow(_thumbnail(photo_paths[index]))
        axes.set_title(f"predicted {said} {sure[index]:.2f}, actually {actual}", fontsize=10)
    shown = "" if len(chosen) == n_wrong else f"; the {len(chosen)} most confident shown"
    figure.suptitle(f"{model}: {n_wrong} of {total} test photos misclassified{shown}", fontsize=13)
    return figure


def save_png(figure: Figure, path: Path, dpi: int = 100) -> Path:
    """Writes a figure as PNG through a temporary file beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_reports(
    reports_dir: Path,
    *,
    table: pd.DataFrame,
    evaluations: Sequence[ModelEvaluation],
    labels: np.ndarray,
    photo_paths: Sequence[Path],
    choice: Choice,
    champion_note: str,
) -> Path:
    """(Re)writes the whole reports folder (see the module docstring).

    The folder is built beside its final place and swapped in, so a failure
    leaves the previous reports untouched and a model no longer evaluated
    leaves no stale files behind.

    Args:
        reports_dir: the folder to write.
        table: from :func:`comparison_table`.
        evaluations: each model's test results, in table order.
        labels: the test labels.
        photo_paths: the test photos, in label order.
        choice: the champion choice.
        champion_note: what happened to the ``champion`` alias.

    Returns:
        ``reports_dir``.
    """
    reports_dir = Path(reports_dir)
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=reports_dir.parent, prefix=f".{reports_dir.name}.build-"))
    try:
        table.to_csv(build / "comparison.csv", index=False, float_format="%.6g")
        (build / "comparison.md").write_text(
            comparison_markdown(table, test_photos=len(labels), choice=choice, champion_note=champion_note),
            encoding="utf-8",
        )
        per_class_table(evaluations).to_csv(build / "per_class.csv", index=False, float_format="%.6g")
        (build / "classification_reports.md").write_text(classification_markdown(evaluations), encoding="utf-8")
        for e in evaluations:
            roc_csv = build / "plots" / "roc" / f"{e.stage}.csv"
            roc_csv.parent.mkdir(parents=True, exist_ok=True)
            e.roc.to_csv(roc_csv, index=False, float_format="%.6g")
            predictions_csv = build / "plots" / "predictions" / f"{e.stage}.csv"
            predictions_csv.parent.mkdir(parents=True, exist_ok=True)
            predictions_table(labels, e.predicted).to_csv(predictions_csv, index=False)
        save_png(roc_figure(evaluations), build / "figures" / "roc.png")
        save_png(accuracy_figure(table), build / "figures" / "test_accuracy.png")
        best = next(e for e in evaluations if e.stage == choice.winner.stage)
        save_png(
            misclassified_figure(photo_paths, labels, best.p_dog, best.predicted, best.stage),
            build / "figures" / "misclassified.png",
        )
        _swap_in(build, reports_dir)
    finally:
        if build.exists():
            shutil.rmtree(build)
    return reports_dir


def _swap_in(build: Path, target: Path) -> None:
    """Replaces ``target`` by the folder ``build`` with two renames."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    os.replace(build, target)
    if old is not None:
        shutil.rmtree(old)
