"""Parent runs, dataset inputs and system metrics, against a SQLite store in a temp project.

Every stage run here belongs to this test process's own execution (no ``dvc``
process above it), so the runs of one project share one parent.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from catsdogs.tracking import parent_runs

from catsdogs.tracking import mlflow_runs
from conftest import GIT_ENV, write_split_folders


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A git project whose params.yaml, edited since `main`, sets scratch_cnn.epochs 1 instead of 3."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("base:\n  seed: 7\nscratch_cnn:\n  epochs: 3\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    (root / "params.yaml").write_text("base:\n  seed: 7\nscratch_cnn:\n  epochs: 1\n")
    write_split_folders(root / "data" / "small", {"train": 3, "validation": 2, "test": 1}, size=8)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(variable, raising=False)
    return root


def manifest(root: Path) -> Path:
    return root / "data" / "small" / "manifest.csv"


def test_the_runs_of_one_execution_share_a_parent_that_describes_it(project, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "one-epoch")
    children = []
    for stage in ("scratch_cnn", "evaluate"):
        with mlflow_runs.start_run(stage, {"scratch_cnn.epochs": 1}, manifest=manifest(project)) as run:
            children.append(run)
            # While a stage runs its parent is RUNNING too.
            assert mlflow.MlflowClient().get_run(run.parent_run_id).info.status == "RUNNING"

    client = mlflow.MlflowClient()
    assert children[0].parent_run_id == children[1].parent_run_id
    parent = client.get_run(children[0].parent_run_id)
    for child in children:
        assert client.get_run(child.run_id).data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
    tags = parent.data.tags
    assert parent.info.run_name == "one-epoch"
    assert tags["dvc.exp_name"] == "one-epoch" and tags["pipeline.kind"] == "dvc exp run"
    assert tags["git.commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["params.sha256"] == hashlib.sha256((project / "params.yaml").read_bytes()).hexdigest()
    assert tags["params.baseline"] == "main" and tags["params.changed"] == "scratch_cnn.epochs"
    assert parent.data.params == {"scratch_cnn.epochs": "1"}
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time == client.get_run(children[1].run_id).info.end_time
    assert MLFLOW_PARENT_RUN_ID not in tags


def test_a_failing_stage_leaves_its_parent_failed(project):
    with pytest.raises(RuntimeError, match="diverged"):
        with mlflow_runs.start_run("scratch_cnn", {}, manifest=manifest(project)) as run:
            raise RuntimeError("diverged")

    client = mlflow.MlflowClient()
    parent = client.get_run(run.parent_run_id)
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert parent.info.status == "FAILED"
    assert parent.info.run_name.startswith("repro ") and parent.data.tags["pipeline.kind"] == "dvc repro"


def test_each_run_logs_the_manifest_as_its_dataset(project):
    with mlflow_runs.start_run("scratch_cnn", {}, manifest=manifest(project)) as run:
        pass
    with mlflow_runs.start_run("evaluate", {}, manifest=manifest(project), dataset_context="evaluation") as evaluate:
        pass

    client = mlflow.MlflowClient()
    digest = hashlib.sha256(manifest(project).read_bytes()).hexdigest()[:32]
    for run_id, context in ((run.run_id, "training"), (evaluate.run_id, "evaluation")):
        (used,) = client.get_run(run_id).inputs.dataset_inputs
        assert used.dataset.name == "small-dataset" and used.dataset.digest == digest
        assert str(manifest(project)) in used.dataset.source
        tags = {tag.key: tag.value for tag in used.tags}
        assert tags["mlflow.data.context"] == context
        assert {k: v for k, v in tags.items() if k.startswith("photos")} == {
            "photos": "12",
            "photos.train.cat": "3", "photos.train.dog": "3",
            "photos.validation.cat": "2", "photos.validation.dog": "2",
            "photos.test.cat": "1", "photos.test.dog": "1",
        }


def test_system_metrics_are_logged_while_a_stage_runs(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    with mlflow_runs.start_run("scratch_cnn", {}, manifest=manifest(project)) as run:
        time.sleep(3)

    metrics = mlflow.MlflowClient().get_run(run.run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * os.cpu_count()
    assert metrics["system/system_memory_usage_megabytes"] > 0
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2, history


def test_an_experiments_parent_is_found_by_its_name(project, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "wider-head")
    with mlflow_runs.start_run("evaluate", {}, manifest=manifest(project)) as run:
        mlflow_runs.set_run_tags(run.parent_run_id, {"champion.version": "4"})

    assert mlflow_runs.experiment_parent_tags("wider-head")["champion.version"] == "4"
    assert mlflow_runs.experiment_parent_tags("no-such-experiment") is None


def test_two_processes_creating_one_parent_keep_the_oldest(project, monkeypatch):
    from catsdogs.tracking.execution import Execution

    experiment_id = mlflow_runs.use_experiment(project)
    client = mlflow.MlflowClient()
    execution = Execution(key="host:1:2.00", started=2.0, command="dvc repro", experiment=None)
    # The other process creates its parent between this one's search and its create.
    earlier = client.create_run(experiment_id, tags={parent_runs.EXECUTION_TAG: execution.key}).info.run_id
    real_find = parent_runs.find_parent
    searches = []

    def search_that_missed_it_once(*args):
        searches.append(args)
        return None if len(searches) == 1 else real_find(*args)

    monkeypatch.setattr(parent_runs, "find_parent", search_that_missed_it_once)
    chosen = parent_runs.open_parent(
        client, experiment_id, project=project, params_file=project / "params.yaml",
        params_sha256="x", shared={}, execution=execution,
    )

    assert chosen == earlier and len(searches) == 2
    live = client.search_runs([experiment_id], filter_string=f"tags.`{parent_runs.EXECUTION_TAG}` = '{execution.key}'")
    assert [r.info.run_id for r in live] == [earlier]
