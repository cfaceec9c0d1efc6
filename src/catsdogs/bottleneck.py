"""VGG16 bottleneck features: every photo through the frozen ImageNet base, once.

Kept apart from the training stages so that the costly extraction depends on
nothing but the photos, the weights and the preprocessing.
"""

from __future__ import annotations

import errno
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np

from catsdogs import models
from catsdogs.atomic import write_atomically
from catsdogs.classes import SPLITS
from catsdogs.config import Params
from catsdogs.errors import CatsDogsError
from catsdogs.inputs import load_split_arrays
from catsdogs.project import in_project
from catsdogs.runtime import configure_runtime
from catsdogs.vgg16_weights import ResolvedWeights, build_vgg16_base, resolve_vgg16_weights

class TransferError(CatsDogsError):
    """A transfer-learning input is missing or does not fit."""


def vgg16_base(params: Params) -> tuple[keras.Model, ResolvedWeights]:
    """The frozen ImageNet VGG16 convolutional base at ``base.image_size``.

    Returns:
        The base (``trainable`` False) and where its weights came from.
    """
    size = params.base.image_size
    models.check_image_size("vgg16", size)
    weights_file = params.vgg16.weights_file
    resolved = resolve_vgg16_weights(in_project(weights_file) if weights_file is not None else None)
    base = build_vgg16_base((size, size, 3), resolved.path)
    base.trainable = False
    return base, resolved


def feature_extractor(base: keras.Model, params: Params) -> keras.Model:
    """Raw photos -> preprocessing -> frozen base: what the bottleneck features are."""
    size = params.base.image_size
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    x = models.vgg16_preprocessing(params.vgg16.preprocessing)(inputs)
    return keras.Model(inputs, base(x, training=False), name="vgg16_features")


def extract_bottleneck_features(params: Params, *, data_dir: Path, out_dir: Path) -> dict[str, tuple[int, ...]]:
    """Runs every photo of the three splits through the frozen base once.

    Writes ``<out_dir>/<split>.npz`` with ``features`` (n, h, w, 512) float32,
    ``labels`` (n,) and ``files`` (names relative to ``data_dir``).

    Returns:
        The features' shape per split.
    """
    configure_runtime(params.base.precision)
    base, resolved = vgg16_base(params)
    extractor = feature_extractor(base, params)
    print(f"VGG16 ImageNet weights: {resolved.source} ({resolved.path})")
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = {}
    for split in SPLITS:
        images, labels, paths = load_split_arrays(data_dir / split, image_size=params.base.image_size)
        print(f"{split}: {len(images)} photos through VGG16")
        features = extractor.predict(images, batch_size=params.vgg16.feature_batch_size, verbose=1)
        files = np.array([str(p.relative_to(data_dir)) for p in paths])
        features = features.astype(np.float32)
        path = out_dir / f"{split}.npz"
        check_free_space(path, features.nbytes + labels.nbytes + files.nbytes)
        try:
            write_atomically(path, lambda tmp: np.savez(tmp, features=features, labels=labels, files=files))
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise TransferError(
                f"{path}: the disk filled up while writing it ({err}); free space, then `dvc repro vgg16_bottleneck`"
            ) from err
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


def load_features(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's bottleneck features and labels."""
    path = features_dir / f"{split}.npz"
    if not path.is_file():
        raise TransferError(f"{path} not found: run `dvc repro vgg16_bottleneck` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["features"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise TransferError(
            f"{path} is damaged ({type(err).__name__}: {err}); "
            "run `dvc checkout data/features` to restore it, or `dvc repro -f vgg16_bottleneck` to recompute it"
        ) from err
