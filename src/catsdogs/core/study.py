"""The study's six models, in the chapter's order: the one list the rest reads.

Config validation, the training entry point, ``evaluate``, the reports, the
statistics, the estimates and the tests all take the models from
:data:`MODELS`. Adding a seventh model means: its builder, its entry here,
its section in ``params.yaml`` (and :class:`~catsdogs.core.config.Params`),
and its stage in ``dvc.yaml``; ``tests/test_pipeline_definition.py`` checks that the four
agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from catsdogs.core.errors import CatsDogsError

CNN, VGG16 = "cnn", "vgg16"
# dvc.yaml trains the from-scratch CNNs with one `foreach` template named
# this, so DVC calls their stages "cnn@<model>".
CNN_TEMPLATE = "cnn"


class StudyError(CatsDogsError):
    """A stage was asked for a model the study does not have, or without what it reads."""


@dataclass(frozen=True)
class Model:
    """One model of the study and what its training stage reads.

    Attributes:
        name: the model, its params.yaml section, its files
            (``models/<name>.keras``, ``metrics/<name>.json``) and its MLflow
            alias.
        family: ``cnn`` (trained from scratch on photos) or ``vgg16``
            (ImageNet VGG16 inside).
        sections: the params.yaml sections its stage reads, which dvc.yaml
            lists as the stage's params.
        start_param: the key of its section that names what it starts from
            instead of fresh weights (``initial_weights`` for a whole model,
            ``initial_head`` for a VGG16 head), or None.
        starts: the values ``start_param`` allows: ``none`` and earlier models.
        chapter_val_accuracy: the validation accuracy the chapter reports,
            the reference shown beside ours (never used to choose anything).
        description: a few words for the reports.
        builder: for a CNN, the builder's name in
            :mod:`catsdogs.models.networks`.
    """

    name: str
    family: str
    sections: tuple[str, ...]
    chapter_val_accuracy: float
    description: str
    start_param: str | None = None
    starts: tuple[str, ...] = ()
    builder: str | None = None

    @property
    def augmented(self) -> bool:
        """Whether it trains on augmented photos."""
        return "augmentation" in self.sections

    @property
    def dvc_stage(self) -> str:
        """The DVC stage that trains it (what ``dvc repro`` takes)."""
        return f"{CNN_TEMPLATE}@{self.name}" if self.family == CNN else self.name


MODELS: tuple[Model, ...] = (
    Model("scratch_cnn", CNN, ("base", "scratch_cnn"), 0.72, "small CNN trained from scratch",
          builder="build_scratch_cnn"),
    Model("regularized_cnn", CNN, ("base", "regularized_cnn"), 0.78, "fourth conv block and dropout",
          builder="build_regularized_cnn"),
    # The regularized architecture fed augmented batches.
    Model("augmented_cnn", CNN, ("base", "augmentation", "augmented_cnn"), 0.82, "the same, on augmented photos",
          start_param="initial_weights", starts=("none", "regularized_cnn"), builder="build_regularized_cnn"),
    # The chapter reports 0.87-0.90 for the dense head on VGG16 features: 0.88 stands for that range.
    Model("vgg16_features", VGG16, ("base", "vgg16", "vgg16_features"), 0.88, "dense head on VGG16 features"),
    Model("vgg16_augmented", VGG16, ("base", "vgg16", "augmentation", "vgg16_augmented"), 0.90,
          "frozen VGG16 and a head, augmented photos", start_param="initial_head", starts=("none", "vgg16_features")),
    Model("fine_tune", VGG16, ("base", "vgg16", "augmentation", "fine_tune"), 0.96, "top VGG16 blocks fine-tuned",
          start_param="initial_head", starts=("none", "vgg16_features", "vgg16_augmented")),
)
BY_NAME = {model.name: model for model in MODELS}
NAMES = tuple(model.name for model in MODELS)
FROM_SCRATCH = tuple(model.name for model in MODELS if model.family == CNN)
TRANSFER = tuple(model.name for model in MODELS if model.family == VGG16)


def model(name: str) -> Model:
    """The registry's entry for ``name``.

    Raises:
        KeyError: no such model, with the known names.
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no model {name!r} in the study; models: {', '.join(NAMES)}") from None


def dvc_stage(name: str) -> str:
    """The DVC stage that makes ``name``: a model's training stage, or the stage of that name."""
    return BY_NAME[name].dvc_stage if name in BY_NAME else name
