"""The evaluate stage's reports: the comparison table, figures and DVC plot data.

Everything lands in one folder, rebuilt whole on every run::

    comparison.csv, comparison.md   one row per model, like the chapter's comparison
    per_class.csv                   test precision, recall and F1 per model and class
    classification_reports.md       scikit-learn's report and the confusion matrix per model
    figures/roc.png                 every model's ROC curve in one chart
    figures/test_accuracy.png       test accuracy per model beside the chapter's figure
    figures/misclassified.png       the champion's most confident mistakes
    figures/reliability.png         each model's P(dog) against the share of dogs (calibration)
    intervals.csv                   per model: 95 % intervals of accuracy and ROC AUC, Brier, ECE
    story.csv                       per step of the chapter's story: paired difference, McNemar, verdict
    plots/roc/<model>.csv           fpr, tpr: for `dvc plots show`
    plots/predictions/<model>.csv   actual, predicted per photo: DVC's confusion template

Figures are drawn on Agg canvases of their own, as in :mod:`catsdogs.tracking.curves`.
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

from catsdogs.core.durations import format_duration
from catsdogs.core.atomic import write_atomically
from catsdogs.core.study import MODELS
from catsdogs.data.inputs import LABELS
from catsdogs.evaluation.statistics import BADLY_CALIBRATED_ECE, CONFIDENCE, CONTRADICTS, SIGNIFICANCE, SUPPORTS, reliability_curve

from catsdogs.evaluation.results import ModelEvaluation

if TYPE_CHECKING:  # only annotations
    from catsdogs.evaluation.champion import Choice
    from catsdogs.evaluation.statistics import Uncertainty

# Validation accuracy the chapter this project reproduces reports for each
# model, trained on the same kind of split (3,000 training photos).
CHAPTER_VAL_ACCURACY: dict[str, float] = {m.name: m.chapter_val_accuracy for m in MODELS}
CHAPTER_RANGE: dict[str, str] = {"vgg16_features": "0.87-0.90"}
DESCRIPTIONS: dict[str, str] = {m.name: m.description for m in MODELS}
TABLE_COLUMNS = (
    "model", "training_photos", "epochs", "training_seconds", "parameters", "best_val_accuracy",
    "chapter_val_accuracy", "test_accuracy", "test_precision", "test_recall", "test_f1", "test_roc_auc",
    "ms_per_image", "registered_version", "champion",
)
# Added to comparison.csv when the statistics were computed.
INTERVAL_COLUMNS = ("test_accuracy_low", "test_accuracy_high", "test_roc_auc_low", "test_roc_auc_high", "test_brier", "test_ece")
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
    uncertainty: Uncertainty | None = None,
) -> pd.DataFrame:
    """One row per model: how it was trained, validated and how it did on the test set.

    Args:
        evaluations: each model's test results, in pipeline order.
        summaries: each stage's ``metrics/training/<stage>.json``.
        training_photos: photos in the training split.
        versions: each stage's registered version, or None.
        champion: the champion's stage.
        uncertainty: the test split's statistics; adds :data:`INTERVAL_COLUMNS`.

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
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if uncertainty is not None:
        stats = uncertainty.by_model()
        for column in INTERVAL_COLUMNS:
            table[column] = [getattr(stats[m], column.removeprefix("test_")) for m in table["model"]]
    return table


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


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def uncertainty_markdown(uncertainty: Uncertainty, *, settings_hint: str = "evaluate.temperature_scaling") -> str:
    """How sure the comparison on one test set is: intervals, calibration, the story step by step, verdicts.

    Args:
        uncertainty: the test set's statistics.
        settings_hint: the parameter that turns temperature scaling on, named
            when a model is badly calibrated and no temperature was fitted.

    Returns:
        Markdown text, starting with a second-level heading.
    """
    level = round(100 * CONFIDENCE)
    n = uncertainty.models[0].n if uncertainty.models else 0
    header = ["Model", f"Test accuracy ({level} % interval)", f"ROC AUC ({level} % interval)", "Brier score", "ECE"]
    fitted = bool(uncertainty.temperatures)
    if fitted:
        header += ["Temperature", "ECE after"]
    rows = []
    for m in uncertainty.models:
        row = [m.model, _interval(m.accuracy, m.accuracy_low, m.accuracy_high),
               _interval(m.roc_auc, m.roc_auc_low, m.roc_auc_high), _number(m.brier), _number(m.ece)]
        if fitted:
            row += [_number(uncertainty.temperatures[m.model], 2), _number(uncertainty.calibrated_ece[m.model])]
        rows.append(row)
    parts = [
        f"## How sure: the {uncertainty.label}, {n:,} photos",
        "",
        f"Accuracy intervals are Wilson score intervals; ROC AUC intervals a seeded bootstrap over the photos. "
        "The Brier score is the mean squared error of P(dog); the expected calibration error (ECE) the "
        "photo-weighted gap between P(dog) and the share of dogs over ten bins of P(dog): 0 when a "
        "probability of 0.8 is right 80 % of the time (figures/reliability.png draws it for the test split).",
        "",
        markdown_table(header, rows, "l" + "r" * (len(header) - 1)),
        "",
    ]
    badly = [m for m in uncertainty.models if m.ece > BADLY_CALIBRATED_ECE]
    if badly:
        names = ", ".join(f"{m.model} (ECE {m.ece:.3f})" for m in badly)
        if fitted:
            after = ", ".join(f"{m.model} {uncertainty.calibrated_ece[m.model]:.3f} at T = {uncertainty.temperatures[m.model]:.2f}" for m in badly)
            parts += [f"Badly calibrated (ECE above {BADLY_CALIBRATED_ECE}): {names}. A temperature fitted on the "
                      f"validation photos brings the test ECE to {after}.", ""]
        else:
            parts += [f"Badly calibrated (ECE above {BADLY_CALIBRATED_ECE}): {names}: their probabilities overstate "
                      f"or understate how often they are right. `{settings_hint}: true` fits a temperature per "
                      "model on the validation photos and reports the ECE after it.", ""]
    else:
        parts += [f"Every model is well calibrated here (ECE at most {BADLY_CALIBRATED_ECE}).", ""]
    if not uncertainty.steps.empty:
        step_rows = [
            [f"{r.before} -> {r.after}", r.claim, f"{_points(r.difference)} ({_points(r.difference_low)} to {_points(r.difference_high)})",
             str(r.only_before_right), str(r.only_after_right), f"{r.mcnemar_p:.3g}", r.verdict]
            for r in uncertainty.steps.itertuples(index=False)
        ]
        parts += [
            "### The chapter's story, step by step",
            "",
            f"Each step compares two models on the same photos: the accuracy difference in points with its {level} % "
            "interval, the photos only one of the two got right, and the exact McNemar test on those. A step "
            f"supports the chapter's claim when the later model is better with p < {SIGNIFICANCE}, contradicts "
            "it when it is worse with p below that, and otherwise cannot tell from noise.",
            "",
            markdown_table(["Step", "Chapter's claim", "Difference, points", "Only before right", "Only after right",
                            "McNemar p", "Verdict"], step_rows, "llrrrrl"),
            "",
        ]
        for name, verdict in (("supports", SUPPORTS), ("contradicts", CONTRADICTS)):
            chosen = uncertainty.steps[uncertainty.steps["verdict"] == verdict]
            listed = "; ".join(f"{r.claim} ({r.before} -> {r.after}, {_points(r.difference)} points, p = {r.mcnemar_p:.2g})"
                               for r in chosen.itertuples(index=False))
            parts.append(f"- This run **{name}**: {listed or 'none of the claims'}.")
        noise = uncertainty.steps[~uncertainty.steps["verdict"].isin([SUPPORTS, CONTRADICTS])]
        listed = "; ".join(f"{r.claim} ({r.before} -> {r.after}, {_points(r.difference)} points, p = {r.mcnemar_p:.2g})"
                           for r in noise.itertuples(index=False))
        parts += [f"- It **cannot tell from noise**: {listed or 'none of the claims'}.", ""]
    return "\n".join(parts)


def reliability_figure(labels: np.ndarray, p_dog: Mapping[str, np.ndarray], bins: int = 10) -> Figure:
    """Each model's reliability curve: mean P(dog) per bin against the share of dogs in it."""
    figure = _new_figure(7, 6.5)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for model, p in p_dog.items():
        curve = reliability_curve(labels, p, bins)
        axes.plot(curve["mean_p_dog"], curve["dog_share"], marker="o", linewidth=1.5, label=model)
    axes.set(
        xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
        xlabel="Mean predicted P(dog) in the bin", ylabel="Share of dogs in the bin",
        title=f"Reliability on the test set ({bins} bins of P(dog))",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    return figure


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
    return write_atomically(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def write_reports(
    reports_dir: Path,
    *,
    table: pd.DataFrame,
    evaluations: Sequence[ModelEvaluation],
    labels: np.ndarray,
    photo_paths: Sequence[Path],
    choice: Choice,
    champion_note: str,
    uncertainty: Sequence[Uncertainty] = (),
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
        uncertainty: statistics per test set, the test split first (its
            reliability diagram is drawn); each adds a section to
            comparison.md and rows to intervals.csv and story.csv.

    Returns:
        ``reports_dir``.
    """
    reports_dir = Path(reports_dir)
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=reports_dir.parent, prefix=f".{reports_dir.name}.build-"))
    try:
        table.to_csv(build / "comparison.csv", index=False, float_format="%.6g")
        markdown = comparison_markdown(table, test_photos=len(labels), choice=choice, champion_note=champion_note)
        for u in uncertainty:
            markdown += "\n" + uncertainty_markdown(u)
        (build / "comparison.md").write_text(markdown, encoding="utf-8")
        if uncertainty:
            pd.concat([u.intervals_table().assign(test_set=u.label) for u in uncertainty], ignore_index=True).to_csv(
                build / "intervals.csv", index=False, float_format="%.6g")
            pd.concat([u.steps.assign(test_set=u.label) for u in uncertainty], ignore_index=True).to_csv(
                build / "story.csv", index=False, float_format="%.6g")
            save_png(reliability_figure(labels, {e.stage: e.p_dog for e in evaluations}), build / "figures" / "reliability.png")
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
