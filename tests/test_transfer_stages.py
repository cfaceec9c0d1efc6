"""The VGG16 stages: bottleneck features, which layers train, and a tiny run
of each stage end to end with its DVC outputs and MLflow run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from catsdogs.models.bottleneck import (
    extract_bottleneck_features,
    feature_extractor,
    load_features,
    load_frozen_outputs,
    unfreeze_from,
    vgg16_base,
)
from catsdogs.core.config import parse_params
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from catsdogs.training.model_stage import StageOutputs
from catsdogs.training.transfer_stages import (
    fine_tune,
    train_vgg16_augmented,
    train_vgg16_features,
)

from conftest import TINY_PARAMS

SIZE = 64  # VGG16's five poolings leave a 2x2 feature map: small, but not degenerate


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.fixture
def params():
    raw = {k: dict(v) for k, v in TINY_PARAMS.items()}
    raw["base"]["image_size"] = SIZE
    return parse_params(raw)


def outputs_in(folder, stage):
    return StageOutputs(folder / "models" / f"{stage}.keras", folder / "metrics" / f"{stage}.json", folder / "plots" / stage)


def trainable_names(model: keras.Model) -> set[str]:
    return {w.path.split("/")[0] for w in model.trainable_weights}


def test_bottleneck_shape_at_the_chapters_size():
    params = parse_params({"base": {"image_size": 150}})
    base, resolved = vgg16_base(params)
    assert feature_extractor(base, params).output_shape == (None, 4, 4, 512)
    assert not base.trainable_weights
    assert resolved.path.is_file()


def test_unfreeze_from_block4_trains_blocks_4_and_5_only():
    base, _ = vgg16_base(parse_params({"base": {"image_size": 32}}))
    trained = unfreeze_from(base, "block4_conv1")
    assert trained == [f"block{b}_conv{c}" for b in (4, 5) for c in (1, 2, 3)]
    assert trainable_names(base) == set(trained)


@pytest.mark.slow
def test_vgg16_stages_end_to_end(tmp_path, small_dataset, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    shapes = extract_bottleneck_features(params, data_dir=small_dataset, out_dir=tmp_path / "features")
    assert shapes == {"train": (24, 2, 2, 512), "validation": (12, 2, 2, 512), "test": (12, 2, 2, 512)}
    features, labels = load_features(tmp_path / "features", "train")
    assert features.dtype == np.float32 and labels.tolist() == [0.0] * 12 + [1.0] * 12
    # fine_tune trains blocks 4-5: the validation and test photos' block3_pool outputs are kept, not the training ones'.
    assert sorted(p.name for p in (tmp_path / "features" / "frozen").iterdir()) == ["test.npz", "validation.npz"]
    block3 = load_frozen_outputs(tmp_path / "features", "validation", "block3_pool")
    assert block3.inputs.shape == (12, 8, 8, 256)

    results = {
        "vgg16_features": train_vgg16_features(
            params, features_dir=tmp_path / "features", data_dir=small_dataset,
            outputs=outputs_in(tmp_path, "vgg16_features"),
        ),
    }
    # The default profile's way: vgg16_augmented starts from vgg16_features' trained head.
    head_start = replace(params, vgg16_augmented=replace(params.vgg16_augmented, initial_head="vgg16_features"))
    results["vgg16_augmented"] = train_vgg16_augmented(
        head_start, data_dir=small_dataset, outputs=outputs_in(tmp_path, "vgg16_augmented"),
        features_dir=tmp_path / "features", models_dir=tmp_path / "models",
    )
    results["fine_tune"] = fine_tune(
        params, data_dir=small_dataset,
        models_dir=tmp_path / "models",
        outputs=outputs_in(tmp_path, "fine_tune"), features_dir=tmp_path / "features",
    )

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    photos = np.stack([
        np.asarray(keras.utils.load_img(p, target_size=(SIZE, SIZE)), dtype=np.float32)
        for p in sorted((small_dataset / "test" / "cat").glob("*.jpg"))[:3]
    ])
    head_of_augmented = None
    for stage, summary in results.items():
        model = keras.saving.load_model(tmp_path / "models" / f"{stage}.keras")
        assert model.input_shape == (None, SIZE, SIZE, 3), stage  # every saved model takes raw photos
        assert json.loads((tmp_path / "metrics" / f"{stage}.json").read_text()) == summary
        history = pd.read_csv(tmp_path / "plots" / stage / "history.csv")
        assert len(history) == summary["epochs"] == 2
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        run = runs[0]
        assert run.data.params["vgg16.preprocessing"] == "imagenet"
        assert run.data.tags["vgg16.weights_digest"]
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        version = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, stage)
        assert version.run_id == run.info.run_id
        predictions = model.predict(photos, verbose=0)
        assert predictions.shape == (3, 1) and np.all((predictions >= 0) & (predictions <= 1))
        if stage == "vgg16_augmented":
            head_of_augmented = model.get_layer("classifier_head").get_weights()

    # Which layers trained: only the head, except in fine_tune.
    summary_text = {
        stage: client.download_artifacts(
            client.get_model_version_by_alias(REGISTERED_MODEL_NAME, stage).run_id, "model_summary.txt", str(tmp_path)
        )
        for stage in results
    }
    assert all(summary_text.values())
    fine = client.get_run(client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "fine_tune").run_id)
    assert fine.data.tags["fine_tune.trainable_layers"].split(",") == [
        f"block{b}_conv{c}" for b in (4, 5) for c in (1, 2, 3)
    ]
    assert fine.data.params["fine_tune.initial_head"] == "vgg16_augmented"
    # Each warm start names the very file it started from.
    augmented = client.get_run(client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "vgg16_augmented").run_id)
    assert augmented.data.params["vgg16_augmented.initial_head"] == "vgg16_features"
    for run_, param, source in ((augmented, "vgg16_augmented.initial_head", "vgg16_features"), (fine, "fine_tune.initial_head", "vgg16_augmented")):
        digest = hashlib.sha256((tmp_path / "models" / f"{source}.keras").read_bytes()).hexdigest()
        assert run_.data.tags[f"{param}.sha256"] == digest, param
    assert head_of_augmented is not None
