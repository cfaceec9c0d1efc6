"""The three from-scratch CNN stages: scratch_cnn, regularized_cnn, augmented_cnn."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras

from catsdogs import models
from catsdogs.augmentation import make_augmentation
from catsdogs.config import Params, flatten
from catsdogs.inputs import count_images, make_dataset
from catsdogs.model_stage import StageOutputs, train_and_record

# The augmented CNN is the regularized architecture fed augmented batches.
ARCHITECTURES: dict[str, Callable[[int], keras.Model]] = {
    "scratch_cnn": models.build_scratch_cnn,
    "regularized_cnn": models.build_regularized_cnn,
    "augmented_cnn": models.build_regularized_cnn,
}
AUGMENTED = frozenset({"augmented_cnn"})


def split_sizes(data_dir: Path) -> dict[str, int]:
    """Photos per split and class, e.g. ``{"split.train.cat": 1500, ...}``, for MLflow."""
    sizes = {}
    for split in ("train", "validation"):
        for label, n in count_images(data_dir / split).items():
            sizes[f"split.{split}.{label}"] = n
    return sizes


def stage_params(params: Params, stage: str, data_dir: Path) -> dict[str, Any]:
    """Every value a CNN stage reads from params.yaml, flat, plus the split sizes."""
    flat = {**flatten(params.base, "base"), **flatten(getattr(params, stage), stage)}
    if stage in AUGMENTED:
        flat.update(flatten(params.augmentation, "augmentation"))
    flat.update(split_sizes(data_dir))
    return flat


def train_cnn(stage: str, params: Params, *, data_dir: Path, outputs: StageOutputs) -> dict:
    """Trains one from-scratch CNN stage on ``data_dir`` and records it.

    Args:
        stage: one of :data:`ARCHITECTURES`.
        params: the whole validated params.yaml.
        data_dir: the small dataset (``train/`` and ``validation/`` are used).
        outputs: the stage's DVC outputs.

    Returns:
        The stage's metrics summary.
    """
    settings = getattr(params, stage)
    size, seed = params.base.image_size, params.base.seed
    models.check_image_size(stage, size)
    models.make_deterministic(seed)
    augment = make_augmentation(params.augmentation, seed) if stage in AUGMENTED else None
    train = make_dataset(
        data_dir / "train",
        image_size=size,
        batch_size=settings.batch_size,
        shuffle=True,
        seed=seed,
        augment=augment,
        repeat=settings.steps_per_epoch is not None,
    )
    validation = make_dataset(
        data_dir / "validation", image_size=size, batch_size=settings.batch_size, shuffle=False, seed=seed
    )
    model = ARCHITECTURES[stage](size)
    models.compile_model(model, settings.optimizer, settings.learning_rate)
    return train_and_record(
        stage,
        model,
        train,
        validation,
        settings,
        train_images=sum(count_images(data_dir / "train").values()),
        run_params=stage_params(params, stage, data_dir),
        manifest=data_dir / "manifest.csv",
        outputs=outputs,
    )
