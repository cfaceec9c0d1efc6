"""Typed view of ``params.yaml``: one dataclass per section.

Every stage reads its parameters through :func:`load_params`, so a typo in a
key or an impossible value stops the stage before any work starts, with a
message naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from catsdogs.core import study
from catsdogs.core.errors import CatsDogsError

OPTIMIZERS = ("rmsprop", "adam", "sgd")
KEEP = ("last", "best_val_loss", "best_val_accuracy")
FILL_MODES = ("nearest", "reflect", "wrap", "constant")
VGG16_PREPROCESSING = ("rescale", "imagenet")
# Keras dtype policies; auto is mixed_float16 on a GPU, float32 on the CPU.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# none: the one device TensorFlow picks; mirrored: tf.distribute.MirroredStrategy
# over every visible GPU (see runtime.make_strategy).
DISTRIBUTIONS = ("none", "mirrored")


class ParamsError(CatsDogsError, ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


@dataclass(frozen=True)
class Source:
    """Where the raw photos can come from: a path or an http(s) URL."""

    location: str
    sha256: str | None = None

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


@dataclass(frozen=True)
class BaseParams:
    seed: int = 42
    image_size: int = 150
    precision: str = "auto"
    distribution: str = "none"


@dataclass(frozen=True)
class DownloadParams:
    sources: tuple[Source, ...] = ()
    max_entry_mb: int = 64


@dataclass(frozen=True)
class DatasetParams:
    train_per_class: int = 1500
    validation_per_class: int = 500
    test_per_class: int = 500
    min_side: int = 32


@dataclass(frozen=True)
class AugmentationParams:
    zoom: float = 0.3
    rotation_degrees: float = 50.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear: float = 0.2
    horizontal_flip: bool = True
    fill_mode: str = "nearest"


@dataclass(frozen=True)
class TrainParams:
    """One model stage's training settings."""

    epochs: int = 30
    batch_size: int = 30
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    steps_per_epoch: int | None = None
    keep: str = "last"  # which epoch's weights are saved: last, best_val_loss or best_val_accuracy


VGG16_LAYERS = (
    "block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)


@dataclass(frozen=True)
class AugmentedCNNParams(TrainParams):
    initial_weights: str = "none"  # the chapter starts from fresh weights


@dataclass(frozen=True)
class VGG16AugmentedParams(TrainParams):
    initial_head: str = "none"  # the chapter trains a fresh head


@dataclass(frozen=True)
class VGG16Params:
    """Shared by every VGG16 stage."""

    weights_file: str | None = None
    preprocessing: str = "imagenet"
    feature_batch_size: int = 32


@dataclass(frozen=True)
class FineTuneParams(TrainParams):
    trainable_from: str = "block4_conv1"
    initial_head: str = "vgg16_augmented"


@dataclass(frozen=True)
class EvaluateParams:
    """The evaluate stage's statistics and extra test photos."""

    bootstrap_resamples: int = 1000
    temperature_scaling: bool = False
    extra_test_photos: int = 0


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    build_small_dataset: DatasetParams = field(default_factory=DatasetParams)
    augmentation: AugmentationParams = field(default_factory=AugmentationParams)
    scratch_cnn: TrainParams = field(default_factory=TrainParams)
    regularized_cnn: TrainParams = field(default_factory=TrainParams)
    augmented_cnn: AugmentedCNNParams = field(default_factory=AugmentedCNNParams)
    vgg16: VGG16Params = field(default_factory=VGG16Params)
    vgg16_features: TrainParams = field(default_factory=TrainParams)
    vgg16_augmented: VGG16AugmentedParams = field(default_factory=VGG16AugmentedParams)
    fine_tune: FineTuneParams = field(default_factory=FineTuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


TRAINING_STAGES = study.NAMES


def _fail(key: str, message: str) -> ParamsError:
    return ParamsError(f"params.yaml: {key}: {message}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks one scalar against the type annotation of its field."""
    optional = isinstance(kind, str) and kind.endswith("| None")
    kind = kind.replace("| None", "").strip() if isinstance(kind, str) else kind
    if value is None:
        if optional:
            return None
        raise _fail(key, "must be set (got null)")
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, f"must be true or false (got {value!r})")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, f"must be a whole number (got {value!r})")
        return value
    if kind == "float":
        if isinstance(value, str):
            # `dvc exp run -S lr=1e-5` writes 1e-05, a number in YAML 1.2 but a
            # string to PyYAML's YAML 1.1, which wants a dot in the mantissa.
            try:
                value = float(value)
            except ValueError:
                raise _fail(key, f"must be a number (got {value!r})") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, f"must be a number (got {value!r})")
        if not math.isfinite(value):
            raise _fail(key, f"must be finite (got {value!r})")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(key, f"must be text (got {value!r})")
        return value
    raise TypeError(f"no coercion for {kind!r}")  # a bug in this module


def _section(cls: type, name: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail(name, f"must be a mapping of keys to values (got {raw!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise _fail(
            f"{name}.{unknown[0]}",
            f"unknown key; allowed keys are {', '.join(sorted(fields))}",
        )
    values = {}
    for key, value in raw.items():
        if key == "sources":
            values[key] = _sources(f"{name}.sources", value)
        else:
            values[key] = _coerce(f"{name}.{key}", value, fields[key].type)
    return cls(**values)


def _sources(key: str, raw: Any) -> tuple[Source, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(key, "must be a non-empty list of sources")
    sources = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"location": item}
        if not isinstance(item, Mapping) or "location" not in item:
            raise _fail(where, "must be a path or URL, or a mapping with 'location' and optional 'sha256'")
        extra = sorted(set(item) - {"location", "sha256"})
        if extra:
            raise _fail(f"{where}.{extra[0]}", "unknown key; allowed keys are location, sha256")
        location = _coerce(f"{where}.location", item["location"], "str")
        digest = _coerce(f"{where}.sha256", item.get("sha256"), "str | None")
        if digest is not None:
            digest = digest.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise _fail(f"{where}.sha256", f"must be 64 hexadecimal digits (got {digest!r})")
        sources.append(Source(location=location, sha256=digest))
    return tuple(sources)


def _positive(key: str, value: int | float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise _fail(key, f"must be greater than 0 (got {value!r})")


def _validate(params: Params) -> None:
    _positive("base.image_size", params.base.image_size)
    if params.base.precision not in PRECISIONS:
        raise _fail("base.precision", f"unknown value {params.base.precision!r}; allowed: {', '.join(PRECISIONS)}")
    if params.base.distribution not in DISTRIBUTIONS:
        raise _fail(
            "base.distribution",
            f"unknown value {params.base.distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}",
        )
    _positive("download.max_entry_mb", params.download.max_entry_mb)
    ds = params.build_small_dataset
    for name in ("train_per_class", "validation_per_class", "test_per_class", "min_side"):
        _positive(f"build_small_dataset.{name}", getattr(ds, name))
    aug = params.augmentation
    if aug.fill_mode not in FILL_MODES:
        raise _fail("augmentation.fill_mode", f"unknown value {aug.fill_mode!r}; allowed: {', '.join(FILL_MODES)}")
    for name in ("zoom", "width_shift", "height_shift", "shear"):
        value = getattr(aug, name)
        if not 0 <= value < 1:
            raise _fail(f"augmentation.{name}", f"must be in [0, 1) (got {value!r})")
    if not 0 <= aug.rotation_degrees <= 180:
        raise _fail("augmentation.rotation_degrees", f"must be in [0, 180] (got {aug.rotation_degrees!r})")
    vgg = params.vgg16
    if vgg.preprocessing not in VGG16_PREPROCESSING:
        raise _fail("vgg16.preprocessing", f"unknown value {vgg.preprocessing!r}; allowed: {', '.join(VGG16_PREPROCESSING)}")
    _positive("vgg16.feature_batch_size", vgg.feature_batch_size)
    tune = params.fine_tune
    if tune.trainable_from not in VGG16_LAYERS:
        raise _fail("fine_tune.trainable_from", f"unknown layer {tune.trainable_from!r}; allowed: {', '.join(VGG16_LAYERS)}")
    # What a stage may start from instead of fresh weights: "none", or an
    # earlier model whose trained model (or head) has the same shape.
    for spec in study.MODELS:
        if spec.start_param is not None:
            value = getattr(getattr(params, spec.name), spec.start_param)
            if value not in spec.starts:
                raise _fail(f"{spec.name}.{spec.start_param}", f"unknown value {value!r}; allowed: {', '.join(spec.starts)}")
    _positive("evaluate.bootstrap_resamples", params.evaluate.bootstrap_resamples)
    if params.evaluate.extra_test_photos < 0 or params.evaluate.extra_test_photos == 1:
        raise _fail("evaluate.extra_test_photos", f"must be 0 (off) or at least 2, one per class (got {params.evaluate.extra_test_photos!r})")
    for stage in TRAINING_STAGES:
        train = getattr(params, stage)
        _positive(f"{stage}.epochs", train.epochs)
        _positive(f"{stage}.batch_size", train.batch_size)
        _positive(f"{stage}.learning_rate", train.learning_rate)
        _positive(f"{stage}.steps_per_epoch", train.steps_per_epoch, allow_none=True)
        if train.keep not in KEEP:
            raise _fail(f"{stage}.keep", f"unknown value {train.keep!r}; allowed: {', '.join(KEEP)}")
        if train.optimizer not in OPTIMIZERS:
            raise _fail(
                f"{stage}.optimizer",
                f"unknown optimizer {train.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}",
            )


def parse_params(raw: Mapping[str, Any] | None) -> Params:
    """Builds and validates :class:`Params` from the parsed YAML mapping."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ParamsError("params.yaml: the top level must be a mapping of sections")
    fields = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise _fail(unknown[0], f"unknown section; allowed sections are {', '.join(sorted(fields))}")
    sections = {}
    for name, f in fields.items():
        cls = f.default_factory().__class__  # type: ignore[misc]
        sections[name] = _section(cls, name, raw.get(name))
    params = Params(**sections)
    _validate(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Reads ``params.yaml`` and returns its validated, typed form.

    Args:
        path: the YAML file.

    Returns:
        The parameters, every section filled (defaults for missing keys).

    Raises:
        ParamsError: the file is missing, is not YAML, or holds a bad value.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    return parse_params(raw)


def flatten(section: Any, prefix: str) -> dict[str, Any]:
    """Flattens a params dataclass into ``{"prefix.key": value}`` for logging."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}.{f.name}"))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    flat.update(flatten(item, f"{prefix}.{f.name}.{i}"))
                else:
                    flat[f"{prefix}.{f.name}.{i}"] = item
        else:
            flat[f"{prefix}.{f.name}"] = value
    return flat
