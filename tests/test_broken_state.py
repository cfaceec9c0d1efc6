"""Broken state is found early: one clear message naming the file and what to
run, never a traceback or a half-written output."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from catsdogs.models import bottleneck

from catsdogs.models import networks

from catsdogs.serving import predict

from catsdogs.core import stopping

from catsdogs.core.atomic import write_atomically, write_text_atomically
from catsdogs.core.stage_runner import run_stage
from catsdogs.models.bottleneck import TransferError, check_free_space, load_features
from catsdogs.models.networks import DamagedModelError, load_stage_model_file
from catsdogs.tracking import mlflow_runs


def tiny_model() -> keras.Model:
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_keras_model_names_the_file_and_the_commands(tmp_path, damage):
    path = tmp_path / "models" / "scratch_cnn.keras"
    path.parent.mkdir()
    tiny_model().save(path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a zip" * 100, "empty": b""}[damage])
    with pytest.raises(DamagedModelError) as info:
        load_stage_model_file(path, "scratch_cnn")
    message = str(info.value)
    assert str(path) in message
    assert f"dvc checkout {path}" in message and "dvc repro -f cnn@scratch_cnn" in message


def test_evaluate_reports_a_damaged_model_as_a_user_error(tmp_path):
    from catsdogs.evaluation.scoring import load_stage_model

    (tmp_path / "fine_tune.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DamagedModelError, match="fine_tune.keras is damaged"):
        load_stage_model(tmp_path, "fine_tune")


def write_features(folder: Path, split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.npz"
    np.savez(path, features=np.ones((4, 1, 1, 512), np.float32), labels=np.zeros(4, np.float32), files=np.array(["a"] * 4))
    return path


def test_missing_bottleneck_features_say_which_stage_makes_them(tmp_path):
    with pytest.raises(TransferError, match=r"train\.npz not found: run `dvc repro vgg16_bottleneck`"):
        load_features(tmp_path, "train")


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "garbage",
        "no features",
    ],
)
def test_corrupt_bottleneck_features_name_the_file_and_the_commands(tmp_path, damage):
    path = write_features(tmp_path)
    if damage == "no features":
        np.savez(path, labels=np.zeros(4))
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 1000)
    with pytest.raises(TransferError) as info:
        load_features(tmp_path, "train")
    assert f"{path} is damaged" in str(info.value)
    assert "dvc checkout data/features" in str(info.value) and "dvc repro -f vgg16_bottleneck" in str(info.value)


def test_too_little_disk_space_for_the_features_is_refused_before_writing(tmp_path, monkeypatch):
    # Simulated: the disk reports 10 MiB free for 100 MiB of features.
    free = 10 * 2**20
    monkeypatch.setattr(bottleneck.shutil, "disk_usage", lambda _: type("Usage", (), {"free": free})())
    target = tmp_path / "features" / "train.npz"
    target.parent.mkdir()
    with pytest.raises(TransferError) as info:
        check_free_space(target, 100 * 2**20)
    message = str(info.value)
    assert str(target) in message and "10 MiB free" in message and "dvc repro vgg16_bottleneck" in message
    assert not list(target.parent.iterdir())
    # The real disk has room for a kilobyte.
    monkeypatch.undo()
    check_free_space(target, 1024)


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    path = write_text_atomically(tmp_path / "metrics.json", '{"ok": 1}\n')

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text('{"ok": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(path, half_then_fail)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_stop_signal_waits_for_a_deferred_write_then_stops(tmp_path):
    import os

    with stopping.stop_handlers():
        with pytest.raises(stopping.StageStopped) as info:
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                write_text_atomically(tmp_path / "whole.txt", "written after the signal\n")
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert (tmp_path / "whole.txt").read_text() == "written after the signal\n"


def test_a_stage_stopped_by_a_signal_says_so_in_one_line_and_records_nothing(tmp_path):
    import subprocess
    import sys

    timings = tmp_path / "demo.json"
    code = (
        "import os, signal; from pathlib import Path; from catsdogs.core.stage_runner import run_stage; "
        f"run_stage('demo', lambda: os.kill(os.getpid(), signal.SIGINT), timings=Path({str(timings)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == ["demo: stopped by SIGINT"]
    assert not timings.exists()


def test_stop_handlers_are_put_back_after_the_block():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stopping.stop_handlers():
        assert signal.getsignal(signal.SIGTERM) is not before[1]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def make_store(root: Path) -> Path:
    mlflow_runs.use_experiment(root)
    return root / "mlruns" / "mlflow.db"


def set_revision(database: Path, revision: str) -> None:
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_a_store_from_a_newer_mlflow_is_named_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = make_store(tmp_path)
    set_revision(database, "ffffffffffff")
    with pytest.raises(mlflow_runs.TrackingError) as info:
        mlflow_runs.use_experiment(tmp_path)
    message = str(info.value)
    assert str(database) in message and "newer MLflow" in message and "ffffffffffff" in message
    assert "mlflow db upgrade" not in message
    # The store is left as it was.
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("ffffffffffff",)


def test_a_store_from_an_older_mlflow_says_how_to_upgrade_it(tmp_path, monkeypatch):
    import mlflow.store
    from alembic.script import ScriptDirectory

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = make_store(tmp_path)
    migrations = ScriptDirectory(str(Path(mlflow.store.__file__).parent / "db_migrations"))
    older = migrations.get_revision(migrations.get_current_head()).down_revision
    set_revision(database, older)
    with pytest.raises(mlflow_runs.TrackingError, match=rf"older MLflow \(revision {older}\).*mlflow db upgrade"):
        mlflow_runs.use_store(tmp_path)


def test_a_file_that_is_no_database_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(mlflow_runs.TrackingError, match=r"mlflow\.db is not an SQLite database.*move it aside"):
        mlflow_runs.use_store(tmp_path)


def test_an_alias_pointing_at_a_deleted_version_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    model = tiny_model()
    with mlflow_runs.start_run("scratch_cnn", {}, manifest=None, root=tmp_path) as run:
        version = run.log_model(model, example=np.zeros((1, 4), np.float32))
    client = mlflow.MlflowClient()
    # Deleting the version's row behind the registry's back, as a hand-edited
    # or half-restored store would: the alias is left pointing at nothing.
    database = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("DELETE FROM model_versions WHERE version = ?", (int(version),))
    assert client.get_registered_model(mlflow_runs.REGISTERED_MODEL_NAME).aliases == {"scratch_cnn": int(version)}
    with pytest.raises(predict.PredictError) as info:
        predict.load_model("scratch_cnn", root=tmp_path)
    message = str(info.value)
    assert f"points at version {version}" in message and "no longer exists" in message
    assert "dvc repro -f cnn@scratch_cnn" in message


def test_an_alias_whose_files_were_deleted_is_a_clear_error(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with mlflow_runs.start_run("scratch_cnn", {}, manifest=None, root=tmp_path) as run:
        run.log_model(tiny_model(), example=np.zeros((1, 4), np.float32))
    shutil.rmtree(tmp_path / "mlruns" / "artifacts")
    with pytest.raises(predict.PredictError, match=r"missing or damaged.*dvc repro -f cnn@scratch_cnn"):
        predict.load_model("scratch_cnn", root=tmp_path)
