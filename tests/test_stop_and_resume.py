"""A stage stopped by SIGINT or SIGTERM (foreground or background), or
killed with -9, ends without litter or a RUNNING run, and the next run
resumes its fit from the last completed epoch to the same final weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from catsdogs.core.study import dvc_stage
from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from catsdogs.training.resume import RESUME_DIR, STATE_FILE

from conftest import ROOT, TINY_PARAMS, write_split_folders

pytestmark = pytest.mark.slow

EPOCHS = 4
# What a training summary measures of the clock, not of the fit: these differ between any two runs.
TIMING_KEYS = ("training_seconds", "images_per_second", "estimated_training_seconds")


def make_project(folder: Path, stage: str, per_class: int, **settings) -> Path:
    """A folder a stage script can run in: params.yaml and a tiny data/small."""
    folder.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params.setdefault(section, {}).update(values)
    params[stage].update({"epochs": EPOCHS, **settings})
    params["augmented_cnn"]["initial_weights"] = "none"  # no regularized_cnn model in this folder
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text("stages: {}\n")  # marks the project root
    write_split_folders(folder / "data" / "small", {"train": per_class, "validation": 6, "test": 2})
    return folder


def stage_command(stage: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "stages" / "train.py"), stage, "--params", "params.yaml", "--data", "data/small",
        "--models", "models", "--model", f"models/{stage}.keras", "--metrics", f"metrics/training/{stage}.json",
        "--plots", f"plots/{stage}",
    ]


def stage_env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_to_end(project: Path, stage: str) -> subprocess.CompletedProcess:
    done = subprocess.run(stage_command(stage), cwd=project, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def state_files(project: Path) -> list[Path]:
    return sorted((project / RESUME_DIR).glob(f"*/{STATE_FILE}"))


def epochs_saved(project: Path) -> int:
    files = state_files(project)
    if not files:
        return 0
    try:
        with np.load(files[0]) as saved:
            return json.loads(str(saved["meta"]))["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def start(project: Path, stage: str, background: bool, log: Path) -> tuple[subprocess.Popen, int]:
    """Starts the stage; returns the process to wait for and the stage's own pid.

    In the background case a non-interactive shell starts it with ``&``,
    which sets SIGINT to be ignored in it, as any shell does.
    """
    out = log.open("w")
    if not background:
        proc = subprocess.Popen(stage_command(stage), cwd=project, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
        return proc, proc.pid
    pid_file = project / "stage.pid"
    script = " ".join(f"'{arg}'" for arg in stage_command(stage)) + f" & echo $! > {pid_file}; wait $!"
    proc = subprocess.Popen(["sh", "-c", script], cwd=project, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text().strip():
            return proc, int(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError("the shell did not start the stage")


def stop_after_epochs(project: Path, stage: str, signum: int, *, epochs: int, background: bool, tmp_path: Path):
    """Starts the stage, sends ``signum`` once ``epochs`` epochs are saved;
    returns (exit code, output, seconds from signal to exit)."""
    log = tmp_path / f"{stage}-{signum}.log"
    proc, pid = start(project, stage, background, log)
    deadline = time.monotonic() + 300
    while epochs_saved(project) < epochs:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the stage saved no resume state in time"
        time.sleep(0.02)
    os.kill(pid, signum)
    sent = time.monotonic()
    proc.wait(timeout=60)
    return proc.returncode, log.read_text(), time.monotonic() - sent


def store(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return MlflowClient()


def runs_of(project: Path, stage: str):
    client = store(project)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'", order_by=["attributes.start_time ASC"])


def assert_clean_stop(project: Path, stage: str, code: int, output: str, seconds: float, signum: int) -> int:
    """The checks every stop must pass; returns the epochs the run completed."""
    name = signal.Signals(signum).name
    assert code == 128 + signum, output[-3000:]
    assert seconds < 20, f"took {seconds:.1f} s to stop"
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"{stage}: stopped by {name} after epoch "), output[-3000:]
    assert "Traceback" not in output
    # No output at all, whole or half: the stage wrote nothing it declares.
    for folder in ("models", "metrics", "plots"):
        assert not [p for p in (project / folder).rglob("*") if p.is_file()], folder
    (run,) = runs_of(project, stage)
    assert run.info.status == "KILLED"
    assert run.data.tags["stop.reason"] == name
    done = int(run.data.tags["stop.epochs_completed"])
    assert 1 <= done < EPOCHS
    assert f"after epoch {done} of {EPOCHS}" in last
    client = store(project)
    assert not client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    return done


def final_weights(project: Path, stage: str) -> list[np.ndarray]:
    return keras.saving.load_model(project / "models" / f"{stage}.keras").get_weights()


@pytest.mark.parametrize(
    ("stage", "signum", "background", "per_class", "settings"),
    [
        # Augmentation, dropout and a repeating shuffled dataset: every kind of randomness.
        ("augmented_cnn", signal.SIGTERM, False, 12, {"steps_per_epoch": 40}),
        # A finite dataset, reshuffled by a new iterator each epoch; SIGINT to a background job.
        ("regularized_cnn", signal.SIGINT, True, 120, {"steps_per_epoch": None}),
    ],
    ids=["augmented-SIGTERM-foreground", "regularized-SIGINT-background"],
)
def test_a_stopped_fit_resumes_to_the_same_weights_and_metrics(tmp_path, stage, signum, background, per_class, settings):
    whole = make_project(tmp_path / "whole", stage, per_class, **settings)
    run_to_end(whole, stage)
    stopped = make_project(tmp_path / "stopped", stage, per_class, **settings)

    code, output, seconds = stop_after_epochs(stopped, stage, signum, epochs=2, background=background, tmp_path=tmp_path)
    done = assert_clean_stop(stopped, stage, code, output, seconds, signum)
    print(f"\n{stage}: stopped {seconds:.2f} s after {signal.Signals(signum).name}, {done} epochs kept")
    assert len(state_files(stopped)) == 1

    resumed = run_to_end(stopped, stage)
    assert f"{stage}: resuming after epoch {done} of {EPOCHS}" in resumed.stdout
    # Identical, not close: the same arithmetic on the same batches.
    for a, b in zip(final_weights(whole, stage), final_weights(stopped, stage), strict=True):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(
        pd.read_csv(whole / "plots" / stage / "history.csv"), pd.read_csv(stopped / "plots" / stage / "history.csv")
    )
    expected, got = (json.loads((p / "metrics" / "training" / f"{stage}.json").read_text()) for p in (whole, stopped))
    timing = TIMING_KEYS
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}
    assert not state_files(stopped), "the resume state outlived the successful run"

    # MLflow: the stopped attempt stays KILLED; the resumed run holds every epoch.
    killed, finished = runs_of(stopped, stage)
    assert (killed.info.status, finished.info.status) == ("KILLED", "FINISHED")
    assert finished.data.tags["resume.from_run"] == killed.info.run_id
    assert finished.data.tags["resume.from_epoch"] == str(done)
    history = store(stopped).get_metric_history(finished.info.run_id, "val_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(EPOCHS))


def test_kill_9_leaves_a_state_the_next_run_resumes_and_ends_the_orphaned_run(tmp_path):
    stage = "augmented_cnn"
    project = make_project(tmp_path / "p", stage, 12, steps_per_epoch=40)
    code, output, _ = stop_after_epochs(project, stage, signal.SIGKILL, epochs=1, background=False, tmp_path=tmp_path)
    assert code == -signal.SIGKILL
    (orphan,) = runs_of(project, stage)
    assert orphan.info.status == "RUNNING"  # nothing could end it

    resumed = run_to_end(project, stage)
    assert f"{stage}: resuming after epoch" in resumed.stdout
    orphan, finished = runs_of(project, stage)
    assert orphan.info.status == "KILLED"
    assert orphan.data.tags["stop.reason"].startswith("process vanished")
    assert finished.info.status == "FINISHED"
    assert not [p for p in (project / "models").iterdir() if p.name.startswith(".")], "a temporary model file was left"


def test_a_changed_parameter_never_resumes_a_stale_fit(tmp_path):
    stage = "augmented_cnn"
    project = make_project(tmp_path / "p", stage, 12, steps_per_epoch=40)
    code, output, _ = stop_after_epochs(project, stage, signal.SIGTERM, epochs=1, background=False, tmp_path=tmp_path)
    assert code == 128 + signal.SIGTERM
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[stage]["learning_rate"] = 0.0002
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    done = run_to_end(project, stage)
    assert "resuming" not in done.stdout
    # The success removes its own state and the stale one of the old parameters.
    assert not state_files(project)
    assert not list((project / RESUME_DIR).glob(f"{stage}-*"))


def test_ctrl_c_during_dvc_repro_then_checkout_is_clean_and_a_rerun_resumes(repo_copy):
    import psutil

    from conftest import run

    stage = "scratch_cnn"
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params[stage].update({"epochs": EPOCHS, "steps_per_epoch": 40})
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", dvc_stage(stage)], repo_copy)
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "a good run"], repo_copy)
    good = keras.saving.load_model(repo_copy / "models" / f"{stage}.keras").get_weights()
    good_metrics = json.loads((repo_copy / "metrics" / "training" / f"{stage}.json").read_text())

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group, dvc and the stage.
    env = {**stage_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    dvc = subprocess.Popen(
        ["dvc", "repro", "-f", dvc_stage(stage)], cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while epochs_saved(repo_copy) < 1:
        assert dvc.poll() is None, dvc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(dvc.pid, signal.SIGINT)
    sent = time.monotonic()
    output = dvc.communicate(timeout=120)[0]
    seconds = time.monotonic() - sent
    print(f"\ndvc repro stopped {seconds:.1f} s after Ctrl-C")
    assert dvc.returncode != 0
    assert seconds < 30
    assert f"{stage}: stopped by SIGINT after epoch " in output, output[-3000:]
    killed = runs_of(repo_copy, stage)[-1]
    assert killed.info.status == "KILLED"
    assert not psutil.pid_exists(dvc.pid) or psutil.Process(dvc.pid).status() == psutil.STATUS_ZOMBIE

    # DVC deleted the stage's outputs before rerunning it: they come back without training.
    assert not (repo_copy / "metrics" / "training" / f"{stage}.json").exists()
    # (Only this stage and its upstream ran in this copy, hence the targets.)
    assert json.loads(run(["dvc", "status", "--json", dvc_stage(stage)], repo_copy).stdout)
    run(["git", "checkout", "--", "metrics", "plots"], repo_copy)
    run(["dvc", "checkout", dvc_stage(stage)], repo_copy)
    assert json.loads(run(["dvc", "status", "--json", dvc_stage(stage)], repo_copy).stdout) == {}
    for a, b in zip(good, keras.saving.load_model(repo_copy / "models" / f"{stage}.keras").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    # The interrupted fit resumes on the next forced run and ends where the good run did.
    again = run(["dvc", "repro", "-f", dvc_stage(stage)], repo_copy)
    assert f"{stage}: resuming after epoch" in again.stdout
    for a, b in zip(good, keras.saving.load_model(repo_copy / "models" / f"{stage}.keras").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    rerun_metrics = json.loads((repo_copy / "metrics" / "training" / f"{stage}.json").read_text())
    timing = TIMING_KEYS
    assert {k: v for k, v in rerun_metrics.items() if k not in timing} == {k: v for k, v in good_metrics.items() if k not in timing}
    statuses = {r.info.status for r in runs_of(repo_copy, stage)}
    assert "RUNNING" not in statuses


def test_sigterm_during_feature_extraction_keeps_finished_splits_whole_and_nothing_half_written(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params.setdefault(section, {}).update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_split_folders(project / "data" / "small", {"train": 4, "validation": 200, "test": 4})
    command = [
        sys.executable, str(ROOT / "stages" / "vgg16_bottleneck.py"), "--params", "params.yaml",
        "--data", "data/small", "--out", "data/features",
    ]
    log = tmp_path / "bottleneck.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=project, env={**stage_env(), "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while "validation: 400 photos through VGG16" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    proc.wait(timeout=60)
    seconds = time.monotonic() - sent
    output = log.read_text()
    print(f"\nvgg16_bottleneck stopped {seconds:.2f} s after SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert seconds < 20
    assert output.strip().splitlines()[-1] == "vgg16_bottleneck: stopped by SIGTERM"
    # The finished split is whole, the one in progress absent, and no temporary file is left.
    assert sorted(p.name for p in (project / "data" / "features").iterdir()) == ["train.npz"]
    from catsdogs.models.bottleneck import load_features

    features, labels = load_features(project / "data" / "features", "train")
    assert len(features) == len(labels) == 8
    assert not (project / "metrics").exists()
