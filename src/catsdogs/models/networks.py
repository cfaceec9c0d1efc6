"""The chapter's networks, as Keras functional-API builders.

Every model takes raw 0..255 RGB pixels and does its own preprocessing first,
so a saved ``.keras`` file can be fed photos as they are decoded. Only
built-in Keras layers are used, so saved models load without this package.

Builders do not seed anything: call ``keras.utils.set_random_seed(seed)``
before building for reproducible initial weights.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np

from catsdogs.core.atomic import sha256_file
from catsdogs.core.config import OPTIMIZERS, VGG16_PREPROCESSING
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.study import dvc_stage

# A 3x3 "valid" convolution trims 2 pixels and a 2x2 pooling halves what is
# left (rounding down), so a block needs 2 * (what the next block needs) + 2.
_CONV_BLOCK_FILTERS = {"scratch_cnn": (16, 64, 128), "regularized_cnn": (16, 64, 128, 128)}


def _min_size_for_blocks(n_blocks: int) -> int:
    size = 1
    for _ in range(n_blocks):
        size = 2 * size + 2
    return size


# VGG16's five "same"-padded blocks each halve the image: 2**5 pixels leave a
# 1x1 feature map (keras.applications enforces the same minimum).
_MIN_IMAGE_SIZE = {
    "scratch_cnn": _min_size_for_blocks(3),
    "regularized_cnn": _min_size_for_blocks(4),
    "augmented_cnn": _min_size_for_blocks(4),  # the regularized network
    "vgg16": 32,
}


class ModelConfigError(CatsDogsError, ValueError):
    """A model cannot be built or compiled with the given settings."""


def min_image_size(model_name: str) -> int:
    """Returns the smallest ``base.image_size`` a network can take.

    Args:
        model_name: one of ``scratch_cnn``, ``regularized_cnn``,
            ``augmented_cnn``, ``vgg16``.

    Returns:
        The minimum side in pixels.
    """
    try:
        return _MIN_IMAGE_SIZE[model_name]
    except KeyError:
        raise ValueError(
            f"unknown model {model_name!r}; known: {', '.join(_MIN_IMAGE_SIZE)}"
        ) from None


def check_image_size(model_name: str, image_size: int) -> None:
    """Fails clearly if ``image_size`` is too small for a network.

    Args:
        model_name: as for :func:`min_image_size`.
        image_size: the side of the square input, in pixels.

    Raises:
        ModelConfigError: the image is smaller than the network's minimum.
    """
    minimum = min_image_size(model_name)
    if image_size < minimum:
        raise ModelConfigError(
            f"params.yaml: base.image_size: {image_size} is too small for "
            f"{model_name}, which needs at least {minimum} pixels; set "
            f"base.image_size to {minimum} or more"
        )


def _conv_stack(name: str, image_size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Input -> scaling to [0, 1] -> the chapter's conv/pool blocks -> Flatten."""
    check_image_size(name, image_size)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate(_CONV_BLOCK_FILTERS[name], start=1):
        x = keras.layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return inputs, keras.layers.Flatten(name="flatten")(x)


def build_scratch_cnn(image_size: int) -> keras.Model:
    """The chapter's basic CNN: three conv blocks and one hidden dense layer.

    Args:
        image_size: side of the square RGB input in pixels (at least 22).

    Returns:
        An uncompiled model mapping raw pixels to P(dog); 19,024,513
        parameters at 150x150.

    Raises:
        ModelConfigError: image_size is too small for three conv blocks.
    """
    inputs, x = _conv_stack("scratch_cnn", image_size)
    x = keras.layers.Dense(512, activation="relu", name="dense")(x)
    # float32 even under mixed precision: a float16 sigmoid saturates and the loss needs full precision.
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_dog", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def build_regularized_cnn(image_size: int, dropout: float = 0.3) -> keras.Model:
    """The chapter's regularized CNN: a fourth conv block and dropout.

    Also the network of the augmented-CNN experiment, whose augmentation
    lives in the input pipeline.

    Args:
        image_size: side of the square RGB input in pixels (at least 46).
        dropout: dropout rate after each hidden dense layer.

    Returns:
        An uncompiled model mapping raw pixels to P(dog); 3,706,113
        parameters at 150x150.

    Raises:
        ModelConfigError: image_size is too small for four conv blocks.
    """
    inputs, x = _conv_stack("regularized_cnn", image_size)
    outputs = _dense_head(x, dropout)
    return keras.Model(inputs, outputs, name="regularized_cnn")


def _dense_head(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Dense 512 -> Dropout -> Dense 512 -> Dropout -> Dense 1 (sigmoid)."""
    for i in (1, 2):
        x = keras.layers.Dense(512, activation="relu", name=f"dense{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="p_dog", dtype="float32")(x)


def build_classifier_head(input_shape: tuple[int, ...], dropout: float = 0.3) -> keras.Model:
    """The dense classifier the chapter put on top of VGG16's conv features.

    Args:
        input_shape: shape of one feature map, e.g. (4, 4, 512) for VGG16 at
            150x150.
        dropout: dropout rate after each hidden dense layer.

    Returns:
        An uncompiled model mapping a feature map to P(dog); 4,457,985
        parameters for (4, 4, 512).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x = keras.layers.Flatten(name="flatten")(inputs)
    return keras.Model(inputs, _dense_head(x, dropout), name="classifier_head")


# ImageNet means of the B, G and R channels (keras.applications' values).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def imagenet_preprocessing(name: str = "imagenet_preprocessing") -> keras.layers.Layer:
    """``keras.applications.vgg16.preprocess_input`` as a frozen built-in layer.

    VGG16's ImageNet weights were trained on BGR pixels (0..255) minus the
    ImageNet channel means ("caffe" mode). A 1x1 convolution whose kernel
    swaps R and B and whose bias subtracts the means does exactly that, and,
    unlike a custom layer, loads anywhere without this package (in
    ``mlflow models serve``, say).
    """
    layer = keras.layers.Conv2D(3, 1, trainable=False, name=name)
    layer.build((None, None, None, 3))
    # kernel[0, 0, i, o] = 1 where output channel o reads input channel 2 - o.
    swap = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
    layer.set_weights([swap, -np.asarray(IMAGENET_BGR_MEAN, dtype="float32")])
    return layer


def build_vgg16_classifier(
    base: keras.Model, head: keras.Model, image_size: int, preprocessing: str
) -> keras.Model:
    """Chains preprocessing, the VGG16 convolutional base and a classifier head.

    The base is called with ``training=False`` (the transfer-learning habit
    that keeps any BatchNormalization in inference mode even when unfrozen);
    whether its weights train is the caller's ``base.trainable`` choice.

    Args:
        base: ``keras.applications.VGG16(include_top=False,
            input_shape=(image_size, image_size, 3))``, weights loaded or not.
        head: e.g. :func:`build_classifier_head` of ``base.output_shape[1:]``.
        image_size: side of the square RGB input in pixels (at least 32).
        preprocessing: ``"rescale"`` divides by 255, as the chapter did;
            ``"imagenet"`` does what VGG16's ImageNet weights expect
            (:func:`imagenet_preprocessing`).

    Returns:
        An uncompiled model mapping raw pixels to P(dog).

    Raises:
        ModelConfigError: image_size is too small for VGG16, or
            preprocessing is unknown.
    """
    check_image_size("vgg16", image_size)
    expected = (image_size, image_size, 3)
    if tuple(base.input_shape[1:]) != expected:
        raise ValueError(f"base takes {base.input_shape[1:]}, not {expected}")
    inputs = keras.Input(shape=expected, name="pixels")
    x = vgg16_preprocessing(preprocessing)(inputs)
    x = base(x, training=False)
    outputs = head(x)
    return keras.Model(inputs, outputs, name="vgg16_classifier")


# One class per name params.yaml allows (config.OPTIMIZERS).
OPTIMIZER_CLASSES = {
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
}


def compile_model(model: keras.Model, optimizer: str, learning_rate: float) -> keras.Model:
    """Compiles a binary classifier with binary cross-entropy and accuracy.

    Args:
        model: a model ending in one sigmoid unit.
        optimizer: one of ``config.OPTIMIZERS`` (rmsprop, adam, sgd).
        learning_rate: the optimizer's learning rate.

    Returns:
        The same model, compiled.

    Raises:
        ModelConfigError: the optimizer is unknown.
    """
    if optimizer not in OPTIMIZER_CLASSES:
        raise ModelConfigError(
            f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}"
        )
    model.compile(
        optimizer=OPTIMIZER_CLASSES[optimizer](learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def vgg16_preprocessing(preprocessing: str) -> keras.layers.Layer:
    """The layer that turns raw 0..255 RGB pixels into VGG16's input.

    Args:
        preprocessing: ``"rescale"`` (divide by 255, as the chapter did) or
            ``"imagenet"`` (:func:`imagenet_preprocessing`).

    Raises:
        ModelConfigError: preprocessing is unknown.
    """
    if preprocessing == "rescale":
        return keras.layers.Rescaling(1.0 / 255, name="rescale")
    if preprocessing == "imagenet":
        return imagenet_preprocessing()
    raise ModelConfigError(
        f"unknown VGG16 preprocessing {preprocessing!r}; allowed: {', '.join(VGG16_PREPROCESSING)}"
    )


class DamagedModelError(CatsDogsError):
    """A ``.keras`` file is there but cannot be read."""


def load_stage_model_file(path: Path, stage: str) -> keras.Model:
    """Loads a stage's saved ``.keras`` model (uncompiled), or says how to get a good one.

    Args:
        path: the file, which must exist.
        stage: the DVC stage that writes it.

    Raises:
        DamagedModelError: the file is truncated or not a Keras model; the
            message names it and the commands that restore or rebuild it.
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        # Keras says "File not found" for a file that is there but is no .keras zip.
        raise DamagedModelError(
            f"{path} is damaged or not a Keras model ({type(err).__name__}); run `dvc checkout {path}` "
            f"to restore it from the DVC cache, or `dvc repro -f {dvc_stage(stage)}` to train it again"
        ) from err


class WarmStartError(CatsDogsError):
    """The earlier stage's model a stage starts from is missing or does not fit."""


def start_from(target: keras.Model, param: str, source: str, path: Path, part: str | None = None) -> dict[str, str]:
    """Sets ``target``'s weights to those of an earlier stage's trained model.

    Args:
        target: the model (or head) to start from those weights.
        param: the parameter that chose ``source``, for messages
            (e.g. ``augmented_cnn.initial_weights``).
        source: the earlier stage.
        path: its saved ``.keras`` model.
        part: a layer of that model whose weights to take (e.g. its
            ``classifier_head``), or None for the whole model.

    Returns:
        Run tags saying where the weights came from: ``<param>.sha256`` of
        the file (which also keys a resumed fit to that very model).

    Raises:
        WarmStartError: the file is missing, or its weights have other
            shapes (e.g. ``base.image_size`` changed since it was trained).
        DamagedModelError: the file is not a readable Keras model.
    """
    if not path.is_file():
        raise WarmStartError(f"{param}={source}: {path} not found; run `dvc repro {dvc_stage(source)}` first")
    trained = load_stage_model_file(path, source)
    origin = trained if part is None else trained.get_layer(part)
    try:
        target.set_weights(origin.get_weights())
    except ValueError as err:
        raise WarmStartError(
            f"{param}={source}: {path} does not fit this model ({err}); "
            f"rerun `dvc repro {dvc_stage(source)}` (base.image_size may have changed since it was trained)"
        ) from err
    return {f"{param}.sha256": sha256_file(path)}
