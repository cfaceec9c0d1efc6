"""`catsdogs copy-store`: the project's SQLite history copied into the team's
PostgreSQL-backed server (artifacts in S3), whole, and only once."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from catsdogs.serving import cli

from catsdogs.tracking import store_copy

from catsdogs.core.config import parse_params
from catsdogs.tracking import mlflow_runs
from catsdogs.training.cnn_stages import train_cnn
from catsdogs.training.model_stage import StageOutputs

from conftest import TINY_PARAMS

# Names of their own, so that the copy does not mix with what other tests log to the shared server.
NAME = "cats-vs-dogs-copy-test"


@pytest.fixture
def project_store(tmp_path, small_dataset, monkeypatch):
    """A project store with what a pipeline leaves: a stage's run with its
    model registered and aliased, and a parent run with a child."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow_runs, "EXPERIMENT_NAME", NAME)
    monkeypatch.setattr(mlflow_runs, "REGISTERED_MODEL_NAME", NAME)
    params = parse_params({k: dict(v) for k, v in TINY_PARAMS.items()})
    outputs = StageOutputs(tmp_path / "models" / "scratch_cnn.keras", tmp_path / "metrics" / "scratch_cnn.json", tmp_path / "plots" / "scratch_cnn")
    train_cnn("scratch_cnn", params, data_dir=small_dataset, outputs=outputs)
    keras.backend.clear_session()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name(NAME).experiment_id
    parent = client.create_run(experiment, run_name="repro 2026-12-01 20:00:00")
    child = client.create_run(experiment, run_name="child", tags={store_copy.PARENT_TAG: parent.info.run_id})
    for step in range(3):
        client.log_metric(child.info.run_id, "val_accuracy", 0.5 + step / 10, step=step)
    for run in (child, parent):
        client.set_terminated(run.info.run_id)
    return uri, outputs.model


def runs_by_source(client: MlflowClient, experiment_id: str) -> dict:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{store_copy.COPIED_FROM}` != ''")
    return {run.data.tags[store_copy.COPIED_FROM]: run for run in runs}


@pytest.mark.slow
def test_the_project_history_is_copied_to_the_team_server_whole_and_once(project_store, team_engines, small_dataset):
    source_uri, model_file = project_store
    target_uri = team_engines.tracking_uri
    source, target = MlflowClient(source_uri, source_uri), MlflowClient(target_uri, target_uri)

    summary = store_copy.copy_store(source_uri, target_uri, say=lambda _: None)

    old = source.search_runs([source.get_experiment_by_name(NAME).experiment_id])
    assert len(old) == 4  # the stage's run under its parent, and the parent with a child made here
    assert (summary.runs, summary.runs_already_there, summary.logged_models, summary.model_versions, summary.aliases) == (4, 0, 1, 1, 1)
    copies = runs_by_source(target, target.get_experiment_by_name(NAME).experiment_id)
    assert set(copies) == {run.info.run_id for run in old}
    for run in old:
        copy = copies[run.info.run_id]
        assert copy.info.run_name == run.info.run_name
        assert (copy.info.status, copy.info.start_time, copy.info.end_time) == (run.info.status, run.info.start_time, run.info.end_time)
        assert copy.data.params == run.data.params
        tags = {k: v for k, v in copy.data.tags.items() if k not in (store_copy.COPIED_FROM, store_copy.PARENT_TAG)}
        assert tags == {k: v for k, v in run.data.tags.items() if k != store_copy.PARENT_TAG}
        for key in run.data.metrics:
            history = [(m.step, m.value, m.timestamp) for m in source.get_metric_history(run.info.run_id, key)]
            assert [(m.step, m.value, m.timestamp) for m in target.get_metric_history(copy.info.run_id, key)] == history, key
        assert sorted(a.path for a in target.list_artifacts(copy.info.run_id)) == sorted(a.path for a in source.list_artifacts(run.info.run_id))
        assert len(copy.inputs.dataset_inputs) == len(run.inputs.dataset_inputs)
        if store_copy.PARENT_TAG in run.data.tags:
            assert copy.data.tags[store_copy.PARENT_TAG] == copies[run.data.tags[store_copy.PARENT_TAG]].info.run_id
    assert any(run.inputs.dataset_inputs for run in old)  # the stage's dataset was there to copy

    # The alias points at the copied version, whose model (artifacts in S3) predicts as the file does.
    version = target.get_model_version_by_alias(NAME, "scratch_cnn")
    stage_run = next(run for run in old if run.data.tags.get("dvc.stage") == "scratch_cnn")
    assert version.run_id == copies[stage_run.info.run_id].info.run_id
    photos = np.stack([np.asarray(keras.utils.load_img(p, target_size=(48, 48)), dtype=np.float32)
                       for p in sorted((small_dataset / "test" / "cat").glob("*.jpg"))[:2]])
    mlflow.set_tracking_uri(target_uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@scratch_cnn")
    expected = keras.saving.load_model(model_file).predict(photos, verbose=0)
    np.testing.assert_allclose(np.asarray(served.predict(photos)).reshape(-1), expected.reshape(-1), rtol=1e-5)

    # Again: nothing is copied twice.
    again = store_copy.copy_store(source_uri, target_uri, say=lambda _: None)
    assert (again.runs, again.runs_already_there, again.model_versions, again.logged_models) == (0, 4, 0, 0)
    assert len(runs_by_source(target, target.get_experiment_by_name(NAME).experiment_id)) == 4
    assert len(target.search_model_versions(f"name = '{NAME}'")) == 1


def test_copy_store_refuses_one_store_into_itself():
    with pytest.raises(store_copy.StoreCopyError, match="the same store"):
        store_copy.copy_store("sqlite:///x/mlflow.db", "sqlite:///x/mlflow.db")


def test_copy_store_without_a_project_store_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert cli.main(["copy-store", "--to", "http://127.0.0.1:9"]) == cli.EXIT_USAGE
    assert "mlruns/mlflow.db not found: nothing to copy" in capsys.readouterr().err
