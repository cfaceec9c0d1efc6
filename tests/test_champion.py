"""Choosing the champion (best test accuracy, ties to the cheaper model),
finding each stage's registered version, and promoting by hand, against a
SQLite MLflow store in a temp project."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs.evaluation import champion

from catsdogs.evaluation.champion import Candidate, ChampionError, choose_champion
from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.mlflow_runs import REGISTERED_MODEL_NAME, RegisteredVersion

ROOT = Path(__file__).resolve().parents[1]


def test_best_test_accuracy_wins_whatever_it_cost():
    choice = choose_champion([
        Candidate("scratch_cnn", 0.71, training_seconds=60, parameters=19_000_000),
        Candidate("fine_tune", 0.962, training_seconds=3000, parameters=19_000_000),
        Candidate("vgg16_augmented", 0.941, training_seconds=900, parameters=19_000_000),
    ])

    assert choice.winner.stage == "fine_tune"
    assert choice.tied == ()
    assert choice.reason == "the best test accuracy, 0.962, ahead of vgg16_augmented at 0.941"


def test_a_tie_goes_to_the_model_that_trained_faster():
    choice = choose_champion([
        Candidate("fine_tune", 0.95, training_seconds=3000, parameters=10),
        Candidate("vgg16_features", 0.95, training_seconds=120, parameters=20),
        Candidate("scratch_cnn", 0.70, training_seconds=10, parameters=1),
    ])

    assert choice.winner.stage == "vgg16_features"
    assert [c.stage for c in choice.tied] == ["fine_tune"]
    assert choice.reason == (
        "the best test accuracy, 0.950, tied with fine_tune; a tie goes to the cheaper model, "
        "and vgg16_features trained in 120 s against 3000 s for fine_tune"
    )


def test_equal_training_time_goes_to_fewer_parameters_then_pipeline_order():
    by_size = choose_champion([Candidate("a", 0.9, 100, 5_000), Candidate("b", 0.9, 100, 3_000)])
    assert by_size.winner.stage == "b"
    assert "then the fewer parameters, 3,000" in by_size.reason

    assert choose_champion([Candidate("a", 0.9, 100, 5), Candidate("b", 0.9, 100, 5)]).winner.stage == "a"


def test_accuracies_equal_but_for_float_noise_tie():
    # 0.1 + 0.2 != 0.3 in floating point, yet the same share of photos is right.
    choice = choose_champion([Candidate("a", 0.3, 50, 1), Candidate("b", 0.1 + 0.2, 10, 1)])

    assert choice.winner.stage == "b"


def test_no_candidates_is_a_bug():
    with pytest.raises(ValueError):
        choose_champion([])


def fingerprints(**by_run: dict) -> Callable[[str], dict]:
    return lambda run_id: by_run[run_id]


def test_the_stage_alias_is_used_when_its_run_wrote_these_metrics():
    versions = [RegisteredVersion("1", "r1", "scratch_cnn", ("scratch_cnn",))]
    metrics = fingerprints(r1={"training_seconds": 12.34, "best_val_accuracy": 0.7, "val_loss": 1.0})

    found = champion.stage_version("scratch_cnn", {"training_seconds": 12.34, "best_val_accuracy": 0.7}, versions, metrics)

    assert found == versions[0]


def test_an_alias_moved_by_a_temp_experiment_does_not_fool_the_lookup():
    # v2 matches the workspace's metrics file; a `dvc exp run --temp` then made
    # v3 and moved @scratch_cnn to it; v1 is older still.
    versions = [
        RegisteredVersion("1", "r1", "scratch_cnn"),
        RegisteredVersion("2", "r2", "scratch_cnn"),
        RegisteredVersion("3", "r3", "scratch_cnn", ("scratch_cnn",)),
        RegisteredVersion("4", "r4", "fine_tune", ("fine_tune",)),
    ]
    summary = {"training_seconds": 20.5, "best_val_accuracy": 0.75}
    metrics = fingerprints(
        r1={"training_seconds": 20.5, "best_val_accuracy": 0.75},  # same numbers, but older than r2
        r2={"training_seconds": 20.5, "best_val_accuracy": 0.75},
        r3={"training_seconds": 8.0, "best_val_accuracy": 0.70},
        r4=summary,  # another stage's run is never taken
    )

    assert champion.stage_version("scratch_cnn", summary, versions, metrics).version == "2"
    assert champion.stage_version("scratch_cnn", {"training_seconds": 1.0}, versions, metrics) is None


def test_promotion_note_says_what_happened_and_how_to_promote():
    choice = choose_champion([Candidate("fine_tune", 0.96, 10, 1, version="7")])
    assert "now points to cats-vs-dogs version 7" in champion.promotion_note(choice, None)

    note = champion.promotion_note(choice, "wider-head")
    assert "`dvc exp run` (experiment wider-head)" in note
    assert "not moved" in note and "python -m catsdogs.evaluation.champion promote --version 7" in note

    unregistered = choose_champion([Candidate("fine_tune", 0.96, 10, 1, version=None)])
    assert "dvc repro --force fine_tune" in champion.promotion_note(unregistered, None)


# ---- against a real (SQLite) store --------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project whose store holds three versions: one per stage, each with its alias."""
    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        for stage, seconds in (("scratch_cnn", 30.0), ("regularized_cnn", 40.0), ("fine_tune", 900.0)):
            with mlflow_runs.start_run(stage, {"x": 1}, manifest=None, root=root) as run:
                run.log_summary({"training_seconds": seconds, "best_val_accuracy": 0.8})
            client = MlflowClient()
            if not client.search_registered_models(f"name = '{REGISTERED_MODEL_NAME}'"):
                client.create_registered_model(REGISTERED_MODEL_NAME)
            # A registered version needs no real model to test aliases.
            version = client.create_model_version(
                REGISTERED_MODEL_NAME, f"runs:/{run.run_id}/model", run_id=run.run_id, tags={"dvc.stage": stage}
            )
            client.set_registered_model_alias(REGISTERED_MODEL_NAME, stage, version.version)
    return root


@pytest.fixture
def store(project, monkeypatch) -> MlflowClient:
    """The project's store, as the champion command finds it from the project folder, without a champion."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project)
    mlflow_runs.use_store(project)
    client = MlflowClient()
    if "champion" in client.get_registered_model(REGISTERED_MODEL_NAME).aliases:
        client.delete_registered_model_alias(REGISTERED_MODEL_NAME, "champion")
    return client


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(REGISTERED_MODEL_NAME).aliases.items()}


def test_registered_versions_carry_their_stage_and_aliases(store):
    versions = mlflow_runs.registered_versions()

    assert [(v.version, v.stage, v.aliases) for v in versions] == [
        ("1", "scratch_cnn", ("scratch_cnn",)),
        ("2", "regularized_cnn", ("regularized_cnn",)),
        ("3", "fine_tune", ("fine_tune",)),
    ]
    assert mlflow_runs.run_metrics(versions[2].run_id)["training_seconds"] == 900.0


def test_promote_by_version_and_by_alias(store, capsys):
    champion.main(["promote", "--version", "2"])
    assert aliases(store)["champion"] == "2"
    assert "cats-vs-dogs@champion -> version 2 (regularized_cnn)" in capsys.readouterr().out

    champion.main(["promote", "--alias", "@fine_tune"])
    assert aliases(store)["champion"] == "3"


def test_unknown_version_lists_the_existing_ones(store):
    with pytest.raises(ChampionError) as caught:
        champion.main(["promote", "--version", "9"])

    assert str(caught.value) == (
        "cats-vs-dogs has no version 9; existing versions: 1 (scratch_cnn; @scratch_cnn), "
        "2 (regularized_cnn; @regularized_cnn), 3 (fine_tune; @fine_tune)"
    )
    assert "champion" not in aliases(store)
    with pytest.raises(ChampionError, match="no alias @vgg16; existing aliases: @fine_tune, @regularized_cnn, @scratch_cnn"):
        champion.main(["promote", "--alias", "vgg16"])


def test_show_lists_versions_with_validation_and_test_accuracy(store, capsys):
    mlflow_runs.log_run_metrics(mlflow_runs.registered_versions()[0].run_id, {"test_accuracy": 0.7125})
    champion.main(["promote", "--version", "1"])
    capsys.readouterr()

    champion.main(["show"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "stage", "best_val_acc", "test_acc", "experiment", "aliases"]
    assert lines[1].split() == ["1", "scratch_cnn", "0.800", "0.713", "-", "@champion", "@scratch_cnn"]
    assert lines[3].split() == ["3", "fine_tune", "0.800", "-", "@fine_tune"]


def test_promote_with_nothing_registered_says_to_train_first(store, monkeypatch):
    monkeypatch.setattr(mlflow_runs, "registered_versions", lambda: [])

    with pytest.raises(ChampionError, match=r"no version of cats-vs-dogs is registered in sqlite:///.*`dvc repro`"):
        champion.promote(version="1")


def test_promote_without_a_store_names_the_missing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    with pytest.raises(mlflow_runs.TrackingError, match="does not exist"):
        champion.promote(version="1", root=tmp_path)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow  # a fresh interpreter importing TensorFlow and MLflow
def test_the_command_line_prints_the_error_without_a_traceback(store, project):
    inside = project / "src"  # the store is found from anywhere in the project
    inside.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "catsdogs.evaluation.champion", "promote", "--version", "42"],
        cwd=inside, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true"},
    )

    assert done.returncode == 1
    assert "champion: error: cats-vs-dogs has no version 42; existing versions: 1 (scratch_cnn" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def experiment_store(tmp_path, monkeypatch) -> MlflowClient:
    """The workspace registered scratch_cnn (v1) and fine_tune (v2) with their aliases and
    champion v2; experiment wider-head then registered scratch_cnn v3 and its evaluate chose it."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    client = None
    for stage, experiment in (("scratch_cnn", None), ("fine_tune", None), ("scratch_cnn", "wider-head")):
        if experiment:
            monkeypatch.setenv("DVC_EXP_NAME", experiment)
        with mlflow_runs.start_run(stage, {}, manifest=None, root=root) as run:
            client = MlflowClient()
            if not client.search_registered_models(f"name = '{REGISTERED_MODEL_NAME}'"):
                client.create_registered_model(REGISTERED_MODEL_NAME)
            tags = {"dvc.stage": stage, **({"dvc.exp_name": experiment} if experiment else {})}
            version = client.create_model_version(
                REGISTERED_MODEL_NAME, f"runs:/{run.run_id}/model", run_id=run.run_id, tags=tags
            )
            if experiment is None:
                client.set_registered_model_alias(REGISTERED_MODEL_NAME, stage, version.version)
            else:
                mlflow_runs.set_run_tags(run.parent_run_id, {"champion.version": version.version})
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, "champion", "2")
    return client


def test_promoting_an_experiment_moves_its_stages_aliases_and_the_champion(experiment_store, capsys):
    assert aliases(experiment_store) == {"scratch_cnn": "1", "fine_tune": "2", "champion": "2"}

    champion.main(["promote", "--experiment", "wider-head"])

    assert aliases(experiment_store) == {"scratch_cnn": "3", "fine_tune": "2", "champion": "3"}
    out = capsys.readouterr().out
    assert "cats-vs-dogs@scratch_cnn -> version 3 (scratch_cnn)" in out
    assert "cats-vs-dogs@champion -> version 3 (scratch_cnn)" in out
    assert mlflow_runs.registered_versions()[2].experiment == "wider-head"


def test_promoting_an_unknown_experiment_names_those_that_exist(experiment_store):
    with pytest.raises(ChampionError, match="experiment 'no-such' registered no model .* with registered models: wider-head"):
        champion.main(["promote", "--experiment", "no-such"])
    assert aliases(experiment_store) == {"scratch_cnn": "1", "fine_tune": "2", "champion": "2"}
