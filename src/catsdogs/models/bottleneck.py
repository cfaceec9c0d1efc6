"""VGG16 bottleneck features: every photo through the frozen ImageNet base, once.

Kept apart from the training stages so that the costly extraction depends on
nothing but the photos, the weights and the preprocessing.

Within one pipeline run a photo goes through the frozen VGG16 layers once,
here. ``<out>/<split>.npz`` holds the base's output of every photo: the
dense head of ``vgg16_features`` trains on it, and the validation and test
scoring of the two models whose base stays frozen (``vgg16_features``,
``vgg16_augmented``) runs their head only on it. ``<out>/frozen/<split>.npz``
holds, for the validation and test photos, the output of the last layer
``fine_tune`` keeps frozen (``block3_pool`` when it trains blocks 4-5), so
its validation and test scoring run the trained blocks and the head only.
"""

from __future__ import annotations

import errno
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from catsdogs.core.atomic import write_atomically
from catsdogs.core.classes import SPLITS
from catsdogs.core.config import Params
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.project import in_project
from catsdogs.core.runtime import configure_runtime
from catsdogs.data.inputs import load_split_arrays
from catsdogs.models import networks
from catsdogs.models.vgg16_weights import ResolvedWeights, build_vgg16_base, resolve_vgg16_weights


class TransferError(CatsDogsError):
    """A transfer-learning input is missing or does not fit."""


def vgg16_base(params: Params) -> tuple[keras.Model, ResolvedWeights]:
    """The frozen ImageNet VGG16 convolutional base at ``base.image_size``.

    Returns:
        The base (``trainable`` False) and where its weights came from.
    """
    size = params.base.image_size
    networks.check_image_size("vgg16", size)
    weights_file = params.vgg16.weights_file
    resolved = resolve_vgg16_weights(in_project(weights_file) if weights_file is not None else None)
    base = build_vgg16_base((size, size, 3), resolved.path)
    base.trainable = False
    return base, resolved


def feature_extractor(base: keras.Model, params: Params, frozen_layer: str | None = None) -> keras.Model:
    """Raw photos -> preprocessing -> frozen base: what the bottleneck features are.

    With ``frozen_layer``, the model has two outputs: that layer's output,
    then the base's.
    """
    size = params.base.image_size
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    x = networks.vgg16_preprocessing(params.vgg16.preprocessing)(inputs)
    if frozen_layer is None:
        return keras.Model(inputs, base(x, training=False), name="vgg16_features")
    names = [layer.name for layer in base.layers]
    cut = names.index(frozen_layer)
    for layer in base.layers[1 : cut + 1]:
        x = layer(x)
    middle = x
    for layer in base.layers[cut + 1 :]:
        x = layer(x)
    return keras.Model(inputs, [middle, x], name="vgg16_features_and_frozen")


def last_frozen_layer(base: keras.Model, first_trainable: str) -> str | None:
    """The layer of ``base`` just before ``first_trainable``: the last one fine-tuning leaves alone.

    None when ``first_trainable`` is the first layer (nothing stays frozen).
    """
    names = [layer.name for layer in base.layers]
    if first_trainable not in names:
        raise TransferError(f"fine_tune.trainable_from: VGG16 has no layer {first_trainable!r}")
    index = names.index(first_trainable)
    return names[index - 1] if index > 1 else None


def _base_of(model: keras.Model) -> keras.Model:
    return next(l for l in model.layers if isinstance(l, keras.Model) and l.name != "classifier_head")


def frozen_part(model: keras.Model, layer: str | None) -> keras.Model:
    """Raw photos through a saved VGG16 classifier's preprocessing and base up to ``layer`` (None: the whole base).

    The counterpart of :func:`top_from`: ``top_from(model, layer)`` of this
    model's output is the model's P(dog).
    """
    base = _base_of(model)
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    x = inputs
    for l in model.layers[1:]:
        if l is base:
            break
        x = l(x)
    names = [l.name for l in base.layers]
    cut = len(names) - 1 if layer is None else names.index(layer)
    for l in base.layers[1 : cut + 1]:
        x = l(x)
    return keras.Model(inputs, x, name=f"until_{layer or 'base_output'}")


def top_from(model: keras.Model, layer: str | None, *, head: bool = True) -> keras.Model:
    """The part of a saved VGG16 classifier after ``layer`` of its base, sharing its weights.

    Args:
        model: from :func:`catsdogs.models.networks.build_vgg16_classifier`, taking raw photos.
        layer: a layer of its base; None for the head alone (the input is
            the base's output, the bottleneck features).
        head: False leaves the head out: the rest of the base only.

    Returns:
        A model from that layer's output to P(dog); it gives the same
        probabilities as ``model`` does on the photos whose outputs it is fed.
    """
    classifier = model.get_layer("classifier_head")
    if layer is None and head:
        return classifier
    base = _base_of(model)
    names = [l.name for l in base.layers]
    if layer is not None and layer not in names:
        raise TransferError(f"the model's VGG16 base has no layer {layer!r}")
    cut = len(names) - 1 if layer is None else names.index(layer)
    inputs = keras.Input(shape=base.layers[cut].output.shape[1:], name=f"{layer or 'base'}_output")
    x = inputs
    for l in base.layers[cut + 1 :]:
        x = l(x)
    return keras.Model(inputs, classifier(x) if head else x, name=f"top_after_{layer or 'base'}")


# Splits whose photos are only ever scored, never trained on: their frozen
# outputs are kept for fine_tune (training photos are augmented afresh each step).
SCORED_SPLITS = ("validation", "test")
# Photos each shortcut-scored model also predicts end to end: its timing and its check.
TIMED_PHOTOS = 64


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Writes arrays as one .npz, whole or not at all, after checking the disk has room."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path, sum(a.nbytes for a in arrays.values()))
    try:
        write_atomically(path, lambda tmp: np.savez(tmp, **arrays))
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise TransferError(
            f"{path}: the disk filled up while writing it ({err}); free space, then `dvc repro vgg16_bottleneck`"
        ) from err


def extract_bottleneck_features(params: Params, *, data_dir: Path, out_dir: Path) -> dict[str, tuple[int, ...]]:
    """Runs every photo of the three splits through the frozen base once.

    Writes ``<out_dir>/<split>.npz`` with ``features`` (n, h, w, 512) float32,
    ``labels`` (n,) and ``files`` (names relative to ``data_dir``); and for
    the validation and test splits ``<out_dir>/frozen/<split>.npz`` with
    ``outputs`` of the last layer ``fine_tune.trainable_from`` leaves frozen,
    its name as ``layer``, ``labels`` and ``files`` (none when nothing stays
    frozen).

    Returns:
        The features' shape per split.
    """
    configure_runtime(params.base.precision)
    base, resolved = vgg16_base(params)
    frozen = last_frozen_layer(base, params.fine_tune.trainable_from)
    extractors = {False: feature_extractor(base, params), True: feature_extractor(base, params, frozen) if frozen else None}
    print(f"VGG16 ImageNet weights: {resolved.source} ({resolved.path})")
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / "frozen"
    if stale.exists():
        for old in stale.glob("*.npz"):
            old.unlink()
    shapes = {}
    for split in SPLITS:
        images, labels, paths = load_split_arrays(data_dir / split, image_size=params.base.image_size)
        print(f"{split}: {len(images)} photos through VGG16")
        files = np.array([str(p.relative_to(data_dir)) for p in paths])
        keep_frozen = frozen is not None and split in SCORED_SPLITS
        outputs = extractors[keep_frozen].predict(images, batch_size=params.vgg16.feature_batch_size, verbose=1)
        if keep_frozen:
            middle, features = outputs
            _save_npz(out_dir / "frozen" / f"{split}.npz", outputs=middle.astype(np.float32), layer=np.array(frozen),
                      labels=labels, files=files)
        else:
            features = outputs
        _save_npz(out_dir / f"{split}.npz", features=features.astype(np.float32), labels=labels, files=files)
        shapes[split] = features.shape
    return shapes


# Room left beyond the file itself: npz headers, and the rest of the disk's users.
SPACE_MARGIN_BYTES = 16 * 1024 * 1024


def check_free_space(path: Path, nbytes: int) -> None:
    """Refuses to start writing ``nbytes`` to ``path`` when its disk has not room for them.

    Raises:
        TransferError: naming the folder, what is needed and what is free.
    """
    free = shutil.disk_usage(path.parent).free
    if free < nbytes + SPACE_MARGIN_BYTES:
        raise TransferError(
            f"{path}: needs {(nbytes + SPACE_MARGIN_BYTES) / 2**20:.0f} MiB but {path.parent} has "
            f"{free / 2**20:.0f} MiB free; free some space (e.g. `dvc gc`), then `dvc repro vgg16_bottleneck`"
        )


def _read(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz written by vgg16_bottleneck; ``keys`` must all be there."""
    if not path.is_file():
        raise TransferError(f"{path} not found: run `dvc repro vgg16_bottleneck` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in (keys or data.files)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise TransferError(
            f"{path} is damaged ({type(err).__name__}: {err}); "
            "run `dvc checkout data/features` to restore it, or `dvc repro -f vgg16_bottleneck` to recompute it"
        ) from err


def load_features(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's bottleneck features and labels."""
    data = _read(Path(features_dir) / f"{split}.npz", "features", "labels")
    return data["features"], data["labels"]


@dataclass(frozen=True)
class FrozenOutputs:
    """What the frozen VGG16 layers made of one split's photos, for a model's top to score."""

    inputs: np.ndarray
    labels: np.ndarray
    files: np.ndarray  # relative to the small dataset, in its sorted order
    layer: str | None  # None: the base's output (bottleneck features)


def saved_frozen_layer(features_dir: Path) -> str | None:
    """The layer whose outputs vgg16_bottleneck kept for fine_tune, or None if it kept none."""
    path = Path(features_dir) / "frozen" / "test.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return str(data["layer"])


def load_frozen_outputs(features_dir: Path, split: str, layer: str | None) -> FrozenOutputs:
    """One split's saved outputs of ``layer`` (None: the bottleneck features).

    Raises:
        TransferError: the file is missing, or holds another layer's outputs
            (vgg16_bottleneck ran with another ``fine_tune.trainable_from``).
    """
    if layer is None:
        data = _read(Path(features_dir) / f"{split}.npz", "features", "labels", "files")
        return FrozenOutputs(data["features"], data["labels"], data["files"], None)
    path = Path(features_dir) / "frozen" / f"{split}.npz"
    data = _read(path, "outputs", "labels", "files", "layer")
    if str(data["layer"]) != layer:
        raise TransferError(
            f"{path} holds the outputs of {data['layer']}, not of {layer}: fine_tune.trainable_from changed "
            "since vgg16_bottleneck ran; run `dvc repro vgg16_bottleneck`"
        )
    return FrozenOutputs(data["outputs"], data["labels"], data["files"], layer)


def unfreeze_from(base: keras.Model, first_trainable: str) -> list[str]:
    """Makes ``first_trainable`` and every later layer of ``base`` trainable.

    Returns:
        The names of the layers that train.
    """
    names = [layer.name for layer in base.layers]
    if first_trainable not in names:
        raise TransferError(f"fine_tune.trainable_from: VGG16 has no layer {first_trainable!r}")
    base.trainable = True
    start = names.index(first_trainable)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start
    return [layer.name for layer in base.layers if layer.trainable and layer.weights]
