"""The evaluate stage end to end: two tiny trained models, a SQLite MLflow
store in a temp project, the stage script run first inside a (pretend)
``dvc exp run`` and then as ``dvc repro`` would run it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import keras
import pandas as pd
import pytest
import tensorflow as tf
from mlflow import MlflowClient
from PIL import Image

from catsdogs.core.config import TrainParams
from catsdogs.core.errors import CatsDogsError
from catsdogs.data.inputs import make_dataset
from catsdogs.evaluation.scoring import HEADLINE_KEYS
from catsdogs.evaluation.statistics import wilson_interval
from catsdogs.models import networks
from catsdogs.tracking.mlflow_runs import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from catsdogs.training.model_stage import StageOutputs, train_and_record

from conftest import write_split_folders

pytestmark = pytest.mark.slow  # trains two models and runs the stage twice

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48  # the regularized network needs at least 46 pixels
STAGES = ("scratch_cnn", "regularized_cnn")
PARAMS_YAML = f"base:\n  seed: 3\n  image_size: {SIZE}\nevaluate:\n  bootstrap_resamples: 200\n  temperature_scaling: true\n"


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_stage_script", ROOT / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flipped(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda images, labels: (images, 1.0 - labels))


def train_tiny(project: Path, data: Path, stage: str, *, wrong_labels: bool) -> None:
    """Trains and records one tiny model as its stage would, in ``project``."""
    keras.utils.set_random_seed(3)
    settings = TrainParams(epochs=2, batch_size=8, optimizer="adam", learning_rate=1e-3)
    train = make_dataset(data / "train", image_size=SIZE, batch_size=8, shuffle=True, seed=3)
    validation = make_dataset(data / "validation", image_size=SIZE, batch_size=8, shuffle=False, seed=3)
    if wrong_labels:  # a model that learns cats are dogs: the certain loser
        train, validation = flipped(train), flipped(validation)
    builder = networks.build_scratch_cnn if stage == "scratch_cnn" else networks.build_regularized_cnn
    model = networks.compile_model(builder(SIZE), settings.optimizer, settings.learning_rate)
    train_and_record(
        stage, model, train, validation, settings,
        train_images=24, run_params={"stage": stage}, manifest=data / "manifest.csv",
        outputs=StageOutputs(project / "models" / f"{stage}.keras", project / "metrics" / "training" / f"{stage}.json", project / "plots" / stage),
    )
    keras.backend.clear_session()


def stage_argv() -> list[str]:
    return [
        "--params", "params.yaml", "--data", "data/small", "--models", "models", "--metrics-dir", "metrics/training",
        "--out-metrics", "metrics", "--reports", "reports", "--stages", ",".join(STAGES),
        "--out-statistics", "metrics/evaluation/statistics.json",
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Trains the two models, then runs evaluate inside an experiment and outside."""
    project = tmp_path_factory.mktemp("project")
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "params.yaml").write_text(PARAMS_YAML)
    data = write_split_folders(project / "data" / "small", {"train": 12, "validation": 6, "test": 6}, size=SIZE)
    script = load_script()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            mp.delenv(variable, raising=False)
        train_tiny(project, data, "scratch_cnn", wrong_labels=False)
        train_tiny(project, data, "regularized_cnn", wrong_labels=True)
        client = MlflowClient()

        mp.setenv("DVC_EXP_NAME", "try-it")
        mp.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
        script.main(stage_argv())
        in_experiment = {
            "aliases": dict(client.get_registered_model(REGISTERED_MODEL_NAME).aliases),
            "markdown": (project / "reports" / "comparison.md").read_text(),
        }
        mp.delenv("DVC_EXP_NAME")
        mp.delenv("DVC_EXP_BASELINE_REV")
        script.main(stage_argv())
        keras.backend.clear_session()
        yield {"project": project, "client": client, "in_experiment": in_experiment, "script": script}


def evaluate_runs(client):
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`dvc.stage` = 'evaluate'",
                              order_by=["attributes.start_time ASC"])
    return runs


def headline(project: Path) -> dict[str, dict]:
    return {stage: json.loads((project / "metrics" / f"{stage}.json").read_text()) for stage in STAGES}


def test_each_model_has_a_headline_metrics_file_with_the_same_keys(evaluated):
    project = evaluated["project"]
    results = headline(project)

    for stage, scores in results.items():
        assert list(scores) == list(HEADLINE_KEYS), stage
        assert all(0 <= scores[k] <= 1 for k in ("test_accuracy", "test_f1", "test_roc_auc", "best_val_accuracy"))
        assert scores["ms_per_image"] > 0 and scores["epochs"] == 2
        training = json.loads((project / "metrics" / "training" / f"{stage}.json").read_text())
        assert scores["training_seconds"] == training["training_seconds"] > 0
        assert scores["best_val_accuracy"] == training["best_val_accuracy"]
    assert [s for s, scores in results.items() if scores["champion"] is True] == ["scratch_cnn"]
    assert results["regularized_cnn"]["champion"] is False
    # The model taught the wrong labels is worse than chance; the other is not.
    assert results["regularized_cnn"]["test_accuracy"] < 0.5 < results["scratch_cnn"]["test_accuracy"]
    # Nothing else lands beside them: the training summaries have their own folder.
    assert sorted(p.name for p in (project / "metrics").glob("*.json")) == sorted(f"{s}.json" for s in STAGES)


def test_comparison_table_has_training_validation_test_and_the_chapter(evaluated):
    project = evaluated["project"]
    table = pd.read_csv(project / "reports" / "comparison.csv")
    results = headline(project)

    assert table["model"].tolist() == list(STAGES)
    assert table["training_photos"].tolist() == [24, 24]
    assert table["epochs"].tolist() == [2, 2]
    assert table["chapter_val_accuracy"].tolist() == [0.72, 0.78]
    assert table["champion"].tolist() == [True, False]
    for row in table.itertuples():
        training = json.loads((project / "metrics" / "training" / f"{row.model}.json").read_text())
        assert row.best_val_accuracy == pytest.approx(training["best_val_accuracy"])
        assert row.training_seconds == pytest.approx(training["training_seconds"])
        assert row.test_accuracy == pytest.approx(results[row.model]["test_accuracy"])
        assert row.test_f1 == pytest.approx(results[row.model]["test_f1"])
        assert row.test_roc_auc == pytest.approx(results[row.model]["test_roc_auc"])
    markdown = (project / "reports" / "comparison.md").read_text()
    assert "| **scratch_cnn** (champion) |" in markdown
    assert "**Champion: scratch_cnn**, with the best test accuracy" in markdown
    assert "now points to cats-vs-dogs version" in markdown


def test_dvc_plot_files_hold_roc_points_and_per_photo_predictions(evaluated):
    plots = evaluated["project"] / "reports" / "plots"
    for stage in STAGES:
        roc = pd.read_csv(plots / "roc" / f"{stage}.csv")
        assert list(roc.columns) == ["fpr", "tpr"]
        assert (roc.iloc[0].tolist(), roc.iloc[-1].tolist()) == ([0.0, 0.0], [1.0, 1.0])
        predictions = pd.read_csv(plots / "predictions" / f"{stage}.csv")
        assert list(predictions.columns) == ["actual", "predicted"]
        assert predictions["actual"].tolist() == ["cat"] * 6 + ["dog"] * 6
        assert set(predictions["predicted"]) <= {"cat", "dog"}
    flipped_predictions = pd.read_csv(plots / "predictions" / "regularized_cnn.csv")
    assert (flipped_predictions["actual"] != flipped_predictions["predicted"]).sum() > 6


def test_figures_are_real_pngs(evaluated):
    figures = evaluated["project"] / "reports" / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["misclassified.png", "reliability.png", "roc.png", "test_accuracy.png"]
    for png in figures.iterdir():
        with Image.open(png) as image:
            assert image.format == "PNG"
            assert image.width >= 500 and image.height >= 150


def test_evaluate_run_holds_reports_and_metrics(evaluated):
    client = evaluated["client"]
    runs = evaluate_runs(client)
    assert [r.data.tags.get("dvc.exp_name") for r in runs] == ["try-it", None]
    run = runs[-1]
    assert run.info.run_name == "evaluate" and run.info.status == "FINISHED"
    assert run.data.tags["champion.stage"] == "scratch_cnn"
    assert run.data.tags["champion.promoted"] == "true"
    assert runs[0].data.tags["champion.promoted"] == "false"
    assert run.data.params["base.image_size"] == str(SIZE)
    assert run.data.params["split.test.cat"] == "6"
    results = headline(evaluated["project"])
    assert run.data.metrics["scratch_cnn.test_accuracy"] == pytest.approx(results["scratch_cnn"]["test_accuracy"])

    def listing(path=None):
        names = []
        for item in client.list_artifacts(run.info.run_id, path):
            names += listing(item.path) if item.is_dir else [item.path]
        return names

    artifacts = set(listing())
    assert {
        "metrics/scratch_cnn.json", "metrics/regularized_cnn.json", "reports/comparison.csv", "reports/comparison.md", "reports/per_class.csv",
        "reports/classification_reports.md", "reports/figures/roc.png", "reports/figures/test_accuracy.png",
        "reports/figures/misclassified.png", "reports/plots/roc/scratch_cnn.csv",
        "reports/plots/predictions/regularized_cnn.csv",
    } <= artifacts


def test_each_model_run_gets_its_test_metrics(evaluated):
    client = evaluated["client"]
    results = headline(evaluated["project"])
    for stage in STAGES:
        version = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, stage)
        metrics = client.get_run(version.run_id).data.metrics
        assert metrics["test_accuracy"] == pytest.approx(results[stage]["test_accuracy"])
        assert metrics["test_f1"] == pytest.approx(results[stage]["test_f1"])
        assert metrics["test_roc_auc"] == pytest.approx(results[stage]["test_roc_auc"])
        assert metrics["test_ms_per_image"] == pytest.approx(results[stage]["ms_per_image"])
        assert {"test_precision", "test_recall", "best_val_accuracy"} <= set(metrics)


def test_statistics_reach_the_metrics_the_reports_and_the_runs(evaluated):
    project, client = evaluated["project"], evaluated["client"]
    stats = json.loads((project / "metrics" / "evaluation" / "statistics.json").read_text())["test_split"]
    labels = [0] * 6 + [1] * 6
    for stage in STAGES:
        predicted = pd.read_csv(project / "reports" / "plots" / "predictions" / f"{stage}.csv")["predicted"].eq("dog").astype(int)
        right = int((predicted.to_numpy() == labels).sum())
        low, high = wilson_interval(right, 12)
        assert stats[stage]["test_accuracy"] == pytest.approx(right / 12, abs=1e-6)
        assert (stats[stage]["test_accuracy_low"], stats[stage]["test_accuracy_high"]) == pytest.approx((low, high), abs=1e-6)
        assert 0 <= stats[stage]["test_ece"] <= 1 and stats[stage]["temperature"] > 0
        metrics = client.get_run(client.get_model_version_by_alias(REGISTERED_MODEL_NAME, stage).run_id).data.metrics
        assert metrics["test_accuracy_low"] == pytest.approx(low, abs=1e-6)
        assert metrics["temperature"] == pytest.approx(stats[stage]["temperature"], abs=1e-6)  # logged with the model
    step = stats["steps"]["scratch_cnn->regularized_cnn"]
    assert step["difference"] == pytest.approx(stats["regularized_cnn"]["test_accuracy"] - stats["scratch_cnn"]["test_accuracy"], abs=1e-6)
    story = pd.read_csv(project / "reports" / "story.csv")
    assert story[["before", "after"]].values.tolist() == [["scratch_cnn", "regularized_cnn"]]
    assert story["mcnemar_p"].iloc[0] == pytest.approx(step["mcnemar_p"], abs=1e-6)
    markdown = (project / "reports" / "comparison.md").read_text()
    assert "## How sure: the test split, 12 photos" in markdown
    assert "regularization helps a small CNN" in markdown and step["verdict"] in markdown
    table = pd.read_csv(project / "reports" / "comparison.csv")
    assert table["test_accuracy_low"].tolist() == pytest.approx([stats[s]["test_accuracy_low"] for s in STAGES], abs=1e-5)
    run = evaluate_runs(client)[-1]
    assert run.data.metrics["story.scratch_cnn.regularized_cnn.mcnemar_p"] == pytest.approx(step["mcnemar_p"], abs=1e-6)


def test_champion_moves_only_outside_an_experiment(evaluated):
    client = evaluated["client"]
    assert "champion" not in evaluated["in_experiment"]["aliases"]
    assert "try-it" in evaluated["in_experiment"]["markdown"]
    assert "python -m catsdogs.evaluation.champion promote --version" in evaluated["in_experiment"]["markdown"]

    champion = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "champion")
    assert champion.version == client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "scratch_cnn").version


def test_missing_model_names_the_file_and_the_stage(evaluated, monkeypatch):
    project = evaluated["project"]
    monkeypatch.chdir(project)
    argv = stage_argv()
    argv[argv.index("--stages") + 1] = "scratch_cnn,fine_tune"

    with pytest.raises(CatsDogsError, match=r"models/fine_tune\.keras.*`dvc repro fine_tune`"):
        evaluated["script"].main(argv)
