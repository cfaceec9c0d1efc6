"""Tests of the MLflow tracking layer, against a SQLite store in a temp folder.

One tiny model is trained once per module (inside a fake ``dvc exp run``
copy of the project) and the tests read what was logged back with
:class:`mlflow.MlflowClient`.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.mlflow_runs import TrackingError

STAGE = "scratch_cnn"
EPOCHS = 3


def git(workdir: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *identity, *args], cwd=workdir, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def make_repo(workdir: Path) -> str:
    """A git repo with committed code and params; returns its commit."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "code.py").write_text("print('train')\n")
    (workdir / "params.yaml").write_text("lr: 0.001\n")
    git(workdir, "init", "-q")
    git(workdir, "add", "code.py", "params.yaml")
    git(workdir, "commit", "-q", "-m", "code")
    return git(workdir, "rev-parse", "HEAD")


def tiny_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy", metrics=["accuracy"]
    )
    return model


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / ".dvc").mkdir()
    return root


@pytest.fixture(scope="module")
def logged(project):
    """Trains the tiny model with tracking, as `dvc exp run --temp` would run it."""
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    commit = make_repo(copy)
    (copy / "params.yaml").write_text("lr: 0.01\n")  # `-S` edits params: not a code change
    manifest = copy / "manifest.csv"
    manifest.write_text("path,label\ncat.1.jpg,0\ndog.1.jpg,1\n")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 2, (16, 1)).astype("float32")
    params = {"scratch_cnn.epochs": EPOCHS, "scratch_cnn.optimizer": "rmsprop", "split.train": 16}
    summary = {"best_val_accuracy": 0.75, "best_epoch": 2, "epochs_run": EPOCHS, "images_per_second": 12.5}

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("DVC_EXP_NAME", "tiny-exp")
        mp.chdir(copy)
        keras.backend.clear_session()
        model = tiny_model()
        with mlflow_runs.start_run(STAGE, params, manifest=manifest, extra_tags={"note": "test"}) as run:
            fit = model.fit(
                x, y, validation_split=0.25, batch_size=4, epochs=EPOCHS, verbose=0,
                callbacks=[run.callback()],
            )
            history = pd.DataFrame(fit.history).rename_axis("epoch").reset_index()
            run.log_history(history)
            run.log_model_summary(model)
            run.log_summary(summary)
            version = run.log_model(model, example=x[0])
    yield {
        "client": mlflow.MlflowClient(),
        "run": mlflow.MlflowClient().get_run(run.run_id),
        "commit": commit,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "params": params,
        "summary": summary,
        "history": history,
        "version": version,
        "model": model,
        "sample": x[:4],
        "uri": mlflow.get_tracking_uri(),
    }
    keras.backend.clear_session()


def test_project_root_of_a_dvc_experiment_copy_is_the_project(tmp_path):
    inside = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "xyz" / "stages"
    inside.mkdir(parents=True)
    (inside.parent / "dvc.yaml").write_text("stages: {}\n")  # the copy has its own dvc.yaml

    assert mlflow_runs.project_root(inside) == tmp_path / "proj"


def test_project_root_is_the_folder_holding_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)

    assert mlflow_runs.project_root(tmp_path / "src" / "pkg") == tmp_path
    assert mlflow_runs.project_root(tmp_path) == tmp_path


def test_project_root_defaults_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_runs.project_root() == tmp_path.resolve()


def test_tracking_uri_is_an_absolute_sqlite_store_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_runs.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow_runs.example:5000")
    assert mlflow_runs.tracking_uri(tmp_path) == "http://mlflow_runs.example:5000"


def test_run_from_an_experiment_copy_lands_in_the_project_store(logged, project):
    assert logged["uri"] == f"sqlite:///{project}/mlruns/mlflow.db"
    assert (project / "mlruns" / "mlflow.db").is_file()
    experiment = logged["client"].get_experiment(logged["run"].info.experiment_id)
    assert experiment.name == "cats-vs-dogs"
    assert experiment.artifact_location == (project / "mlruns" / "artifacts").as_uri()
    assert not (project / ".dvc" / "tmp" / "exps" / "tmpabc123" / "mlruns").exists()


def test_run_is_named_after_the_stage_and_tagged(logged):
    run = logged["run"]
    tags = run.data.tags
    assert run.info.run_name == STAGE
    assert run.info.status == "FINISHED"
    assert tags["dvc.stage"] == STAGE
    assert tags["dvc.exp_name"] == "tiny-exp"
    assert tags["git.commit"] == logged["commit"]
    assert tags["git.code_dirty"] == "false"
    assert tags["dataset.manifest_sha256"] == logged["manifest_sha256"]
    assert tags["keras.version"] == keras.__version__
    assert tags["tensorflow.version"].count(".") == 2
    assert tags["python.version"].startswith("3.")
    assert tags["device"] == "CPU" or tags["device"]  # a GPU name where there is one
    assert tags["note"] == "test"


def test_params_are_logged(logged):
    assert logged["run"].data.params == {key: str(value) for key, value in logged["params"].items()}


@pytest.mark.parametrize("key", ["loss", "accuracy", "val_loss", "val_accuracy", "lr"])
def test_one_value_per_epoch(logged, key):
    history = logged["client"].get_metric_history(logged["run"].info.run_id, key)

    assert sorted(m.step for m in history) == list(range(EPOCHS))
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    expected = [1e-3] * EPOCHS if key == "lr" else list(logged["history"][key])
    assert values == pytest.approx(expected, rel=1e-5)


def test_summary_metrics_are_logged(logged):
    metrics = logged["run"].data.metrics
    for key, value in logged["summary"].items():
        assert metrics[key] == pytest.approx(value)


def test_artifacts_hold_curves_summary_and_history(logged, tmp_path):
    run_id = logged["run"].info.run_id
    names = {a.path for a in logged["client"].list_artifacts(run_id)}
    assert {"learning_curves.png", "model_summary.txt", "history.csv"} <= names

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path)))
    with Image.open(local / "learning_curves.png") as image:
        assert image.format == "PNG"
        assert image.width > 600 and image.height > 300
    summary = (local / "model_summary.txt").read_text(encoding="utf-8")
    assert "Trainable" in summary and "dense" in summary and "Total params" in summary
    history = pd.read_csv(local / "history.csv")
    pd.testing.assert_frame_equal(history, logged["history"], check_dtype=False)


def test_an_experiments_model_is_registered_with_its_name_and_moves_no_alias(logged):
    client = logged["client"]
    version = client.get_model_version("cats-vs-dogs", logged["version"])

    assert version.run_id == logged["run"].info.run_id
    assert version.tags["dvc.exp_name"] == "tiny-exp" and version.tags["dvc.stage"] == STAGE
    assert client.get_registered_model("cats-vs-dogs").aliases == {}


def test_outside_an_experiment_the_model_takes_the_stage_alias(logged, project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    monkeypatch.chdir(project)
    with mlflow_runs.start_run(STAGE, {}, manifest=None) as run:
        version = run.log_model(logged["model"], example=logged["sample"][0])

    client = logged["client"]
    assert str(client.get_model_version_by_alias("cats-vs-dogs", STAGE).version) == version
    assert "dvc.exp_name" not in client.get_model_version("cats-vs-dogs", version).tags
    assert int(version) == int(logged["version"]) + 1


def test_registered_model_predicts_like_keras(logged):
    loaded = mlflow.pyfunc.load_model(f"models:/cats-vs-dogs/{logged['version']}")

    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 8, 8, 3)
    assert loaded.metadata.get_output_schema().inputs[0].shape == (-1, 1)
    assert loaded.metadata.saved_input_example_info["type"] == "ndarray"
    sample = logged["sample"]
    expected = logged["model"].predict(sample, verbose=0)
    np.testing.assert_allclose(loaded.predict(sample), expected, rtol=1e-6)


def test_failing_block_ends_the_run_failed(logged, project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        with mlflow_runs.start_run("broken_stage", {}, manifest=None, root=project) as run:
            raise RuntimeError("boom")

    assert mlflow.active_run() is None
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"


def test_missing_manifest_is_a_clear_error(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="nothere.csv"):
        with mlflow_runs.start_run(STAGE, {}, manifest=project / "nothere.csv", root=project):
            pass


def test_git_tags_see_code_edits_but_not_params_or_committed_results(tmp_path):
    make_repo(tmp_path)
    for name in ("metrics/scratch_cnn.json", "plots/scratch_cnn/history.csv", "dvc.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("old\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "results")
    commit = git(tmp_path, "rev-parse", "HEAD")
    for name in ("metrics/scratch_cnn.json", "plots/scratch_cnn/history.csv", "dvc.lock"):
        (tmp_path / name).write_text("new\n")
    (tmp_path / "params.yaml").write_text("lr: 0.5\n")
    (tmp_path / "new_output.bin").write_bytes(b"\0")
    assert mlflow_runs.git_tags(tmp_path) == {"git.commit": commit, "git.code_dirty": "false"}

    (tmp_path / "code.py").write_text("print('changed')\n")
    assert mlflow_runs.git_tags(tmp_path)["git.code_dirty"] == "true"


def test_git_tags_outside_a_repo_are_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert mlflow_runs.git_tags(tmp_path) == {"git.commit": "unknown", "git.code_dirty": "unknown"}


def test_learning_rate_is_read_from_a_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = keras.optimizers.SGD(schedule)
    optimizer.iterations.assign(2)

    assert mlflow_runs.current_learning_rate(optimizer) == pytest.approx(0.025)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_clear_error_within_seconds(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()

    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI") as caught:
        with mlflow_runs.start_run(STAGE, {}, manifest=None, root=tmp_path):
            pytest.fail("the run must not start")

    assert time.monotonic() - started < 10
    assert uri in str(caught.value)
    assert not (tmp_path / "mlruns").exists()


@pytest.fixture
def health_server():
    """A local HTTP server whose /health answers with the status in ``state``."""
    state = {"status": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(state["status"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()
    server.server_close()


def test_server_health_is_checked(health_server):
    uri, state = health_server
    mlflow_runs.check_tracking_server(uri)

    state["status"] = 503
    with pytest.raises(TrackingError, match="HTTP 503"):
        mlflow_runs.check_tracking_server(uri)


def test_sqlite_store_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        mlflow_runs.check_tracking_server(f"sqlite:///{tmp_path}/nowhere/mlflow.db")
