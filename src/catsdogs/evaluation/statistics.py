"""How sure a comparison is: intervals, paired tests and calibration.

At 1,000 test photos a 95 % interval on an accuracy near 0.75 is about
+/- 2.7 points, so two models a point or two apart may differ by luck alone.
Every model gets a Wilson interval on its test accuracy and a bootstrap
interval (over photos, seeded) on its ROC AUC; every step of the chapter's
story gets the paired difference and an exact McNemar test on the same test
photos, and a verdict in plain words. Calibration -- the Brier score, the
expected calibration error and a reliability curve -- says whether a
model's probabilities can be read as probabilities.

SciPy and scikit-learn do the statistics; this module only arranges them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats
from sklearn import metrics as skm

from catsdogs.core.study import FROM_SCRATCH, TRANSFER

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
CALIBRATION_BINS = 10
# The chapter's claims, each as (before, after, claim): "after" beats "before".
# "best_from_scratch" stands for whichever from-scratch model scored best here.
STORY_STEPS: tuple[tuple[str, str, str], ...] = (
    ("scratch_cnn", "regularized_cnn", "regularization helps a small CNN"),
    ("regularized_cnn", "augmented_cnn", "augmentation helps the regularized CNN"),
    ("scratch_cnn", "augmented_cnn", "regularization and augmentation together help"),
    *(("best_from_scratch", model, "transfer learning beats every from-scratch model") for model in TRANSFER),
    ("vgg16_features", "vgg16_augmented", "augmentation helps the frozen VGG16 model"),
    ("vgg16_features", "fine_tune", "fine-tuning helps most"),
)
SUPPORTS, CONTRADICTS, NOISE = "supports", "contradicts", "cannot tell from noise"


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``.

    Raises:
        ValueError: ``n`` is not positive or ``successes`` is outside ``0..n``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs 0 <= successes <= n and n > 0 (got {successes} of {n})")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_auc_interval(
    labels: np.ndarray, p_dog: np.ndarray, *, resamples: int, seed: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """A percentile bootstrap interval of the ROC AUC, resampling photos (label and score together).

    A resample that happens to hold one class only has no AUC and is left
    out (it only happens on tiny test sets).
    """
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(p_dog, dtype=np.float64).reshape(-1)

    def auc(y_sample: np.ndarray, p_sample: np.ndarray) -> float:
        if y_sample.min() == y_sample.max():
            return math.nan
        return float(skm.roc_auc_score(y_sample, p_sample))

    with warnings.catch_warnings():
        # SciPy warns about the resamples without an AUC; the percentiles below leave them out.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (y, p), auc, paired=True, vectorized=False, n_resamples=resamples, confidence_level=confidence,
            method="percentile", random_state=np.random.default_rng(seed),
        )
    distribution = result.bootstrap_distribution[np.isfinite(result.bootstrap_distribution)]
    if distribution.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(distribution, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Paired:
    """Two models on the same photos: ``b`` right only by ``before``, ``c`` right only by ``after``."""

    before: str
    after: str
    n: int
    b: int
    c: int
    difference: float  # accuracy of after minus accuracy of before
    low: float
    high: float
    p_value: float  # exact McNemar (two-sided binomial test on the b + c discordant photos)

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def mcnemar_exact(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value of ``b`` and ``c`` discordant photos (1 when there are none)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(c), int(b + c), 0.5, alternative="two-sided").pvalue)


def paired_comparison(
    before: str, after: str, correct_before: np.ndarray, correct_after: np.ndarray, confidence: float = CONFIDENCE
) -> Paired:
    """The paired accuracy difference of two models on the same photos, its interval and McNemar's test.

    The interval is the Wald interval of a paired difference of proportions,
    ``(c - b) / n +/- z * sqrt(b + c - (c - b)^2 / n) / n``.

    Raises:
        ValueError: the two arrays differ in length or are empty.
    """
    first = np.asarray(correct_before, dtype=bool).reshape(-1)
    second = np.asarray(correct_after, dtype=bool).reshape(-1)
    if first.shape != second.shape or first.size == 0:
        raise ValueError(f"paired comparison needs the same non-empty photos (got {first.size} and {second.size})")
    n = int(first.size)
    b = int((first & ~second).sum())
    c = int((~first & second).sum())
    difference = (c - b) / n
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    half = z * math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n
    return Paired(before, after, n, b, c, difference, difference - half, difference + half, mcnemar_exact(b, c))


def verdict(paired: Paired) -> str:
    """Whether the test photos support the claim that ``after`` beats ``before``."""
    if not paired.significant:
        return NOISE
    return SUPPORTS if paired.difference > 0 else CONTRADICTS


def _calibration_bins(labels: np.ndarray, p_dog: np.ndarray, bins: int) -> pd.DataFrame:
    """Per non-empty equal-width bin of P(dog): mean P(dog), share of dogs, photos."""
    p = np.clip(np.asarray(p_dog, dtype=np.float64).reshape(-1), 0.0, 1.0)
    frame = pd.DataFrame({"p": p, "y": np.asarray(labels, dtype=np.float64).reshape(-1)})
    frame["bin"] = np.minimum((p * bins).astype(int), bins - 1)
    grouped = frame.groupby("bin")
    return pd.DataFrame({"mean_p_dog": grouped["p"].mean(), "dog_share": grouped["y"].mean(), "photos": grouped.size()})


def expected_calibration_error(labels: np.ndarray, p_dog: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Photo-weighted mean gap between P(dog) and the share of dogs, over equal-width bins of P(dog)."""
    curve = _calibration_bins(labels, p_dog, bins)
    return float((curve["photos"] * (curve["mean_p_dog"] - curve["dog_share"]).abs()).sum() / curve["photos"].sum())


def reliability_curve(labels: np.ndarray, p_dog: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """The reliability diagram's points: per non-empty bin of P(dog), its mean, the share of dogs, photos."""
    return _calibration_bins(labels, p_dog, bins).reset_index(drop=True)


@dataclass(frozen=True)
class ModelStatistics:
    """One model's uncertainty and calibration on a test set."""

    model: str
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    roc_auc: float
    roc_auc_low: float
    roc_auc_high: float
    brier: float
    ece: float

    def as_dict(self, prefix: str = "test_") -> dict[str, float]:
        values = asdict(self)
        values.pop("model")
        return {f"{prefix}{key}": (round(v, 6) if isinstance(v, float) else v) for key, v in values.items()}


def model_statistics(
    model: str, labels: np.ndarray, p_dog: np.ndarray, *, resamples: int, seed: int, threshold: float = 0.5
) -> ModelStatistics:
    """Intervals and calibration of one model's P(dog) on labelled photos."""
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(p_dog, dtype=np.float64).reshape(-1)
    correct = int(((p >= threshold).astype(int) == y).sum())
    low, high = wilson_interval(correct, len(y))
    auc_low, auc_high = bootstrap_auc_interval(y, p, resamples=resamples, seed=seed)
    return ModelStatistics(
        model=model, n=len(y), accuracy=correct / len(y), accuracy_low=low, accuracy_high=high,
        roc_auc=float(skm.roc_auc_score(y, p)), roc_auc_low=auc_low, roc_auc_high=auc_high,
        brier=float(skm.brier_score_loss(y, p)), ece=expected_calibration_error(y, p),
    )


def story_comparisons(correct: Mapping[str, np.ndarray], accuracy: Mapping[str, float]) -> list[tuple[Paired, str]]:
    """Each step of :data:`STORY_STEPS` whose two models were evaluated, with its claim.

    Args:
        correct: per model, whether it got each test photo right (same photo order).
        accuracy: per model, its test accuracy (picks the best from-scratch model).
    """
    scratch = [m for m in FROM_SCRATCH if m in correct]
    best_scratch = max(scratch, key=lambda m: accuracy[m]) if scratch else None
    steps = []
    for before, after, claim in STORY_STEPS:
        before = best_scratch if before == "best_from_scratch" else before
        if before in correct and after in correct and before != after:
            steps.append((paired_comparison(before, after, correct[before], correct[after]), claim))
    return steps


def comparisons_table(steps: Sequence[tuple[Paired, str]]) -> pd.DataFrame:
    """One row per story step: the claim, the paired difference, its interval, McNemar and the verdict."""
    return pd.DataFrame(
        [
            {
                "before": p.before, "after": p.after, "claim": claim, "photos": p.n,
                "only_before_right": p.b, "only_after_right": p.c,
                "difference": p.difference, "difference_low": p.low, "difference_high": p.high,
                "mcnemar_p": p.p_value, "verdict": verdict(p),
            }
            for p, claim in steps
        ],
        columns=[
            "before", "after", "claim", "photos", "only_before_right", "only_after_right",
            "difference", "difference_low", "difference_high", "mcnemar_p", "verdict",
        ],
    )


# Above this ECE a model's probabilities are too far from frequencies to read as such.
BADLY_CALIBRATED_ECE = 0.05


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def fit_temperature(labels: np.ndarray, p_dog: np.ndarray) -> float:
    """The temperature T minimising the log loss of ``sigmoid(logit(p) / T)`` on labelled photos.

    T > 1 softens over-confident probabilities; T = 1 leaves them.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = _logits(p_dog)

    def loss(log_t: float) -> float:
        return float(skm.log_loss(y, apply_temperature_to_logits(z, math.exp(log_t)), labels=[0, 1]))

    best = optimize.minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(best.x))


def apply_temperature_to_logits(z: np.ndarray, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z) / temperature))


def apply_temperature(p_dog: np.ndarray, temperature: float) -> np.ndarray:
    """P(dog) after dividing its logit by ``temperature``."""
    return apply_temperature_to_logits(_logits(p_dog), temperature)


@dataclass(frozen=True)
class Uncertainty:
    """Every model's intervals and calibration on one test set, and the story's paired tests on it."""

    label: str  # which test set, e.g. "test split"
    models: tuple[ModelStatistics, ...]
    steps: pd.DataFrame  # from comparisons_table
    temperatures: Mapping[str, float]  # fitted on validation photos; empty unless asked for
    calibrated_ece: Mapping[str, float]  # ECE after the temperature

    def by_model(self) -> dict[str, ModelStatistics]:
        return {m.model: m for m in self.models}

    def intervals_table(self) -> pd.DataFrame:
        rows = []
        for m in self.models:
            row = {"model": m.model, **m.as_dict(prefix="")}
            row["temperature"] = self.temperatures.get(m.model, math.nan)
            row["ece_after_temperature"] = self.calibrated_ece.get(m.model, math.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self, prefix: str = "test_") -> dict[str, object]:
        """The metrics JSON form: per model its intervals and calibration, per step difference and p."""
        out: dict[str, object] = {}
        for m in self.models:
            values = m.as_dict(prefix=prefix)
            if m.model in self.temperatures:
                values["temperature"] = round(self.temperatures[m.model], 6)
                values[f"{prefix}ece_after_temperature"] = round(self.calibrated_ece[m.model], 6)
            out[m.model] = values
        out["steps"] = {
            f"{row.before}->{row.after}": {
                "difference": round(float(row.difference), 6),
                "difference_low": round(float(row.difference_low), 6),
                "difference_high": round(float(row.difference_high), 6),
                "mcnemar_p": round(float(row.mcnemar_p), 6),
                "verdict": row.verdict,
            }
            for row in self.steps.itertuples(index=False)
        }
        return out


def assess(
    label: str,
    labels: np.ndarray,
    p_dog: Mapping[str, np.ndarray],
    *,
    resamples: int,
    seed: int,
    validation: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
    threshold: float = 0.5,
) -> Uncertainty:
    """Intervals, calibration and the story's paired tests of several models on the same photos.

    Args:
        label: names the test set in reports.
        labels: the photos' true labels.
        p_dog: per model, its P(dog) of each photo (same order).
        resamples: bootstrap resamples for the ROC AUC intervals.
        seed: seeds the bootstrap.
        validation: labels and per-model P(dog) of validation photos; when
            given, a temperature is fitted per model on them and the test
            ECE after it reported.
        threshold: P(dog) at or above which a photo is called a dog.
    """
    y = np.asarray(labels).astype(int).reshape(-1)
    per_model = tuple(
        model_statistics(m, y, p, resamples=resamples, seed=seed, threshold=threshold) for m, p in p_dog.items()
    )
    correct = {m: (np.asarray(p).reshape(-1) >= threshold).astype(int) == y for m, p in p_dog.items()}
    steps = comparisons_table(story_comparisons(correct, {s.model: s.accuracy for s in per_model}))
    temperatures: dict[str, float] = {}
    calibrated: dict[str, float] = {}
    if validation is not None:
        val_labels, val_p = validation
        for m, p in p_dog.items():
            temperatures[m] = fit_temperature(val_labels, val_p[m])
            calibrated[m] = expected_calibration_error(y, apply_temperature(p, temperatures[m]))
    return Uncertainty(label, per_model, steps, temperatures, calibrated)
