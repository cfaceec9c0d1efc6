"""Classifies photos with a trained model: a registered alias or a ``.keras`` file.

:func:`load_model` finds the model: ``champion`` or a stage name is an alias
of the registered model ``cats-vs-dogs`` in the project's MLflow store, a
path is a ``.keras`` file such as ``models/fine_tune.keras``.
:func:`predict_files` decodes photos the way the training pipeline does
(:func:`load_image`) and predicts them in batches; a photo that cannot be
read gets an error in its row instead of stopping the others.
:func:`request_body` turns photos into the JSON body ``mlflow models serve``
answers.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import mlflow.artifacts
import mlflow.keras
import numpy as np
import tensorflow as tf

from catsdogs.core.errors import CatsDogsError
from catsdogs.core.study import dvc_stage
from catsdogs.data.inputs import IMAGE_SUFFIXES, LABELS, decode_photo, photos_under
from catsdogs.tracking import mlflow_runs

DEFAULT_MODEL = "champion"
BATCH_SIZE = 32
# Keras' binary accuracy counts a photo as a dog when P(dog) > 0.5: the
# labels printed here agree with the accuracy the stages report.
THRESHOLD = 0.5
# MLflow alias names: letters, digits, "_" and "-". Anything else (a dot, a
# slash) names a file.
_ALIAS = re.compile(r"[\w-]+")
# TensorFlow prefixes its messages with the op's device and suffixes the op name.
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$")


class PredictError(CatsDogsError):
    """The model or the photos to predict cannot be used as asked."""


class UnreadablePhotoError(CatsDogsError):
    """A photo that must be read cannot be (for :func:`request_body`, which needs all)."""


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready to predict, and where it came from.

    Attributes:
        model: takes raw 0..255 RGB pixels (batch, height, width, 3),
            returns P(dog) (batch, 1).
        source: what was loaded, for people: the alias and version, or the file.
        image_size: the (height, width) photos are resized to.
    """

    model: keras.Model
    source: str
    image_size: tuple[int, int]


@dataclass(frozen=True)
class Prediction:
    """The answer for one photo: a probability, or why there is none.

    Attributes:
        file: the photo.
        p_dog: the model's probability that the photo shows a dog; None on error.
        error: why the photo could not be predicted; None when it was.
    """

    file: Path
    p_dog: float | None
    error: str | None = None

    @property
    def label(self) -> str:
        """``"dog"`` when P(dog) > 0.5, ``"cat"`` otherwise, ``"error"`` without a prediction."""
        if self.p_dog is None:
            return "error"
        return LABELS[int(self.p_dog > THRESHOLD)]


def is_alias(spec: str) -> bool:
    """Tells an alias (``champion``, ``fine_tune``) from a path (``models/x.keras``)."""
    return _ALIAS.fullmatch(spec) is not None


def load_model(spec: str = DEFAULT_MODEL, root: Path | None = None) -> LoadedModel:
    """Loads a classifier by alias of ``cats-vs-dogs`` or from a ``.keras`` file.

    Args:
        spec: an alias of the registered model (``champion``, a stage name
            such as ``fine_tune``) or the path of a ``.keras`` file.
        root: the project whose MLflow store holds the aliases; found from the
            current directory by default. ``MLFLOW_TRACKING_URI`` overrides its store.

    Returns:
        The model, a description of it and its input size.

    Raises:
        PredictError: the file is missing or not a Keras model, or the alias
            does not exist (the message lists the aliases that do).
        mlflow_runs.TrackingError: the MLflow store does not exist or cannot be reached.
    """
    if is_alias(spec):
        model, source = _load_registered(spec, mlflow_runs.project_root(root))
    else:
        model, source = _load_file(Path(spec)), spec
    return LoadedModel(model=model, source=source, image_size=input_size(model))


def _load_file(path: Path) -> keras.Model:
    if path.suffix != ".keras":
        raise PredictError(
            f"model {path}: expected a registered-model alias (letters, digits, _ and -, "
            f"e.g. {DEFAULT_MODEL} or fine_tune) or a .keras file such as models/fine_tune.keras"
        )
    if not path.is_file():
        raise PredictError(f"model file {path} not found; `make run` writes models/<stage>.keras")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, zipfile.BadZipFile) as err:
        # Keras says "File not found" for a file that is there but is no .keras zip.
        raise PredictError(
            f"model file {path} is not a Keras model ({err}); rebuild it with `make run`"
        ) from err


def _load_registered(alias: str, root: Path) -> tuple[keras.Model, str]:
    uri = store_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = mlflow_runs.registered_aliases(client)
    if alias not in aliases:
        known = ", ".join(sorted(aliases)) or "none yet"
        raise PredictError(
            f"model alias {alias!r} not found in {mlflow_runs.REGISTERED_MODEL_NAME} at {uri}; "
            f"aliases: {known}. Pass one of them, or a .keras file"
        )
    version = aliases[alias]
    if alias == "champion":
        remedy = "pick a version with `python -m catsdogs.evaluation.champion show` and `... promote --version N`, or run `dvc repro -f evaluate`"
    else:
        remedy = f"run `dvc repro -f {dvc_stage(alias)}` to train and register it again"
    try:
        stage = client.get_model_version(mlflow_runs.REGISTERED_MODEL_NAME, version).tags.get("dvc.stage")
        # Where the version's files are, asked of this client: download_artifacts
        # resolves a models:/ URI with the default registry, not the one passed.
        location = client.get_model_version_download_uri(mlflow_runs.REGISTERED_MODEL_NAME, version)
    except mlflow.exceptions.MlflowException as err:
        raise PredictError(
            f"model alias {alias!r} points at version {version} of {mlflow_runs.REGISTERED_MODEL_NAME}, "
            f"which no longer exists in {uri}; {remedy}"
        ) from err
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri)
        model = mlflow.keras.load_model(local, load_model_kwargs={"compile": False})
    except (mlflow.exceptions.MlflowException, OSError, ValueError) as err:
        raise PredictError(
            f"model alias {alias!r} (version {version}): its files at {location} are missing or damaged "
            f"({type(err).__name__}); {remedy}"
        ) from err
    described = f"models:/{mlflow_runs.REGISTERED_MODEL_NAME}@{alias} (version {version}"
    return model, described + (f", trained by {stage})" if stage and stage != alias else ")")


def store_uri(root: Path) -> str:
    """Returns the project's MLflow store URI after checking that it exists.

    Unlike MLflow, which would create an empty database, this refuses a
    missing store: there is nothing in it to look at yet.

    Args:
        root: the project root.

    Returns:
        The tracking URI (see :func:`catsdogs.tracking.mlflow_runs.tracking_uri`).

    Raises:
        mlflow_runs.TrackingError: the SQLite database does not exist, or the
            tracking server does not answer.
    """
    uri = mlflow_runs.tracking_uri(root)
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise mlflow_runs.TrackingError(
                f"no MLflow store at {database}: no model has been trained yet; "
                "run `make run` to train and register the models"
            )
    else:
        mlflow_runs.check_tracking_server(uri)
    return uri


def input_size(model: keras.Model) -> tuple[int, int]:
    """Returns the (height, width) of the photos a model takes.

    Raises:
        PredictError: the model does not take fixed-size RGB photos.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise PredictError(
            f"model {model.name} takes inputs of shape {shape}, not fixed-size RGB photos "
            "(batch, height, width, 3); pass a model trained by this project"
        )
    return int(shape[1]), int(shape[2])


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Lists the photos to predict.

    Args:
        paths: files, taken as they are (a non-image gets an error later),
            and folders, searched recursively for the photo types training
            reads (``inputs.IMAGE_SUFFIXES``).

    Returns:
        The files in the order given, each folder's photos sorted.

    Raises:
        PredictError: nothing to predict: no paths, or folders without photos.
    """
    paths = [Path(p) for p in paths]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(photos_under(path))
        else:
            found.append(path)
    if not found:
        where = ", ".join(map(str, paths)) or "(no paths given)"
        raise PredictError(f"no photos found in {where}: expected {', '.join(IMAGE_SUFFIXES)} files")
    return found


def load_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """Reads a photo as the training pipeline does.

    Decoded by :func:`catsdogs.data.inputs.decode_photo`, as the training and
    evaluation photos are: 3 channels (the first frame of an animation),
    resized bilinearly, rounded to whole 0..255 values.

    Args:
        path: a JPEG, PNG, GIF, BMP or WebP file.
        image_size: (height, width) to resize to.

    Returns:
        float32 pixels of shape (height, width, 3), values 0..255.

    Raises:
        OSError: the file cannot be read.
        tf.errors.InvalidArgumentError: the bytes are not an image TensorFlow decodes.
    """
    image = decode_photo(tf.constant(Path(path).read_bytes()), tuple(image_size))
    return tf.cast(image, tf.float32).numpy()


def _read_or_error(path: Path, image_size: tuple[int, int]) -> np.ndarray | str:
    """The photo's pixels, or a one-line reason why there are none."""
    try:
        return load_image(path, image_size)
    except OSError as err:
        return f"cannot read the file: {err.strerror or err}"
    except tf.errors.InvalidArgumentError as err:
        return f"not a readable image: {_TF_NOISE.sub('', err.message).strip()}"


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    loaded: LoadedModel, files: Sequence[Path], batch_size: int = BATCH_SIZE
) -> list[Prediction]:
    """Predicts P(dog) for each photo, in batches.

    Args:
        loaded: from :func:`load_model`.
        files: photos, e.g. from :func:`find_images`.
        batch_size: photos decoded and predicted at a time (bounds memory).

    Returns:
        One :class:`Prediction` per file, in the same order; unreadable files
        have ``error`` set and the others are still predicted.
    """
    results: list[Prediction] = []
    for chunk in _chunks(list(files), batch_size):
        decoded = {path: _read_or_error(path, loaded.image_size) for path in chunk}
        good = [path for path, pixels in decoded.items() if isinstance(pixels, np.ndarray)]
        p_dog: dict[Path, float] = {}
        if good:
            batch = np.stack([decoded[path] for path in good])
            p_dog = dict(zip(good, np.asarray(loaded.model.predict_on_batch(batch)).reshape(-1).tolist()))
        for path in chunk:
            pixels = decoded[path]
            if isinstance(pixels, str):
                results.append(Prediction(file=path, p_dog=None, error=pixels))
            else:
                results.append(Prediction(file=path, p_dog=float(p_dog[path])))
    return results


def request_body(files: Sequence[Path], image_size: tuple[int, int]) -> dict[str, list]:
    """Builds the JSON body ``mlflow models serve`` answers for these photos.

    Args:
        files: photos, decoded as by :func:`load_image`.
        image_size: the served model's (height, width).

    Returns:
        ``{"inputs": [...]}``: one (height, width, 3) array of whole 0..255
        pixel values per photo, written as integers (the server casts them to
        the signature's float32), which keeps the body small.

    Raises:
        UnreadablePhotoError: a photo cannot be read or decoded.
    """
    pixels = []
    for path in files:
        image = _read_or_error(path, image_size)
        if isinstance(image, str):
            raise UnreadablePhotoError(f"{path}: {image}")
        pixels.append(image.astype(np.uint8).tolist())
    return {"inputs": pixels}
