"""What scoring a model gives: its scores on a labelled set and its test results.

Scoring produces these and the reports read them; they live apart from
both so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

THRESHOLD = 0.5  # P(dog) at or above which a photo is called a dog
# What each model's own MLflow run gets, beside its validation metrics.
RUN_METRIC_KEYS = ("test_accuracy", "test_precision", "test_recall", "test_f1", "test_roc_auc", "test_ms_per_image")


@dataclass(frozen=True)
class Scores:
    """A classifier's scores on a labelled set.

    ``precision``, ``recall`` and ``f1`` are weighted by class support (equal
    to the macro average on a balanced test set); ``per_class`` has them per
    label. ``confusion`` counts photos: rows are the actual label, columns the
    predicted one, both in :data:`~catsdogs.data.inputs.LABELS` order (cat, dog).
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    per_class: pd.DataFrame  # index: label; columns: precision, recall, f1, support
    confusion: np.ndarray
    report: str  # scikit-learn's classification report


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's test results."""

    stage: str
    parameters: int
    p_dog: np.ndarray  # (n,) in the test set's sorted file order
    scores: Scores
    roc: pd.DataFrame  # fpr, tpr
    ms_per_image: float

    @property
    def predicted(self) -> np.ndarray:
        """Predicted labels (0 cat, 1 dog)."""
        return (self.p_dog >= THRESHOLD).astype(int)

    def summary(self) -> dict[str, float]:
        """The test-set numbers, as the ``evaluate`` run holds them."""
        return {
            "test_accuracy": round(self.scores.accuracy, 6),
            "test_precision": round(self.scores.precision, 6),
            "test_recall": round(self.scores.recall, 6),
            "test_f1": round(self.scores.f1, 6),
            "test_roc_auc": round(self.scores.roc_auc, 6),
            "ms_per_image": round(self.ms_per_image, 3),
        }

    def run_metrics(self) -> dict[str, float]:
        """The test metrics added to the model's own training run (:data:`RUN_METRIC_KEYS`)."""
        summary = self.summary()
        summary["test_ms_per_image"] = summary.pop("ms_per_image")
        return {key: summary[key] for key in RUN_METRIC_KEYS}
