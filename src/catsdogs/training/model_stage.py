"""What every model stage does around ``fit``: one MLflow run, the DVC outputs.

A model stage builds its datasets and its compiled model, then hands them to
:func:`train_and_record`, which trains inside a tracking run and writes the
same outputs for every stage: the ``.keras`` model, ``metrics/training/<stage>.json``
and ``plots/<stage>/history.csv``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from catsdogs.core import stopping

from catsdogs.tracking import mlflow_runs

from catsdogs.core.atomic import sha256_file, write_atomically
from catsdogs.core.config import Params, TrainParams, flatten
from catsdogs.core.project import project_root
from catsdogs.core.runtime import distribution_tags
from catsdogs.core.stopping import StageStopped
from catsdogs.data.inputs import count_images
from catsdogs.training import loop
from catsdogs.training.resume import EpochCheckpoint, ResumeState, fit_key


@dataclass(frozen=True)
class StageOutputs:
    """The paths a model stage declares in dvc.yaml."""

    model: Path
    metrics: Path
    plots_dir: Path

    @property
    def history(self) -> Path:
        return self.plots_dir / "history.csv"


def stage_params(params: Params, sections: tuple[str, ...], data_dir: Path) -> dict[str, Any]:
    """Every value a stage reads from params.yaml, flat, plus the split sizes.

    Args:
        params: the whole validated params.yaml.
        sections: the sections the stage reads (as listed in dvc.yaml).
        data_dir: the small dataset, whose train and validation photos are counted.

    Returns:
        ``{"<section>.<key>": value, ..., "split.train.cat": 1500, ...}``.
    """
    flat: dict[str, Any] = {}
    for section in sections:
        flat.update(flatten(getattr(params, section), section))
    for split in ("train", "validation"):
        for label, n in count_images(data_dir / split).items():
            flat[f"split.{split}.{label}"] = n
    return flat


def save_model_atomically(model: keras.Model, path: Path) -> Path:
    """Saves a ``.keras`` file so that a crash never leaves half a model behind."""
    return write_atomically(path, model.save)


def example_photo(dataset: tf.data.Dataset) -> np.ndarray:
    """One raw photo from a dataset of batches, as the model's input example."""
    images, _ = next(iter(dataset.take(1)))
    return images[:1].numpy()


def train_and_record(
    stage: str,
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset | loop.PrecomputedValidation,
    settings: TrainParams,
    *,
    train_images: int,
    run_params: Mapping[str, Any],
    manifest: Path | None,
    outputs: StageOutputs,
    extra_tags: Mapping[str, str] | None = None,
    deployable: keras.Model | None = None,
    example: np.ndarray | None = None,
) -> dict:
    """Trains ``model`` inside the stage's MLflow run and writes its outputs.

    Args:
        stage: the DVC stage name (run name and registered-model alias).
        model: compiled, taking raw 0..255 RGB photos; built inside the
            scope of the strategy it trains under (tagged ``distribution``).
        train: training batches; repeating when ``settings.steps_per_epoch`` is set.
        validation: validation batches, never augmented, or the validation
            inputs the model's frozen layers already made
            (:class:`~catsdogs.training.loop.PrecomputedValidation`).
        settings: the stage's epochs, batch size, steps per epoch and which
            epoch's weights to keep.
        train_images: photos in the training split.
        run_params: every parameter the stage read, flat, for MLflow.
        manifest: the dataset manifest, whose digest tags the run.
        outputs: where the model, metrics and history go.
        extra_tags: more MLflow tags (e.g. where the VGG16 weights came from).
        deployable: the model to save and register when it is not ``model``
            itself, e.g. VGG16 base + a head trained on bottleneck features;
            it must take raw 0..255 RGB photos.
        example: one raw photo as the registered model's input example; by
            default the first photo of ``validation`` (required when that
            holds precomputed inputs).

    Returns:
        The summary written to ``outputs.metrics``.
    """
    deployable = model if deployable is None else deployable
    tags = {**distribution_tags(model.distribute_strategy), **(extra_tags or {})}
    inputs = {**tags, "manifest": sha256_file(manifest) if manifest and manifest.is_file() else ""}
    state = ResumeState(project_root(), stage, fit_key(stage, run_params, inputs))
    with state, mlflow_runs.start_run(stage, run_params, manifest=manifest, extra_tags=tags) as run:
        run.log_model_summary(deployable)
        restored = state.restore(model) if state.held else None
        if restored is not None:
            print(f"{stage}: resuming after epoch {restored.epochs_done} of {settings.epochs} from {state.path}")
            run.log_resumed(restored.history, restored.run_id)
        checkpoint = [EpochCheckpoint(state, restored, run.run_id)] if state.held else []
        try:
            result = loop.fit(
                model,
                train,
                validation,
                epochs=settings.epochs,
                train_images=train_images,
                batch_size=settings.batch_size,
                steps_per_epoch=settings.steps_per_epoch,
                callbacks=[run.callback(), *checkpoint],
                resumed=restored,
                label=stage,
                keep=settings.keep,
            )
        except StageStopped as stop:
            done = len(checkpoint[0].history) if checkpoint else 0
            stop.detail = f" after epoch {done} of {settings.epochs}" + (
                "; `dvc repro` resumes from there" if state.held and done else ""
            )
            raise
        # The outputs and the registered version are written whole or not at
        # all: a stop signal now waits until they are.
        with stopping.deferred(stop_after=False):
            summary = loop.summarize(result)
            save_model_atomically(deployable, outputs.model)
            loop.write_history(result.history, outputs.history)
            loop.write_metrics(summary, outputs.metrics)
            run.log_history(result.history)
            run.log_summary(summary)
            example = example_photo(validation) if example is None else example
            version = run.log_model(deployable, example=example)
            state.clear()
    print(
        f"{stage}: best val_accuracy {summary['best_val_accuracy']:.3f} at epoch {summary['best_epoch']}, "
        f"kept epoch {summary['kept_epoch']} ({settings.keep}), "
        f"{summary['training_seconds']:.0f} s; registered cats-vs-dogs version {version} as @{stage}"
    )
    return summary


def model_stage_arguments(
    doc: str | None,
    argv: list[str] | None = None,
    extra: list[tuple[str, type, str]] = (),
    *,
    positional: list[tuple[str, tuple[str, ...], str]] = (),
    optional: list[tuple[str, type, str]] = (),
) -> argparse.Namespace:
    """Parses the paths every model stage gets from dvc.yaml.

    Args:
        doc: the stage's usage text.
        argv: the arguments; ``sys.argv`` by default.
        extra: more required options as ``(flag, type, help)``.
        positional: leading arguments as ``(name, choices, help)``.
        optional: options that may be left out (None), as ``(flag, type, help)``.

    Returns:
        ``params`` and ``data`` paths, and ``outputs`` (a :class:`StageOutputs`).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, choices, text in positional:
        parser.add_argument(name, choices=choices, help=text)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    parser.add_argument("--data", type=Path, required=True, help="the small dataset folder")
    parser.add_argument("--model", type=Path, required=True, help="where the .keras model goes")
    parser.add_argument("--metrics", type=Path, required=True, help="where the metrics JSON goes")
    parser.add_argument("--plots", type=Path, required=True, help="folder of the history CSV")
    for flag, kind, text in extra:
        parser.add_argument(flag, type=kind, required=True, help=text)
    for flag, kind, text in optional:
        parser.add_argument(flag, type=kind, default=None, help=text)
    args = parser.parse_args(argv)
    args.outputs = StageOutputs(model=args.model, metrics=args.metrics, plots_dir=args.plots)
    return args
