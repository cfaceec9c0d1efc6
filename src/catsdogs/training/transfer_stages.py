"""Transfer learning from ImageNet VGG16: the vgg16_features, vgg16_augmented
and fine_tune stages.

VGG16 is used three ways, as in the chapter: a frozen feature extractor whose
outputs are computed once and feed a small dense head; the same frozen base
inside the model, trained on augmented photos; and blocks 4-5 unfrozen and
fine-tuned at a very low learning rate.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from catsdogs.core import study
from catsdogs.core.config import Params
from catsdogs.core.reproducibility import make_deterministic
from catsdogs.core.runtime import configure_runtime
from catsdogs.data.augmentation import make_augmentation
from catsdogs.data.inputs import count_images, make_dataset
from catsdogs.models import networks
from catsdogs.models.bottleneck import TransferError, last_frozen_layer, unfreeze_from, load_features, load_frozen_outputs, top_from, vgg16_base
from catsdogs.models.vgg16_weights import ResolvedWeights
from catsdogs.training.loop import PrecomputedValidation
from catsdogs.training.model_stage import StageOutputs, example_photo, stage_params, train_and_record


def weights_tags(resolved: ResolvedWeights) -> dict[str, str]:
    """MLflow tags saying which ImageNet weights a run used."""
    return {"vgg16.weights_source": str(resolved.source), "vgg16.weights_digest": resolved.digest}


def _batches(features: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool, seed: int, repeat: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        ds = ds.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_vgg16_features(params: Params, *, features_dir: Path, data_dir: Path, outputs: StageOutputs) -> dict:
    """Trains the dense head on the bottleneck features; saves base + head.

    The head never sees a photo, so an epoch costs milliseconds; the saved and
    registered model chains preprocessing, the frozen base and the trained
    head, so it takes raw photos like every other stage's model.
    """
    stage, settings, seed = "vgg16_features", params.vgg16_features, params.base.seed
    make_deterministic(seed)
    runtime = configure_runtime(params.base.precision, params.base.distribution)
    train_x, train_y = load_features(features_dir, "train")
    val_x, val_y = load_features(features_dir, "validation")
    with runtime.strategy.scope():
        head = networks.build_classifier_head(train_x.shape[1:])
        networks.compile_model(head, settings.optimizer, settings.learning_rate)
    train = _batches(train_x, train_y, settings.batch_size, shuffle=True, seed=seed, repeat=settings.steps_per_epoch is not None)
    validation = _batches(val_x, val_y, settings.batch_size, shuffle=False, seed=seed, repeat=False)
    base, resolved = vgg16_base(params)
    expected = tuple(base.output_shape[1:])
    if tuple(train_x.shape[1:]) != expected:
        raise TransferError(
            f"bottleneck features in {features_dir} are {train_x.shape[1:]}, but VGG16 at "
            f"base.image_size={params.base.image_size} gives {expected}: run `dvc repro vgg16_bottleneck`"
        )
    deployable = networks.build_vgg16_classifier(base, head, params.base.image_size, params.vgg16.preprocessing)
    return train_and_record(
        stage, head, train, validation, settings,
        train_images=len(train_x),
        run_params=stage_params(params, study.model(stage).sections, data_dir),
        manifest=data_dir / "manifest.csv",
        outputs=outputs,
        extra_tags=weights_tags(resolved),
        deployable=deployable,
        example=one_validation_photo(data_dir, params),
    )


def one_validation_photo(data_dir: Path, params: Params) -> np.ndarray:
    """The first validation photo, raw, as the registered model's input example."""
    one_photo = make_dataset(
        data_dir / "validation", image_size=params.base.image_size, batch_size=1, shuffle=False, seed=params.base.seed,
        cache=False,
    )
    return example_photo(one_photo)


def precomputed_validation(
    model: keras.Model, features_dir: Path, layer: str | None, batch_size: int
) -> PrecomputedValidation:
    """Validation through ``model``'s layers after ``layer`` on the outputs vgg16_bottleneck saved.

    Args:
        model: a VGG16 classifier whose layers up to ``layer`` are frozen
            ImageNet weights.
        features_dir: vgg16_bottleneck's output folder.
        layer: the last frozen layer of the base; None when the whole base is frozen.
        batch_size: photos per validation batch.
    """
    saved = load_frozen_outputs(features_dir, "validation", layer)
    return PrecomputedValidation(top_from(model, layer), saved.inputs, saved.labels, batch_size)


def _train_on_augmented_photos(
    stage: str,
    model: keras.Model,
    params: Params,
    *,
    data_dir: Path,
    outputs: StageOutputs,
    tags: dict[str, str],
    features_dir: Path | None,
    frozen_layer: str | None,
) -> dict:
    """Trains a compiled VGG16 classifier on augmented photos and records the stage.

    Validation runs only the layers after ``frozen_layer`` (None: the head)
    on what vgg16_bottleneck saved in ``features_dir``; without
    ``features_dir`` it runs the whole model on the validation photos.
    """
    settings, seed, size = getattr(params, stage), params.base.seed, params.base.image_size
    train = make_dataset(
        data_dir / "train", image_size=size, batch_size=settings.batch_size, shuffle=True, seed=seed,
        augment=make_augmentation(params.augmentation, seed), repeat=settings.steps_per_epoch is not None,
    )
    if features_dir is None:
        validation = make_dataset(data_dir / "validation", image_size=size, batch_size=settings.batch_size, shuffle=False, seed=seed)
        example = None
    else:
        with model.distribute_strategy.scope():  # the top shares the model's (maybe mirrored) layers
            validation = precomputed_validation(model, features_dir, frozen_layer, settings.batch_size)
        example = one_validation_photo(data_dir, params)
    return train_and_record(
        stage, model, train, validation, settings,
        train_images=sum(count_images(data_dir / "train").values()),
        run_params=stage_params(params, study.model(stage).sections, data_dir),
        manifest=data_dir / "manifest.csv",
        outputs=outputs,
        extra_tags=tags,
        example=example,
    )


def _base_and_head(stage: str, params: Params, models_dir: Path) -> tuple[keras.Model, ResolvedWeights, keras.Model, dict]:
    """The ImageNet VGG16 base and a dense head for ``stage``: fresh, or the
    trained head of the model its ``initial_head`` names (in ``models_dir``).

    Returns:
        ``(base, resolved weights, head, tags saying what the head started from)``.
    """
    spec = study.model(stage)
    base, resolved = vgg16_base(params)
    head = networks.build_classifier_head(base.output_shape[1:])
    source = getattr(getattr(params, stage), spec.start_param)
    started = {} if source == "none" else networks.start_from(
        head, f"{stage}.{spec.start_param}", source, models_dir / f"{source}.keras", "classifier_head"
    )
    return base, resolved, head, started


def train_vgg16_augmented(
    params: Params,
    *,
    data_dir: Path,
    outputs: StageOutputs,
    features_dir: Path | None = None,
    models_dir: Path = Path("models"),
) -> dict:
    """Trains a head on augmented photos through the frozen base.

    The head is fresh, as in the chapter, or starts from
    ``vgg16_augmented.initial_head``'s trained head (its model in
    ``models_dir``). With ``features_dir`` (vgg16_bottleneck's output) each
    epoch's validation runs the head only on the saved features of the
    validation photos.
    """
    stage, settings = "vgg16_augmented", params.vgg16_augmented
    make_deterministic(params.base.seed)
    runtime = configure_runtime(params.base.precision, params.base.distribution)
    with runtime.strategy.scope():
        base, resolved, head, started = _base_and_head(stage, params, models_dir)
        model = networks.build_vgg16_classifier(base, head, params.base.image_size, params.vgg16.preprocessing)
        networks.compile_model(model, settings.optimizer, settings.learning_rate)
    return _train_on_augmented_photos(
        stage, model, params, data_dir=data_dir, outputs=outputs, tags={**weights_tags(resolved), **started},
        features_dir=features_dir, frozen_layer=None,
    )


def fine_tune(
    params: Params, *, data_dir: Path, models_dir: Path, outputs: StageOutputs, features_dir: Path | None = None
) -> dict:
    """Fine-tunes VGG16's later blocks and the head on augmented photos.

    With ``features_dir`` each epoch's validation runs the trained blocks and
    the head only, on the outputs of the frozen blocks vgg16_bottleneck
    saved for the validation photos (when some blocks stay frozen).

    The head starts from ``fine_tune.initial_head``'s trained head so that
    the large gradients of a random head do not wreck the pretrained blocks;
    the model is compiled after the layers are unfrozen, which is what makes
    the change take effect.
    """
    stage, settings = "fine_tune", params.fine_tune
    make_deterministic(params.base.seed)
    runtime = configure_runtime(params.base.precision, params.base.distribution)
    with runtime.strategy.scope():
        base, resolved, head, started = _base_and_head(stage, params, models_dir)
        trainable = unfreeze_from(base, settings.trainable_from)
        model = networks.build_vgg16_classifier(base, head, params.base.image_size, params.vgg16.preprocessing)
        networks.compile_model(model, settings.optimizer, settings.learning_rate)
    print(f"fine_tune: training {', '.join(trainable)} and the head")
    tags = {**weights_tags(resolved), **started, "fine_tune.trainable_layers": ",".join(trainable)}
    frozen = last_frozen_layer(base, settings.trainable_from)
    return _train_on_augmented_photos(
        stage, model, params, data_dir=data_dir, outputs=outputs, tags=tags,
        features_dir=features_dir if frozen is not None else None, frozen_layer=frozen,
    )
