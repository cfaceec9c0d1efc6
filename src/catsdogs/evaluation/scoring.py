"""The evaluate stage: every trained model scored on the test photos none saw.

Scores come from scikit-learn on the models' probabilities of "dog" at a 0.5
threshold; :func:`run_evaluation` then writes the DVC outputs (one headline
metrics file per model and ``reports/``), logs an ``evaluate`` MLflow run,
adds each model's test metrics to its own training run and moves the
``champion`` alias. The choice uses the test split only: the validation split
already chose each model's epochs and settings, so it no longer gives a fair
score.

The headline files ``metrics/<model>.json`` are the project's only DVC
metrics, and every one has the same keys, :data:`HEADLINE_KEYS`, so that
``dvc metrics show`` is one row per model with the same columns and
``dvc exp show --json`` / ``make compare`` find each model's figures under
one name. Keep them few and flat: a figure added here is a column in every
comparison. Detailed statistics (per class, intervals, tests) belong in
``reports/``; the training stages' own summaries are in
``metrics/training/<model>.json`` (versioned in Git, not DVC metrics).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn import metrics as skm

from catsdogs.core.atomic import write_json_atomically
from catsdogs.core.config import TRAINING_STAGES, EvaluateParams
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.study import dvc_stage
from catsdogs.data.extra_test import load_photos, undrawn_photos
from catsdogs.data.inputs import LABELS, load_split_arrays
from catsdogs.evaluation import champion
from catsdogs.evaluation import reports
from catsdogs.evaluation import statistics
from catsdogs.evaluation.results import THRESHOLD, ModelEvaluation, Scores
from catsdogs.models.bottleneck import TIMED_PHOTOS, FrozenOutputs, frozen_part, load_frozen_outputs, saved_frozen_layer, top_from
from catsdogs.models.networks import load_stage_model_file
from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.execution import experiment_name

PREDICT_BATCH_SIZE = 32
# The keys of every metrics/<model>.json, in this order (see the module docstring).
HEADLINE_KEYS = (
    "test_accuracy", "test_f1", "test_roc_auc", "best_val_accuracy", "epochs", "training_seconds",
    "ms_per_image", "champion",
)
SHORTCUT_TOLERANCE = 1e-4
# The models whose base stays frozen, scored on the bottleneck features; and
# the one whose first blocks stay frozen, scored on those blocks' outputs.
HEAD_ONLY = ("vgg16_features", "vgg16_augmented")
FROZEN_PREFIX = ("fine_tune",)


class EvaluationError(CatsDogsError):
    """A model or a training stage's metrics are missing or unreadable."""


def score_predictions(labels: np.ndarray, p_dog: np.ndarray, threshold: float = THRESHOLD) -> Scores:
    """Scores predicted probabilities against true labels.

    Args:
        labels: true labels, 0 (cat) or 1 (dog), shape (n,).
        p_dog: predicted probabilities of "dog", shape (n,) or (n, 1).
        threshold: P(dog) at or above which a photo counts as a dog.

    Returns:
        Accuracy, weighted and per-class precision/recall/F1, ROC AUC, the
        confusion matrix and the classification report.

    Raises:
        ValueError: lengths differ, or the labels hold one class only (ROC
            AUC needs both).
    """
    y_true = np.asarray(labels).astype(int).reshape(-1)
    scores = np.asarray(p_dog, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape:
        raise ValueError(f"{y_true.size} labels but {scores.size} predictions")
    if set(np.unique(y_true)) != {0, 1}:
        raise ValueError("scoring needs photos of both classes")
    y_pred = (scores >= threshold).astype(int)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    weighted = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average="weighted", zero_division=0
    )
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(LABELS, name="label"),
    )
    return Scores(
        accuracy=float(skm.accuracy_score(y_true, y_pred)),
        precision=float(weighted[0]),
        recall=float(weighted[1]),
        f1=float(weighted[2]),
        roc_auc=float(skm.roc_auc_score(y_true, scores)),
        per_class=per_class,
        confusion=skm.confusion_matrix(y_true, y_pred, labels=classes),
        report=skm.classification_report(
            y_true, y_pred, labels=classes, target_names=list(LABELS), digits=3, zero_division=0
        ),
    )


def roc_points(labels: np.ndarray, p_dog: np.ndarray) -> pd.DataFrame:
    """The ROC curve ("dog" is the positive class) as ``fpr`` and ``tpr`` columns, from (0, 0) to (1, 1)."""
    fpr, tpr, _ = skm.roc_curve(np.asarray(labels).astype(int).reshape(-1), np.asarray(p_dog).reshape(-1))
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def timed_predictions(model: keras.Model, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> tuple[np.ndarray, float]:
    """Predicts P(dog) for every photo and times it.

    One batch is predicted first and not timed: the first call builds the
    prediction graph, a one-off cost that is not the model's speed.

    Args:
        model: takes raw 0..255 RGB photos, returns P(dog) of shape (n, 1).
        images: float32 (n, size, size, 3).
        batch_size: photos per predict batch.

    Returns:
        P(dog) of shape (n,), and wall-clock milliseconds per photo of the
        timed ``predict`` over all of ``images``.
    """
    model.predict(images[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    p_dog = model.predict(images, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    return np.asarray(p_dog, dtype=np.float64).reshape(-1), 1000.0 * seconds / len(images)


def shortcut_predictions(
    stage: str, model: keras.Model, saved: FrozenOutputs, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE
) -> tuple[np.ndarray, float]:
    """P(dog) of every photo from what the model's frozen layers already made, checked and timed end to end.

    The model's top (the layers after ``saved.layer``) runs on the saved
    outputs. The first :data:`TIMED_PHOTOS` photos also go through the whole
    saved model: that times it as it is deployed, and proves the shortcut
    gives its probabilities.

    Raises:
        EvaluationError: the two disagree by more than :data:`SHORTCUT_TOLERANCE`
            (the saved outputs are not this model's frozen layers' work).
    """
    p_dog = np.asarray(top_from(model, saved.layer).predict(saved.inputs, batch_size=batch_size, verbose=0), dtype=np.float64).reshape(-1)
    sample = images[:TIMED_PHOTOS]
    p_sample, ms = timed_predictions(model, sample, batch_size)
    gap = float(np.max(np.abs(p_sample - p_dog[: len(sample)])))
    if gap > SHORTCUT_TOLERANCE:
        raise EvaluationError(
            f"{stage}: scoring on the saved outputs of {saved.layer or 'the VGG16 base'} differs from the saved model "
            f"by {gap:.2g} in P(dog): they are not this model's frozen layers' work; run `dvc repro vgg16_bottleneck {dvc_stage(stage)}`"
        )
    return p_dog, ms


def evaluate_model(
    stage: str,
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = PREDICT_BATCH_SIZE,
    saved: FrozenOutputs | None = None,
) -> ModelEvaluation:
    """Scores one model on the test photos.

    Args:
        stage: the stage that trained the model.
        model: takes raw 0..255 RGB photos, returns P(dog).
        images: the test photos, float32 (n, size, size, 3).
        labels: their labels, 0 cat, 1 dog.
        batch_size: photos per predict batch.
        saved: what the model's frozen VGG16 layers made of the same photos;
            then only the layers after them run (see :func:`shortcut_predictions`).

    Returns:
        The model's predictions, scores, size and speed.

    Raises:
        EvaluationError: the model predicts NaN (its training diverged).
    """
    if saved is None:
        p_dog, ms = timed_predictions(model, images, batch_size)
    else:
        p_dog, ms = shortcut_predictions(stage, model, saved, images, batch_size)
    if not np.isfinite(p_dog).all():
        raise EvaluationError(
            f"the {stage} model predicts NaN for {int((~np.isfinite(p_dog)).sum())} test photos: its training "
            f"diverged; lower {stage}.learning_rate in params.yaml and run `dvc repro {dvc_stage(stage)}`"
        )
    return ModelEvaluation(
        stage=stage,
        parameters=int(model.count_params()),
        p_dog=p_dog,
        scores=score_predictions(labels, p_dog),
        roc=roc_points(labels, p_dog),
        ms_per_image=ms,
    )


def _missing(path: Path, stage: str) -> EvaluationError:
    return EvaluationError(f"{path} not found: it is made by the {dvc_stage(stage)} stage; run `dvc repro {dvc_stage(stage)}`")


def model_path(models_dir: Path, stage: str) -> Path:
    """Where a stage saves its model: ``<models_dir>/<stage>.keras``."""
    return Path(models_dir) / f"{stage}.keras"


def check_stage_outputs(stages: Sequence[str], models_dir: Path, metrics_dir: Path) -> None:
    """Fails before any work if a stage's model or metrics file is missing.

    Raises:
        EvaluationError: naming the first missing file and the command that makes it.
    """
    for stage in stages:
        for path in (model_path(models_dir, stage), Path(metrics_dir) / f"{stage}.json"):
            if not path.is_file():
                raise _missing(path, stage)


def load_stage_model(models_dir: Path, stage: str) -> keras.Model:
    """Loads ``<models_dir>/<stage>.keras`` for prediction.

    Raises:
        EvaluationError: the file is missing.
    """
    path = model_path(models_dir, stage)
    if not path.is_file():
        raise _missing(path, stage)
    return load_stage_model_file(path, stage)


def load_training_summary(metrics_dir: Path, stage: str) -> dict:
    """Reads ``<metrics_dir>/<stage>.json``, the summary a model stage wrote.

    Raises:
        EvaluationError: the file is missing or not JSON.
    """
    path = Path(metrics_dir) / f"{stage}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _missing(path, stage) from None
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path} is not valid JSON ({err}); run `dvc repro --force {dvc_stage(stage)}`") from None


def training_photos(manifest: Path) -> int:
    """Counts the training photos listed in the dataset manifest.

    Raises:
        EvaluationError: the manifest is missing.
    """
    try:
        splits = pd.read_csv(manifest, usecols=["split"])["split"]
    except FileNotFoundError:
        raise EvaluationError(f"{manifest} not found; run `dvc repro build_small_dataset`") from None
    return int((splits == "train").sum())


def headline_metrics(evaluation: ModelEvaluation, summary: Mapping[str, object], champion_stage: str) -> dict:
    """A model's ``metrics/<model>.json``: :data:`HEADLINE_KEYS`, test scores beside training figures.

    Args:
        evaluation: the model's test results.
        summary: its training stage's summary (``metrics/training/<model>.json``).
        champion_stage: the stage whose model is the champion.
    """
    test = evaluation.summary()
    values = {
        **{key: test[key] for key in ("test_accuracy", "test_f1", "test_roc_auc", "ms_per_image")},
        **{key: summary.get(key) for key in ("best_val_accuracy", "epochs", "training_seconds")},
        "champion": evaluation.stage == champion_stage,
    }
    return {key: values[key] for key in HEADLINE_KEYS}


@dataclass(frozen=True)
class EvaluationOutcome:
    """What :func:`run_evaluation` found and did."""

    evaluations: tuple[ModelEvaluation, ...]
    table: pd.DataFrame
    choice: champion.Choice
    promoted: bool
    run_id: str


def saved_outputs(stage: str, features_dir: Path | None, split: str, data_dir: Path, paths: Sequence[Path]) -> FrozenOutputs | None:
    """What vgg16_bottleneck saved of ``split`` for ``stage``'s frozen layers, or None to score it end to end.

    Raises:
        EvaluationError: the saved photos are not the split's photos.
    """
    if features_dir is None or stage not in (*HEAD_ONLY, *FROZEN_PREFIX):
        return None
    layer = None if stage in HEAD_ONLY else saved_frozen_layer(features_dir)
    if stage in FROZEN_PREFIX and layer is None:
        return None  # fine_tune trains every layer: nothing frozen to reuse
    saved = load_frozen_outputs(features_dir, split, layer)
    expected = [str(Path(p).relative_to(data_dir)) for p in paths]
    if saved.files.tolist() != expected:
        raise EvaluationError(
            f"the bottleneck features in {features_dir} were made from other {split} photos than {Path(data_dir) / split}; "
            "run `dvc repro vgg16_bottleneck`"
        )
    return saved


def score_models(
    stages: Sequence[str],
    models_dir: Path,
    data_dir: Path,
    image_size: int,
    batch_size: int = PREDICT_BATCH_SIZE,
    *,
    with_validation: bool = False,
    features_dir: Path | None = None,
) -> tuple[list[ModelEvaluation], np.ndarray, list[Path], tuple[np.ndarray, dict[str, np.ndarray]] | None]:
    """Scores each stage's saved model on the test photos, one model in memory at a time.

    Args:
        stages: the model stages.
        models_dir: holds ``<stage>.keras``.
        data_dir: the small dataset; its ``test/`` photos are scored.
        image_size: the models' input side.
        batch_size: photos per predict batch.
        with_validation: also predict the ``validation/`` photos (to fit a
            temperature on them).
        features_dir: vgg16_bottleneck's output: the VGG16 models are then
            scored from what their frozen layers made there
            (:func:`shortcut_predictions`).

    Returns:
        The evaluations in ``stages`` order, the test labels, the photo
        paths, and the validation labels with each model's P(dog) on them
        (None unless ``with_validation``).

    Raises:
        EvaluationError: a model file is missing.
        catsdogs.data.inputs.InputDataError: the test split is missing or empty.
    """
    data_dir = Path(data_dir)
    images, labels, paths = load_split_arrays(data_dir / "test", image_size=image_size)
    val_images, val_labels, val_paths = (
        load_split_arrays(data_dir / "validation", image_size=image_size) if with_validation else (None, None, None)
    )
    evaluations, val_p = [], {}
    for stage in stages:
        model = load_stage_model(models_dir, stage)
        saved = saved_outputs(stage, features_dir, "test", data_dir, paths)
        evaluations.append(evaluate_model(stage, model, images, labels, batch_size, saved=saved))
        if val_images is not None:
            val_saved = saved_outputs(stage, features_dir, "validation", data_dir, val_paths)
            scorer, inputs = (model, val_images) if val_saved is None else (top_from(model, val_saved.layer), val_saved.inputs)
            val_p[stage] = np.asarray(scorer.predict(inputs, batch_size=batch_size, verbose=0), dtype=np.float64).reshape(-1)
        print(f"evaluate: {stage}: test accuracy {evaluations[-1].scores.accuracy:.3f}")
        del model
        keras.backend.clear_session()
    return evaluations, labels, paths, ((val_labels, val_p) if with_validation else None)


def extra_predictions(
    stages: Sequence[str], models_dir: Path, images: np.ndarray, *, share_frozen: bool, frozen_layer: str | None,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> dict[str, np.ndarray]:
    """Every model's P(dog) on the extra test photos, each photo through the frozen VGG16 layers once.

    With ``share_frozen``, the first VGG16 model's frozen ImageNet layers map
    the photos up to ``frozen_layer`` (the last layer fine_tune keeps
    frozen), the base's rest makes the features once, and each VGG16 model
    runs only its own layers on what it needs.
    """
    predictions: dict[str, np.ndarray] = {}
    middle = features = None
    for stage in stages:
        model = load_stage_model(models_dir, stage)
        if share_frozen and stage in (*HEAD_ONLY, *FROZEN_PREFIX):
            layer = frozen_layer if stage in FROZEN_PREFIX else None
            if frozen_layer is not None and middle is None:
                middle = frozen_part(model, frozen_layer).predict(images, batch_size=batch_size, verbose=0)
            if stage in HEAD_ONLY and features is None:
                features = (
                    top_from(model, frozen_layer, head=False).predict(middle, batch_size=batch_size, verbose=0)
                    if middle is not None else frozen_part(model, None).predict(images, batch_size=batch_size, verbose=0)
                )
            if stage in FROZEN_PREFIX and layer is None:
                p = model.predict(images, batch_size=batch_size, verbose=0)
            else:
                p = top_from(model, layer).predict(features if layer is None else middle, batch_size=batch_size, verbose=0)
        else:
            p = model.predict(images, batch_size=batch_size, verbose=0)
        predictions[stage] = np.asarray(p, dtype=np.float64).reshape(-1)
        del model
        keras.backend.clear_session()
    return predictions


def run_evaluation(
    stages: Sequence[str] = TRAINING_STAGES,
    *,
    data_dir: Path,
    models_dir: Path,
    metrics_dir: Path,
    image_size: int,
    out_metrics_dir: Path,
    reports_dir: Path,
    batch_size: int = PREDICT_BATCH_SIZE,
    root: Path | None = None,
    settings: EvaluateParams = EvaluateParams(),
    seed: int = 42,
    out_statistics: Path | None = None,
    features_dir: Path | None = None,
    raw_dir: Path | None = None,
) -> EvaluationOutcome:
    """Runs the evaluate stage: scores, reports, MLflow and the champion alias.

    Writes ``<out_metrics_dir>/<stage>.json`` per model (see
    :func:`headline_metrics`) and ``reports_dir`` (see
    :mod:`catsdogs.evaluation.reports`). Logs an ``evaluate`` MLflow run holding both, adds ``test_*`` metrics to each model's own training run (found
    through its registered version), and outside ``dvc exp run`` moves the
    ``champion`` alias to the winner (see :mod:`catsdogs.evaluation.champion`).

    Args:
        stages: the model stages to compare, in pipeline order.
        data_dir: the small dataset; ``test/`` and ``manifest.csv`` are read.
        models_dir: holds ``<stage>.keras``.
        metrics_dir: holds each stage's ``<stage>.json`` training summary.
        image_size: the models' input side (``base.image_size``).
        out_metrics_dir: the folder of the headline ``<stage>.json`` files to write.
        reports_dir: the reports folder to (re)write.
        batch_size: photos per predict batch.
        root: the project root whose MLflow store is used; found from the
            current directory by default.
        settings: the ``evaluate`` params (bootstrap resamples, temperature scaling).
        seed: seeds the bootstrap (``base.seed``).
        out_statistics: where the intervals, calibration and paired tests go
            as metrics JSON; not written when None.
        features_dir: vgg16_bottleneck's output; the VGG16 models' frozen
            layers are then not run again over the test photos (but for
            :data:`TIMED_PHOTOS` of them).
        raw_dir: the download stage's photos; with
            ``settings.extra_test_photos`` above 0, that many photos of it
            the small dataset did not draw are a second, labelled test set
            (see :mod:`catsdogs.data.extra_test`).

    Returns:
        The evaluations, the comparison table, the champion choice, whether
        the alias moved, and the ``evaluate`` run's id.

    Raises:
        EvaluationError: no stages, or a model or metrics file is missing.
        catsdogs.data.inputs.InputDataError: the test split is missing or empty.
        catsdogs.tracking.mlflow_runs.TrackingError: the MLflow store cannot be reached.
    """
    stages = list(dict.fromkeys(stages))
    if not stages:
        raise EvaluationError("no stages to evaluate; name at least one model stage")
    check_stage_outputs(stages, models_dir, metrics_dir)
    summaries = {stage: load_training_summary(metrics_dir, stage) for stage in stages}
    manifest = Path(data_dir) / "manifest.csv"
    n_train = training_photos(manifest)
    root = Path(root).resolve() if root is not None else mlflow_runs.project_root()
    mlflow_runs.use_experiment(root)  # fail on an unreachable store before minutes of predictions

    evaluations, labels, paths, validation = score_models(
        stages, models_dir, Path(data_dir), image_size, batch_size, with_validation=settings.temperature_scaling,
        features_dir=features_dir,
    )
    uncertainty = statistics.assess(
        "test split", labels, {e.stage: e.p_dog for e in evaluations},
        resamples=settings.bootstrap_resamples, seed=seed, validation=validation, threshold=THRESHOLD,
    )
    extra = None
    if settings.extra_test_photos and raw_dir is not None:
        extra, extra_seconds = score_extra_test_set(
            stages, models_dir, Path(data_dir), Path(raw_dir), settings, seed=seed, image_size=image_size,
            features_dir=features_dir, batch_size=batch_size,
        )
    elif settings.extra_test_photos:
        raise EvaluationError("evaluate.extra_test_photos is set but no raw photos folder was given (--raw data/raw)")
    tested = [uncertainty] if extra is None else [uncertainty, extra]

    registered = mlflow_runs.registered_versions()
    versions = {
        stage: champion.stage_version(stage, summaries[stage], registered, mlflow_runs.run_metrics) for stage in stages
    }
    choice = champion.choose_champion([
        champion.Candidate(
            stage=e.stage,
            test_accuracy=e.scores.accuracy,
            training_seconds=float(summaries[e.stage].get("training_seconds") or 0.0),
            parameters=e.parameters,
            version=versions[e.stage].version if versions[e.stage] else None,
        )
        for e in evaluations
    ])
    experiment = experiment_name()
    promote = experiment is None and choice.winner.version is not None
    note = champion.promotion_note(choice, experiment)
    table = reports.comparison_table(
        evaluations,
        summaries,
        n_train,
        versions={s: (v.version if v else None) for s, v in versions.items()},
        champion=choice.winner.stage,
        uncertainty=uncertainty,
    )
    reports.write_reports(
        reports_dir, table=table, evaluations=evaluations, labels=labels, photo_paths=paths,
        choice=choice, champion_note=note, uncertainty=tested,
    )
    headline_files = [
        write_json_atomically(
            headline_metrics(e, summaries[e.stage], choice.winner.stage), Path(out_metrics_dir) / f"{e.stage}.json"
        )
        for e in evaluations
    ]
    metric_files = list(headline_files)
    if out_statistics is not None:
        statistics_json = {"test_split": uncertainty.summary()}
        if extra is not None:
            statistics_json["extra_test"] = {"photos": extra.models[0].n, "seconds": round(extra_seconds, 1), **extra.summary()}
        metric_files.append(write_json_atomically(statistics_json, out_statistics))

    run_params = {
        "evaluate.stages": ",".join(stages),
        "evaluate.batch_size": batch_size,
        "evaluate.threshold": THRESHOLD,
        "evaluate.bootstrap_resamples": settings.bootstrap_resamples,
        "evaluate.temperature_scaling": settings.temperature_scaling,
        "evaluate.extra_test_photos": settings.extra_test_photos if extra is not None else 0,
        "base.seed": seed,
        "base.image_size": image_size,
        **{f"split.test.{label}": int((labels == i).sum()) for i, label in enumerate(LABELS)},
    }
    files = {"reports": [reports_dir], "metrics": metric_files}
    run_id = record_in_mlflow(
        evaluations, versions, choice, promote,
        run_params=run_params, manifest=manifest, files=files, root=root, uncertainty=uncertainty, extra=extra,
    )
    print(f"evaluate: champion {choice.winner.stage}, with {choice.reason}. {note}")
    return EvaluationOutcome(tuple(evaluations), table, choice, promote, run_id)


def uncertainty_metrics(uncertainty: statistics.Uncertainty | None, everything: bool = False) -> dict[str, dict[str, float]]:
    """Per model, the numeric statistics its MLflow run gets (``test_accuracy_low``, ..., ``temperature``).

    The accuracy and ROC AUC themselves are left out (the run has them
    already), unless ``everything``.
    """
    if uncertainty is None:
        return {}
    summary = uncertainty.summary()
    already = () if everything else ("test_n", "test_accuracy", "test_roc_auc")
    return {m.model: {k: float(v) for k, v in summary[m.model].items() if k not in already} for m in uncertainty.models}


def score_extra_test_set(
    stages: Sequence[str],
    models_dir: Path,
    data_dir: Path,
    raw_dir: Path,
    settings: EvaluateParams,
    *,
    seed: int,
    image_size: int,
    features_dir: Path | None,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> tuple[statistics.Uncertainty, float]:
    """Scores every model on up to ``settings.extra_test_photos`` undrawn archive photos.

    Returns:
        Their statistics (labelled as the extra test set) and the seconds it took.
    """
    started = time.perf_counter()
    photos = undrawn_photos(raw_dir, data_dir, settings.extra_test_photos, seed)
    if len({p.parent.name for p in photos}) < len(LABELS):
        raise EvaluationError(f"{raw_dir} holds no undrawn photos of one class: set evaluate.extra_test_photos: 0")
    images, labels, _ = load_photos(photos, image_size)
    frozen_layer = saved_frozen_layer(features_dir) if features_dir is not None else None
    p_dog = extra_predictions(
        stages, models_dir, images, share_frozen=features_dir is not None, frozen_layer=frozen_layer, batch_size=batch_size
    )
    extra = statistics.assess(
        "extra test set (archive photos the small dataset did not draw)", labels, p_dog,
        resamples=settings.bootstrap_resamples, seed=seed, threshold=THRESHOLD,
    )
    seconds = time.perf_counter() - started
    print(f"evaluate: extra test set: {len(photos)} photos, {len(stages)} models, {seconds:.0f} s")
    return extra, seconds


def record_in_mlflow(
    evaluations: Sequence[ModelEvaluation],
    versions: Mapping[str, mlflow_runs.RegisteredVersion | None],
    choice: champion.Choice,
    promote: bool,
    *,
    run_params: Mapping[str, object],
    manifest: Path,
    files: Mapping[str, Sequence[Path]],
    root: Path,
    uncertainty: statistics.Uncertainty | None = None,
    extra: statistics.Uncertainty | None = None,
) -> str:
    """Logs the ``evaluate`` run, adds test metrics to each model's run and to the
    pipeline's parent run, moves the alias.

    Args:
        evaluations: each model's test results.
        versions: each stage's registered version, or None.
        choice: the champion choice.
        promote: move the ``champion`` alias to the winner's version.
        run_params: the evaluate run's params.
        manifest: the dataset manifest, whose digest tags the run.
        files: artifact folder -> local files or folders to log there.
        root: the project root.
        uncertainty: the test split's statistics: the evaluate run gets all
            of them, each model's run its own intervals, calibration and
            fitted temperature.
        extra: the extra test set's statistics, logged as ``extra.<model>.<key>``.

    Returns:
        The ``evaluate`` run's id.
    """
    tags = {
        "champion.stage": choice.winner.stage,
        "champion.version": choice.winner.version or "none",
        "champion.promoted": str(promote).lower(),
    }
    with mlflow_runs.start_run(
        "evaluate", run_params, manifest=manifest, extra_tags=tags, root=root, dataset_context="evaluation"
    ) as run:
        scores = {f"{e.stage}.{key}": value for e in evaluations for key, value in e.summary().items()}
        run.log_summary(scores)
        # The parent run compares executions: it gets every model's test scores and the choice.
        mlflow_runs.log_run_metrics(run.parent_run_id, scores)
        mlflow_runs.set_run_tags(run.parent_run_id, tags)
        own_statistics = uncertainty_metrics(uncertainty)
        run.log_summary({f"{stage}.{key}": value for stage, values in own_statistics.items() for key, value in values.items()})
        if uncertainty is not None:
            run.log_summary({
                f"story.{row.before}.{row.after}.{key}": float(getattr(row, key))
                for row in uncertainty.steps.itertuples(index=False)
                for key in ("difference", "difference_low", "difference_high", "mcnemar_p")
            })
        run.log_summary({
            f"extra.{stage}.{key}": value for stage, values in uncertainty_metrics(extra, everything=True).items()
            for key, value in values.items()
        })
        for folder, paths in files.items():
            for path in paths:
                mlflow_runs.log_artifacts(run.run_id, Path(path), folder)
        for e in evaluations:
            version = versions[e.stage]
            if version is not None and version.run_id:
                mlflow_runs.log_run_metrics(version.run_id, {**e.run_metrics(), **own_statistics.get(e.stage, {})})
            else:
                print(f"evaluate: {e.stage}: no registered version holds this model; its test metrics stay in the evaluate run")
        if promote:
            mlflow_runs.set_model_alias(champion.CHAMPION_ALIAS, choice.winner.version)
    return run.run_id
