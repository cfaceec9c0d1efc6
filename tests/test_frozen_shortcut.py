"""Scoring VGG16 models from what their frozen layers already made gives the
saved end-to-end model's probabilities, on real photos of the mirror."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from catsdogs.core.config import parse_params
from catsdogs.models import networks
from catsdogs.models.bottleneck import extract_bottleneck_features, top_from, vgg16_base
from catsdogs.evaluation.scoring import (
    SHORTCUT_TOLERANCE,
    TIMED_PHOTOS,
    EvaluationError,
    evaluate_model,
    extra_predictions,
    load_stage_model,
    saved_outputs,
    shortcut_predictions,
)
from catsdogs.data.inputs import load_split_arrays
from catsdogs.models.bottleneck import unfreeze_from
from catsdogs.training.model_stage import save_model_atomically

from conftest import TINY_PARAMS, real_photos

pytestmark = pytest.mark.slow  # VGG16 over real photos, three times
SIZE = 64


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    """train / validation / test folders of real mirror photos: 4 / 4 / 4 per class."""
    root = tmp_path_factory.mktemp("real") / "small"
    photos = real_photos(12)
    for i, (label, data) in enumerate(photos):
        split = ("train", "validation", "test")[(i % 12) // 4]
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{label}.{i}.jpg").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def params():
    raw = {k: dict(v) for k, v in TINY_PARAMS.items()}
    raw["base"]["image_size"] = SIZE
    return parse_params(raw)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, real_dataset, params):
    """Features of the real photos, and two saved models: a frozen base with a head,
    and one whose blocks 4-5 changed as fine-tuning changes them."""
    out = tmp_path_factory.mktemp("saved")
    extract_bottleneck_features(params, data_dir=real_dataset, out_dir=out / "features")
    keras.utils.set_random_seed(5)
    for stage in ("vgg16_augmented", "fine_tune"):
        base, _ = vgg16_base(params)
        head = networks.build_classifier_head(base.output_shape[1:])
        if stage == "fine_tune":
            unfreeze_from(base, params.fine_tune.trainable_from)
            for layer in base.layers:
                if layer.trainable and layer.weights:
                    kernel, bias = layer.get_weights()
                    layer.set_weights([kernel * 1.05, bias])
        model = networks.build_vgg16_classifier(base, head, SIZE, params.vgg16.preprocessing)
        save_model_atomically(model, out / "models" / f"{stage}.keras")
        keras.backend.clear_session()
    return out


@pytest.mark.parametrize("stage", ["vgg16_augmented", "fine_tune"])
def test_shortcut_gives_the_saved_models_probabilities(real_dataset, saved_models, stage):
    images, labels, paths = load_split_arrays(real_dataset / "test", image_size=SIZE)
    model = load_stage_model(saved_models / "models", stage)
    saved = saved_outputs(stage, saved_models / "features", "test", real_dataset, paths)
    assert saved.layer == (None if stage == "vgg16_augmented" else "block3_pool")

    end_to_end = model.predict(images, verbose=0).reshape(-1)
    shortcut = top_from(model, saved.layer).predict(saved.inputs, verbose=0).reshape(-1)
    assert np.max(np.abs(shortcut - end_to_end)) < SHORTCUT_TOLERANCE
    assert np.ptp(end_to_end) > 1e-3  # the photos get different scores: the check can fail

    evaluation = evaluate_model(stage, model, images, labels, saved=saved)
    np.testing.assert_allclose(evaluation.p_dog, end_to_end, atol=SHORTCUT_TOLERANCE)
    assert evaluation.ms_per_image > 0
    assert len(images) <= TIMED_PHOTOS  # here every photo is also checked end to end


def test_outputs_of_other_layers_are_refused(real_dataset, saved_models):
    images, _, paths = load_split_arrays(real_dataset / "test", image_size=SIZE)
    model = load_stage_model(saved_models / "models", "fine_tune")
    # The ImageNet base's features are not what the fine-tuned blocks make.
    wrong = saved_outputs("vgg16_augmented", saved_models / "features", "test", real_dataset, paths)
    with pytest.raises(EvaluationError, match="fine_tune: scoring on the saved outputs of the VGG16 base differs"):
        shortcut_predictions("fine_tune", model, wrong, images)


def test_features_of_other_photos_are_refused(real_dataset, saved_models):
    _, _, paths = load_split_arrays(real_dataset / "validation", image_size=SIZE)
    with pytest.raises(EvaluationError, match="other test photos"):
        saved_outputs("vgg16_augmented", saved_models / "features", "test", real_dataset, paths)


def test_extra_test_set_shares_one_frozen_pass_and_gives_the_saved_models_probabilities(real_dataset, saved_models):
    images, _, _ = load_split_arrays(real_dataset / "validation", image_size=SIZE)
    stages = ["vgg16_augmented", "fine_tune"]
    shared = extra_predictions(stages, saved_models / "models", images, share_frozen=True, frozen_layer="block3_pool")
    alone = extra_predictions(stages, saved_models / "models", images, share_frozen=False, frozen_layer=None)
    for stage in stages:
        assert np.max(np.abs(shared[stage] - alone[stage])) < SHORTCUT_TOLERANCE, stage
