"""The team setup with the real engines: a whole ``dvc repro`` logs to the
MLflow server that ``make server`` started on PostgreSQL, its artifacts land
in SeaweedFS's S3, ``evaluate`` sets the champion there, ``catsdogs
predict``, ``make ui`` and ``make serve`` use the server, and DVC's outputs
go through an S3 remote to a second clone that retrains nothing."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests

from catsdogs.core.config import TRAINING_STAGES
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME

from conftest import GIT_ENV, ROOT, free_port, make_repo_copy, run, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_on_server(team_engines, mirror_sample_zip, tmp_path_factory):
    """A repo copy whose whole ``dvc repro`` (tiny data) logged to the team server."""
    copy = make_repo_copy(tmp_path_factory.mktemp("team") / "repo", mirror_sample_zip)
    run(["dvc", "repro"], copy, MLFLOW_TRACKING_URI=team_engines.tracking_uri)
    commit = run(["git", "rev-parse", "HEAD"], copy).stdout.strip()
    client = mlflow.MlflowClient(tracking_uri=team_engines.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    [stage_run] = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`git.commit` = '{commit}' and tags.`dvc.stage` = 'scratch_cnn'"
    )
    return copy, stage_run, client


def test_the_server_runs_on_postgresql_and_started_in_bounded_time(team_engines):
    health = requests.get(f"{team_engines.tracking_uri}/health", timeout=5)
    assert health.ok
    assert team_engines.postgres.pid() is not None
    print(f"\nstart-up: {team_engines.start_seconds}")
    assert team_engines.start_seconds["make server"] < 240
    # The server's tables live in PostgreSQL, not in a file.
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=team_engines.postgres.port, user="postgres", dbname="mlflow") as db:
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"experiments", "runs", "metrics", "registered_models", "model_versions"} <= tables


def test_a_stage_logs_its_run_metrics_and_registered_version_to_the_server(trained_on_server):
    copy, stage_run, client = trained_on_server
    assert stage_run.info.status == "FINISHED"
    assert stage_run.data.params["scratch_cnn.epochs"] == "2"
    assert stage_run.data.params["base.distribution"] == "none"
    assert stage_run.data.tags["distribution"] == "none"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [m.step for m in client.get_metric_history(stage_run.info.run_id, key)] == [0, 1], key
    summary = json.loads((copy / "metrics" / "training" / "scratch_cnn.json").read_text())
    assert stage_run.data.metrics["best_val_accuracy"] == pytest.approx(summary["best_val_accuracy"])
    version = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "scratch_cnn")
    assert version.run_id == stage_run.info.run_id


def test_the_whole_study_is_recorded_on_the_server(trained_on_server):
    copy, stage_run, client = trained_on_server
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`git.commit` = '{stage_run.data.tags['git.commit']}'")
    by_stage = {run.data.tags["dvc.stage"]: run for run in runs if "dvc.stage" in run.data.tags}
    assert set(by_stage) == {*TRAINING_STAGES, "evaluate"}, sorted(by_stage)
    assert {run.info.status for run in runs} == {"FINISHED"}
    # One parent run for the repro holds every stage's run.
    parents = {run.data.tags["mlflow.parentRunId"] for run in by_stage.values()}
    assert len(parents) == 1 and parents <= {run.info.run_id for run in runs}
    # evaluate logged each model's test scores to its run and moved @champion to the winner.
    headline = {stage: json.loads((copy / "metrics" / f"{stage}.json").read_text()) for stage in TRAINING_STAGES}
    for stage in TRAINING_STAGES:
        run_ = by_stage[stage]
        assert run_.data.metrics["test_accuracy"] == pytest.approx(headline[stage]["test_accuracy"], abs=1e-6), stage
    (winner,) = [stage for stage in TRAINING_STAGES if headline[stage]["champion"]]
    assert client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "champion").run_id == by_stage[winner].info.run_id


def test_artifacts_are_proxied_into_s3(trained_on_server, team_engines):
    copy, stage_run, client = trained_on_server
    # The client sees only the server's proxy; the objects are in the bucket.
    assert stage_run.info.artifact_uri.startswith("mlflow-artifacts:")
    keys = team_engines.keys("mlflow/")
    run_keys = {key.rsplit("/", 1)[-1] for key in keys if f"/{stage_run.info.run_id}/artifacts/" in key}
    assert {"history.csv", "learning_curves.png", "model_summary.txt"} <= run_keys, keys[:20]
    [history_key] = [key for key in keys if key.endswith(f"/{stage_run.info.run_id}/artifacts/history.csv")]
    body = team_engines.s3().get_object(Bucket=team_engines.bucket, Key=history_key)["Body"].read()
    in_s3 = pd.read_csv(io.BytesIO(body))
    local = pd.read_csv(copy / "plots" / "scratch_cnn" / "history.csv")
    pd.testing.assert_frame_equal(in_s3, local, atol=1e-6, check_dtype=False)
    # The logged model's files too: its MLmodel (naming the run) beside the Keras model.
    s3 = team_engines.s3()
    mlmodels = [key for key in keys if key.endswith("/MLmodel")]
    ours = [key for key in mlmodels
            if stage_run.info.run_id in s3.get_object(Bucket=team_engines.bucket, Key=key)["Body"].read().decode()]
    assert len(ours) == 1, mlmodels
    folder = ours[0].rsplit("/", 1)[0]
    assert any(key.startswith(folder) and key.endswith(".keras") for key in keys), [k for k in keys if k.startswith(folder)]


def test_predict_loads_the_model_from_the_server(trained_on_server, team_engines):
    copy, _, _ = trained_on_server
    photo = sorted((copy / "data" / "small" / "test" / "cat").iterdir())[0]
    done = run(
        ["catsdogs", "predict", str(photo), "--model", "scratch_cnn", "--format", "json"], copy,
        MLFLOW_TRACKING_URI=team_engines.tracking_uri,
    )
    [prediction] = json.loads(done.stdout)
    assert prediction["label"] in ("cat", "dog") and 0 <= prediction["p_dog"] <= 1, prediction


def test_make_ui_points_at_the_server(trained_on_server, team_engines):
    copy, stage_run, _ = trained_on_server
    done = run(["make", "-C", str(ROOT), "--no-print-directory", "ui"], copy, MLFLOW_TRACKING_URI=team_engines.tracking_uri)
    assert f"{team_engines.tracking_uri}/#/experiments/{stage_run.info.experiment_id}" in done.stdout


def test_champion_promotes_and_make_serve_serves_it_from_the_server(trained_on_server, team_engines, tmp_path):
    copy, stage_run, client = trained_on_server
    version = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "scratch_cnn")
    server = {"MLFLOW_TRACKING_URI": team_engines.tracking_uri}
    run([sys.executable, "-m", "catsdogs.evaluation.champion", "promote", "--alias", "scratch_cnn"], copy, **server)
    assert client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "champion").version == version.version
    shown = run([sys.executable, "-m", "catsdogs.evaluation.champion", "show"], copy, **server).stdout
    assert "@champion" in shown and "@scratch_cnn" in shown, shown
    port = free_port()
    env = {**__import__("os").environ, **GIT_ENV, "MLFLOW_TRACKING_URI": team_engines.tracking_uri}
    command = ["make", "-C", str(ROOT), "--no-print-directory", "serve", f"SERVE_PORT={port}"]
    photo = sorted((copy / "data" / "small" / "test" / "dog").iterdir())[0]
    request = run(["catsdogs", "request", str(photo), "--model", "champion"], copy, MLFLOW_TRACKING_URI=team_engines.tracking_uri)
    with running_server(command, cwd=ROOT, env=env, ready_url=f"http://127.0.0.1:{port}/ping", name="make serve",
                        log_path=tmp_path / "serve.log", timeout=240):
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", data=request.stdout,
                               headers={"Content-Type": "application/json"}, timeout=120)
    assert answer.ok, answer.text
    [[p_dog]] = answer.json()["predictions"]
    assert 0 <= p_dog <= 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dvc_push_to_s3_and_pull_into_a_second_clone_retrains_nothing(trained_on_server, team_engines, tmp_path):
    copy, _, client = trained_on_server
    endpoint, keys = team_engines.s3_endpoint, team_engines.credentials
    # The remote and its credentials stay in .dvc/config.local, which git ignores.
    run(["dvc", "remote", "add", "--local", "team", f"s3://{team_engines.bucket}/dvc"], copy)
    run(["dvc", "remote", "modify", "--local", "team", "endpointurl", endpoint], copy)
    run(["dvc", "remote", "modify", "--local", "team", "access_key_id", keys["AWS_ACCESS_KEY_ID"]], copy)
    run(["dvc", "remote", "modify", "--local", "team", "secret_access_key", keys["AWS_SECRET_ACCESS_KEY"]], copy)
    run(["git", "add", "-A"], copy)
    run(["git", "commit", "-qm", "the study trained"], copy)
    tracked = run(["git", "ls-files"], copy).stdout
    assert ".dvc/config.local" not in tracked
    assert keys["AWS_SECRET_ACCESS_KEY"] not in (copy / ".dvc" / "config").read_text()
    run(["dvc", "push", "-r", "team"], copy)
    assert team_engines.keys("dvc/"), "nothing reached the S3 remote"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(copy), str(clone)], check=True)
    # The second member gives the credentials through the environment instead.
    run(["dvc", "remote", "add", "--local", "team", f"s3://{team_engines.bucket}/dvc"], clone)
    run(["dvc", "remote", "modify", "--local", "team", "endpointurl", endpoint], clone)
    run(["dvc", "pull", "-r", "team"], clone, **keys)
    status = json.loads(run(["dvc", "status", "--json"], clone).stdout)
    assert status == {}, status
    assert sha256(clone / "models" / "scratch_cnn.keras") == sha256(copy / "models" / "scratch_cnn.keras")
    assert sha256(clone / "data" / "small" / "manifest.csv") == sha256(copy / "data" / "small" / "manifest.csv")
    training = [json.loads((where / "metrics" / "training" / "scratch_cnn.json").read_text()) for where in (copy, clone)]
    assert training[0] == training[1] and "best_val_accuracy" in training[0]
    shown = [run(["dvc", "metrics", "show", "--json"], where).stdout for where in (copy, clone)]
    assert shown[0] == shown[1]

    runs_before = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id]))
    again = run(["dvc", "repro"], clone, MLFLOW_TRACKING_URI=team_engines.tracking_uri)
    assert "Running stage" not in again.stdout, again.stdout
    runs_after = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id]))
    assert runs_after == runs_before


def test_logging_one_epoch_costs_milliseconds_on_either_store(team_engines, tmp_path):
    """What the per-epoch callback writes (one log_batch of five metrics),
    timed against the project's SQLite store and the team server."""
    import statistics
    import time
    import uuid

    from mlflow.entities import Metric

    epochs, keys = 30, ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
    figures = {}
    for store, uri in (("sqlite", f"sqlite:///{tmp_path / 'mlflow.db'}"), ("server", team_engines.tracking_uri)):
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment(f"logging-overhead-{uuid.uuid4().hex}")
        run_id = client.create_run(experiment_id).info.run_id
        seconds = []
        for epoch in range(epochs):
            batch = [Metric(key, 0.5 + epoch / 100, int(time.time() * 1000), epoch) for key in keys]
            started = time.perf_counter()
            client.log_batch(run_id, metrics=batch)
            seconds.append(time.perf_counter() - started)
        for key in keys:
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(epochs)), (store, key)
        figures[store] = statistics.median(seconds) * 1000
    print(f"\nmedian ms to log one epoch: sqlite {figures['sqlite']:.1f}, server {figures['server']:.1f}")
