"""The one way into a training stage: the model's family says which fit runs.

``stages/train.py <model>`` calls :func:`train_model`; every path comes from
dvc.yaml, and the registry (:mod:`catsdogs.core.study`) says what the model
reads and what it may start from.
"""

from __future__ import annotations

from pathlib import Path

from catsdogs.core import study
from catsdogs.core.config import Params
from catsdogs.training.cnn_stages import train_cnn
from catsdogs.training.model_stage import StageOutputs
from catsdogs.training.transfer_stages import fine_tune, train_vgg16_augmented, train_vgg16_features


def train_model(
    name: str, params: Params, *, data_dir: Path, outputs: StageOutputs, models_dir: Path, features_dir: Path | None
) -> dict:
    """Trains the study's model ``name`` and records it (MLflow run, DVC outputs).

    Args:
        name: a model of :data:`catsdogs.core.study.MODELS`.
        params: the whole validated params.yaml.
        data_dir: the small dataset.
        outputs: the stage's DVC outputs.
        models_dir: the earlier stages' models, for a warm start.
        features_dir: vgg16_bottleneck's outputs; needed by the VGG16 models.

    Returns:
        The stage's metrics summary.
    """
    if study.model(name).family == study.CNN:
        return train_cnn(name, params, data_dir=data_dir, outputs=outputs, models_dir=models_dir)
    if features_dir is None:
        raise study.StudyError(f"{name}: --features (vgg16_bottleneck's output folder) is required for a VGG16 model")
    if name == "vgg16_features":
        return train_vgg16_features(params, features_dir=features_dir, data_dir=data_dir, outputs=outputs)
    if name == "vgg16_augmented":
        return train_vgg16_augmented(
            params, data_dir=data_dir, outputs=outputs, features_dir=features_dir, models_dir=models_dir
        )
    return fine_tune(params, data_dir=data_dir, models_dir=models_dir, outputs=outputs, features_dir=features_dir)
