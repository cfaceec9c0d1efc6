"""The three from-scratch CNN stages: scratch_cnn, regularized_cnn, augmented_cnn."""

from __future__ import annotations

from pathlib import Path

from catsdogs.core import study
from catsdogs.core.config import Params
from catsdogs.core.reproducibility import make_deterministic
from catsdogs.core.runtime import configure_runtime
from catsdogs.data.augmentation import make_augmentation
from catsdogs.data.inputs import count_images, make_dataset
from catsdogs.models import networks
from catsdogs.training.model_stage import StageOutputs, stage_params, train_and_record


def train_cnn(
    stage: str, params: Params, *, data_dir: Path, outputs: StageOutputs, models_dir: Path = Path("models")
) -> dict:
    """Trains one from-scratch CNN stage on ``data_dir`` and records it.

    Args:
        stage: a CNN of :data:`catsdogs.core.study.MODELS`.
        params: the whole validated params.yaml.
        data_dir: the small dataset (``train/`` and ``validation/`` are used).
        outputs: the stage's DVC outputs.
        models_dir: where the earlier stages' models are, for
            a ``start_param`` such as ``augmented_cnn.initial_weights``.

    Returns:
        The stage's metrics summary.
    """
    spec, settings = study.model(stage), getattr(params, stage)
    size, seed = params.base.image_size, params.base.seed
    networks.check_image_size(stage, size)
    make_deterministic(seed)
    runtime = configure_runtime(params.base.precision, params.base.distribution)
    augment = make_augmentation(params.augmentation, seed) if spec.augmented else None
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
        model = getattr(networks, spec.builder)(size)
        source = "none" if spec.start_param is None else getattr(settings, spec.start_param)
        started = {} if source == "none" else networks.start_from(
            model, f"{stage}.{spec.start_param}", source, models_dir / f"{source}.keras"
        )
        networks.compile_model(model, settings.optimizer, settings.learning_rate)
    return train_and_record(
        stage,
        model,
        train,
        validation,
        settings,
        train_images=sum(count_images(data_dir / "train").values()),
        run_params=stage_params(params, spec.sections, data_dir),
        manifest=data_dir / "manifest.csv",
        outputs=outputs,
        extra_tags=started,
    )
