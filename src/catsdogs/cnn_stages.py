"""The three from-scratch CNN stages: scratch_cnn, regularized_cnn, augmented_cnn."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras

from catsdogs import models
from catsdogs.augmentation import make_augmentation
from catsdogs.config import Params
from catsdogs.inputs import count_images, make_dataset
from catsdogs.model_stage import StageOutputs, stage_params, train_and_record
from catsdogs.reproducibility import make_deterministic
from catsdogs.runtime import configure_runtime

# The augmented CNN is the regularized architecture fed augmented batches.
ARCHITECTURES: dict[str, Callable[[int], keras.Model]] = {
    "scratch_cnn": models.build_scratch_cnn,
    "regularized_cnn": models.build_regularized_cnn,
    "augmented_cnn": models.build_regularized_cnn,
}
AUGMENTED = frozenset({"augmented_cnn"})


def train_cnn(
    stage: str, params: Params, *, data_dir: Path, outputs: StageOutputs, models_dir: Path = Path("models")
) -> dict:
    """Trains one from-scratch CNN stage on ``data_dir`` and records it.

    Args:
        stage: one of :data:`ARCHITECTURES`.
        params: the whole validated params.yaml.
        data_dir: the small dataset (``train/`` and ``validation/`` are used).
        outputs: the stage's DVC outputs.
        models_dir: where the earlier stages' models are, for
            ``augmented_cnn.initial_weights``.

    Returns:
        The stage's metrics summary.
    """
    settings = getattr(params, stage)
    size, seed = params.base.image_size, params.base.seed
    models.check_image_size(stage, size)
    make_deterministic(seed)
    runtime = configure_runtime(params.base.precision, params.base.distribution)
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
    with runtime.strategy.scope():
        model = ARCHITECTURES[stage](size)
        source = getattr(settings, "initial_weights", "none")
        started = {} if source == "none" else models.start_from(
            model, f"{stage}.initial_weights", source, models_dir / f"{source}.keras"
        )
        models.compile_model(model, settings.optimizer, settings.learning_rate)
    return train_and_record(
        stage,
        model,
        train,
        validation,
        settings,
        train_images=sum(count_images(data_dir / "train").values()),
        run_params=stage_params(params, ("base", stage, *(("augmentation",) if stage in AUGMENTED else ())), data_dir),
        manifest=data_dir / "manifest.csv",
        outputs=outputs,
        extra_tags=started,
    )
