"""The DVC pipeline end to end in a throw-away copy of the repository, with a
sample of the real photos and tiny models."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from catsdogs.core.study import dvc_stage
from catsdogs.core.config import TRAINING_STAGES
from catsdogs.evaluation.scoring import HEADLINE_KEYS
from catsdogs.speed.benchmark import stage_timings
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME

from conftest import code_files, run

pytestmark = pytest.mark.slow


def test_repro_builds_the_small_dataset_from_the_archive(repo_copy):
    run(["dvc", "repro", "build_small_dataset"], repo_copy)
    manifest = pd.read_csv(repo_copy / "data" / "small" / "manifest.csv")
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    assert counts == {(s, l): n for s, n in (("train", 16), ("validation", 8), ("test", 8)) for l in ("cat", "dog")}
    assert manifest["sha256"].is_unique
    for row in manifest.itertuples():
        assert (repo_copy / "data" / "small" / row.split / row.label / row.filename).is_file()
    metrics = json.loads((repo_copy / "metrics" / "dataset.json").read_text())
    assert "train" in json.dumps(metrics)
    # Nothing changed: a second repro has nothing to do.
    again = run(["dvc", "repro", "build_small_dataset"], repo_copy)
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower()


def test_experiment_runs_land_in_the_project_store_and_status_is_precise(repo_copy):
    run(["dvc", "repro"], repo_copy)
    # Every stage recorded its cost where make bench reads it, and DVC shows it.
    timings = stage_timings(repo_copy / "metrics" / "timings")
    assert set(timings) >= set(TRAINING_STAGES) | {"download", "build_small_dataset", "evaluate"}, timings
    assert all(t["wall_seconds"] > 0 and t["peak_memory_mib"] > 0 for t in timings.values()), timings
    # A stage that only copies files may stay near 30 MiB; one that loads
    # TensorFlow and trains a model cannot: the figure is the stage's own peak.
    assert all(timings[stage]["peak_memory_mib"] > 200 for stage in TRAINING_STAGES), timings
    # dvc metrics show: one row per model, every row with the same columns.
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    files = shown[""]["data"]
    assert sorted(files) == sorted(f"metrics/{stage}.json" for stage in TRAINING_STAGES), sorted(files)
    assert all(list(f["data"]) == list(HEADLINE_KEYS) for f in files.values()), files
    assert sum(f["data"]["champion"] for f in files.values()) == 1
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "lock"], repo_copy)

    # A temp-dir experiment runs in .dvc/tmp/exps/..., yet logs to the project's store.
    run(["dvc", "exp", "run", "--temp", "-n", "one-epoch", "-S", "scratch_cnn.epochs=1", "cnn@scratch_cnn"], repo_copy)
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`dvc.exp_name` = 'one-epoch' and tags.`dvc.stage` = 'scratch_cnn'")
    assert len(runs) == 1
    assert runs[0].data.tags["dvc.stage"] == "scratch_cnn"
    assert runs[0].data.tags["precision"] == "float32" and runs[0].data.tags["device"].startswith("CPU")
    assert runs[0].data.params["scratch_cnn.epochs"] == "1"
    assert len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) == 1

    # Editing one stage's epochs makes only that stage (and nothing upstream) stale.
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["scratch_cnn"]["epochs"] = 3
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], repo_copy).stdout)
    stale = set(status)
    assert "cnn@scratch_cnn" in stale
    assert not stale & ({dvc_stage(m) for m in TRAINING_STAGES} - {"cnn@scratch_cnn"} | {"download", "build_small_dataset"}), stale

    # Retraining the VGG16 head on features never recomputes the features.
    params["vgg16_features"]["learning_rate"] = 0.001
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = set(json.loads(run(["dvc", "status", "--json"], repo_copy).stdout))
    assert "vgg16_features" in stale
    assert "vgg16_bottleneck" not in stale


def test_dvc_exp_run_applies_the_book_profile_as_the_profile_says(repo_copy):
    # Only the download stage runs: this checks that DVC takes every -S value
    # of the profile and writes params.yaml so that it loads as the book.
    from catsdogs.core.config import load_params
    from catsdogs.core.profile_params import load_params_with_profile, load_profile
    from catsdogs.speed.profiles import set_arguments

    expected = load_params_with_profile(repo_copy / "params.yaml", "book")
    run(["dvc", "exp", "run", "-n", "book-check", *set_arguments(load_profile("book")), "download"], repo_copy)
    assert load_params(repo_copy / "params.yaml") == expected


def test_repo_copies_leave_out_the_record_of_a_previous_run(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "new_module.py").write_text("")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    for made in ("metrics/scratch_cnn.json", "metrics/timings/download.json", "plots/scratch_cnn/history.csv"):
        (tmp_path / made).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / made).write_text("{}")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "metrics.py").write_text("")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "dvc.yaml", "dvc.lock", "metrics", "plots"], tmp_path)
    assert sorted(code_files(tmp_path)) == ["dvc.yaml", "new_module.py", "src/metrics.py"]
