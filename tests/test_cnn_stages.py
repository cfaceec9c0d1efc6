"""A from-scratch CNN stage trains, writes its DVC outputs and one MLflow run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from catsdogs.core.config import parse_params
from catsdogs.models.networks import build_regularized_cnn, build_scratch_cnn
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from catsdogs.training.cnn_stages import train_cnn
from catsdogs.training.model_stage import StageOutputs

from conftest import TINY_PARAMS


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Keras keeps global state (layer names, seeds) between models: reset it."""
    yield
    keras.backend.clear_session()


def tiny_params(**overrides):
    raw = {k: dict(v) for k, v in TINY_PARAMS.items()}
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return parse_params(raw)


def outputs_in(folder: Path, stage: str) -> StageOutputs:
    return StageOutputs(
        model=folder / "models" / f"{stage}.keras",
        metrics=folder / "metrics" / f"{stage}.json",
        plots_dir=folder / "plots" / stage,
    )


def run_of(root: Path, stage: str):
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")
    return client, runs


def test_architectures_match_the_chapter():
    # The chapter's summary: 19,024,513 parameters for the basic CNN at 150x150.
    assert build_scratch_cnn(150).count_params() == 19_024_513
    regularized = build_regularized_cnn(150)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in regularized.layers) == 4
    assert [round(layer.rate, 2) for layer in regularized.layers if isinstance(layer, keras.layers.Dropout)] == [0.3, 0.3]


@pytest.mark.slow
def test_augmented_stage_writes_outputs_and_one_mlflow_run(tmp_path, small_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    params = tiny_params(**{"augmented_cnn.epochs": 3})
    outputs = outputs_in(tmp_path, "augmented_cnn")

    summary = train_cnn("augmented_cnn", params, data_dir=small_dataset, outputs=outputs)

    # DVC outputs
    model = keras.saving.load_model(outputs.model)
    assert model.input_shape == (None, 48, 48, 3)
    history = pd.read_csv(outputs.history)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"].tolist() == [1, 2, 3]
    written = json.loads(outputs.metrics.read_text())
    assert written == summary
    assert written["epochs"] == 3
    assert 1 <= written["best_epoch"] <= 3
    assert written["best_val_accuracy"] == pytest.approx(history["val_accuracy"].max(), abs=1e-6)
    assert written["images_per_second"] > 0
    # steps_per_epoch=3 at batch 8: 24 images an epoch, whatever the split holds.
    assert written["images_per_second"] == pytest.approx(3 * 24 / written["training_seconds"], rel=0.02)

    # One MLflow run with params, per-epoch metrics, artifacts and a registered model
    client, runs = run_of(tmp_path, "augmented_cnn")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "augmented_cnn"
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.exp_name"] == "tiny-exp"
    assert len(run.data.tags["dataset.manifest_sha256"]) == 64
    assert run.data.params["augmented_cnn.learning_rate"] == "0.0001"
    assert run.data.params["augmented_cnn.steps_per_epoch"] == "3"
    assert run.data.params["augmentation.rotation_degrees"] == "50.0"
    assert run.data.params["base.image_size"] == "48"
    assert run.data.params["split.train.cat"] == "12"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        values = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in values] == [0, 1, 2], key
        assert [m.value for m in values] == pytest.approx(history[key].tolist(), abs=1e-5)
    lr = client.get_metric_history(run.info.run_id, next(k for k in run.data.metrics if k in ("lr", "learning_rate")))
    assert [m.value for m in lr] == pytest.approx([1e-4] * 3)
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(summary["best_val_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "learning_curves.png", "model_summary.txt"} <= artifacts
    # Inside an experiment the model is registered, tagged with its name, and moves no alias.
    (version,) = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}' and run_id = '{run.info.run_id}'")
    assert version.tags["dvc.exp_name"] == "tiny-exp"
    assert "augmented_cnn" not in client.get_registered_model(REGISTERED_MODEL_NAME).aliases

    photos = np.stack([np.asarray(keras.utils.load_img(p, target_size=(48, 48)), dtype=np.float32)
                       for p in sorted((small_dataset / "test" / "dog").glob("*.jpg"))[:2]])
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL_NAME}/{version.version}")
    np.testing.assert_allclose(np.asarray(served.predict(photos)).reshape(-1), model.predict(photos, verbose=0).reshape(-1), rtol=1e-5)


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, small_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params(**{"scratch_cnn.epochs": 2})
    first = train_cnn("scratch_cnn", params, data_dir=small_dataset, outputs=outputs_in(tmp_path / "a", "scratch_cnn"))
    keras.backend.clear_session()
    second = train_cnn("scratch_cnn", params, data_dir=small_dataset, outputs=outputs_in(tmp_path / "b", "scratch_cnn"))
    keys = ("final_val_accuracy", "final_val_loss", "best_val_accuracy", "best_val_loss", "best_epoch")
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    a = pd.read_csv(tmp_path / "a" / "plots" / "scratch_cnn" / "history.csv")
    b = pd.read_csv(tmp_path / "b" / "plots" / "scratch_cnn" / "history.csv")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_augmented_cnn_can_start_from_the_trained_regularized_cnn(tmp_path, small_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    keras.utils.set_random_seed(123)  # other weights than the stage's seed gives a fresh model
    source = build_regularized_cnn(48)
    (tmp_path / "models").mkdir()
    source.save(tmp_path / "models" / "regularized_cnn.keras")
    # A learning rate too small to move a weight: the saved model is where training started.
    params = tiny_params(**{"augmented_cnn.initial_weights": "regularized_cnn", "augmented_cnn.epochs": 1,
                            "augmented_cnn.learning_rate": 1e-12})
    outputs = outputs_in(tmp_path, "augmented_cnn")

    train_cnn("augmented_cnn", params, data_dir=small_dataset, outputs=outputs, models_dir=tmp_path / "models")

    trained = keras.saving.load_model(outputs.model)
    for ours, theirs in zip(trained.get_weights(), source.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    keras.utils.set_random_seed(params.base.seed)
    fresh = build_regularized_cnn(48)
    assert not all(np.allclose(a, b, atol=1e-6) for a, b in zip(trained.get_weights(), fresh.get_weights()))
    _, (run,) = run_of(tmp_path, "augmented_cnn")
    assert run.data.params["augmented_cnn.initial_weights"] == "regularized_cnn"
    digest = hashlib.sha256((tmp_path / "models" / "regularized_cnn.keras").read_bytes()).hexdigest()
    assert run.data.tags["augmented_cnn.initial_weights.sha256"] == digest
