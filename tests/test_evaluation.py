"""Test-set scores on hand-made predictions, and the reports drawn from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catsdogs.core.durations import format_duration
from catsdogs.evaluation import reports
from catsdogs.evaluation.champion import Candidate, choose_champion
from catsdogs.evaluation.scoring import (
    EvaluationError,
    ModelEvaluation,
    check_stage_outputs,
    evaluate_model,
    load_stage_model,
    load_training_summary,
    roc_points,
    score_predictions,
    timed_predictions,
    training_photos,
    write_json_atomically,
)

# Three cats and five dogs. At the 0.5 threshold: cats -> cat, cat, dog;
# dogs -> dog, cat, dog, dog, cat.
LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 1])
P_DOG = np.array([0.1, 0.4, 0.6, 0.8, 0.3, 0.9, 0.7, 0.45])


def test_scores_of_a_hand_made_prediction_set():
    scores = score_predictions(LABELS, P_DOG)

    # rows: actual cat, dog; columns: predicted cat, dog
    np.testing.assert_array_equal(scores.confusion, [[2, 1], [2, 3]])
    assert scores.accuracy == pytest.approx(5 / 8)
    # cat: 2 of the 4 photos called cat are cats, 2 of the 3 cats are found
    # dog: 3 of the 4 called dog are dogs, 3 of the 5 dogs are found
    assert scores.per_class.loc["cat"].tolist() == pytest.approx([1 / 2, 2 / 3, 4 / 7, 3])
    assert scores.per_class.loc["dog"].tolist() == pytest.approx([3 / 4, 3 / 5, 2 / 3, 5])
    # weighted by support, 3 cats and 5 dogs
    assert scores.precision == pytest.approx((3 * 1 / 2 + 5 * 3 / 4) / 8)
    assert scores.recall == pytest.approx(5 / 8)
    assert scores.f1 == pytest.approx((3 * 4 / 7 + 5 * 2 / 3) / 8)
    # AUC: of the 15 (dog, cat) pairs, the dog scores higher in 12:
    # 0.8, 0.9 and 0.7 beat all 3 cats, 0.3 beats 0.1, 0.45 beats 0.1 and 0.4.
    assert scores.roc_auc == pytest.approx(12 / 15)
    assert "cat" in scores.report and "dog" in scores.report and "weighted avg" in scores.report


def test_half_counts_as_dog_and_a_column_vector_is_accepted():
    scores = score_predictions(np.array([0, 1, 0, 1]), np.array([[0.5], [0.5], [0.2], [0.9]]))

    np.testing.assert_array_equal(scores.confusion, [[1, 1], [0, 2]])


def test_scoring_refuses_one_class_and_mismatched_lengths():
    with pytest.raises(ValueError, match="both classes"):
        score_predictions(np.array([1, 1]), np.array([0.2, 0.9]))
    with pytest.raises(ValueError, match="3 labels but 2"):
        score_predictions(np.array([0, 1, 1]), np.array([0.2, 0.9]))


def test_roc_points_run_from_corner_to_corner_and_enclose_the_auc():
    roc = roc_points(LABELS, P_DOG)

    assert list(roc.columns) == ["fpr", "tpr"]
    assert roc.iloc[0].tolist() == [0, 0] and roc.iloc[-1].tolist() == [1, 1]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(12 / 15)


def test_timed_predictions_match_the_model_and_report_milliseconds():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).uniform(0, 255, (10, 4, 4, 3)).astype("float32")

    p_dog, ms = timed_predictions(model, images, batch_size=4)

    assert p_dog.shape == (10,)
    np.testing.assert_allclose(p_dog, model(images).numpy().reshape(-1), rtol=1e-5)
    assert 0 < ms < 10_000
    keras.backend.clear_session()


def test_a_diverged_model_is_a_clear_error():
    inputs = keras.Input((2, 2, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.full((12, 1), np.nan), np.zeros(1)])

    with pytest.raises(EvaluationError, match=r"augmented_cnn model predicts NaN for 4 test photos.*augmented_cnn\.learning_rate"):
        evaluate_model("augmented_cnn", model, np.ones((4, 2, 2, 3), "float32"), np.array([0, 1, 0, 1]))
    keras.backend.clear_session()


def test_missing_model_or_metrics_names_the_file_and_the_stage(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scratch_cnn.keras").write_bytes(b"")

    with pytest.raises(EvaluationError, match=r"metrics/scratch_cnn\.json not found.*`dvc repro cnn@scratch_cnn`"):
        check_stage_outputs(["scratch_cnn"], tmp_path / "models", tmp_path / "metrics")
    with pytest.raises(EvaluationError, match=r"models/fine_tune\.keras not found.*`dvc repro fine_tune`"):
        load_stage_model(tmp_path / "models", "fine_tune")


def test_unreadable_training_metrics_say_how_to_remake_them(tmp_path):
    (tmp_path / "augmented_cnn.json").write_text("{not json")

    with pytest.raises(EvaluationError, match=r"augmented_cnn\.json is not valid JSON.*dvc repro --force cnn@augmented_cnn"):
        load_training_summary(tmp_path, "augmented_cnn")


def test_training_photos_are_counted_from_the_manifest(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("split,label,filename\ntrain,cat,a\ntrain,dog,b\ntest,cat,c\nvalidation,dog,d\n")

    assert training_photos(manifest) == 2
    with pytest.raises(EvaluationError, match="build_small_dataset"):
        training_photos(tmp_path / "nowhere.csv")


def test_json_is_written_whole_and_nothing_else_is_left(tmp_path):
    target = tmp_path / "out" / "evaluation.json"

    write_json_atomically({"a": {"test_accuracy": 0.5}, "champion": "a"}, target)

    assert json.loads(target.read_text()) == {"a": {"test_accuracy": 0.5}, "champion": "a"}
    assert [p.name for p in target.parent.iterdir()] == ["evaluation.json"]


# ---- reports -----------------------------------------------------------------


def evaluation(stage: str, labels: np.ndarray, p_dog: np.ndarray, parameters: int = 1000) -> ModelEvaluation:
    return ModelEvaluation(
        stage=stage, parameters=parameters, p_dog=p_dog, scores=score_predictions(labels, p_dog),
        roc=roc_points(labels, p_dog), ms_per_image=2.5,
    )


@pytest.fixture
def two_models():
    good = evaluation("scratch_cnn", LABELS, np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6, 0.4]))  # 7 of 8
    worse = evaluation("vgg16_features", LABELS, P_DOG)  # 5 of 8
    summaries = {
        "scratch_cnn": {"epochs": 10, "training_seconds": 754.0, "best_val_accuracy": 0.74},
        "vgg16_features": {"epochs": 30, "training_seconds": 65.2, "best_val_accuracy": 0.9},
    }
    choice = choose_champion([
        Candidate("scratch_cnn", good.scores.accuracy, 754.0, 1000, "1"),
        Candidate("vgg16_features", worse.scores.accuracy, 65.2, 1000, "2"),
    ])
    table = reports.comparison_table(
        [good, worse], summaries, 3000, versions={"scratch_cnn": "1", "vgg16_features": "2"}, champion="scratch_cnn"
    )
    return {"evaluations": [good, worse], "table": table, "choice": choice}


def test_chapter_reference_is_the_documented_constant():
    assert reports.CHAPTER_VAL_ACCURACY == {
        "scratch_cnn": 0.72, "regularized_cnn": 0.78, "augmented_cnn": 0.82,
        "vgg16_features": 0.88, "vgg16_augmented": 0.90, "fine_tune": 0.96,
    }


def test_comparison_table_puts_training_validation_test_and_chapter_side_by_side(two_models):
    table = two_models["table"]

    assert list(table.columns) == list(reports.TABLE_COLUMNS)
    row = table.set_index("model").loc["scratch_cnn"]
    assert (row.training_photos, row.epochs, row.training_seconds) == (3000, 10, 754.0)
    assert (row.best_val_accuracy, row.chapter_val_accuracy) == (0.74, 0.72)
    assert row.test_accuracy == pytest.approx(7 / 8)
    assert row.test_roc_auc == pytest.approx(1.0)
    assert (row.registered_version, row.champion) == ("1", True)
    assert table.set_index("model").loc["vgg16_features", "chapter_val_accuracy"] == 0.88


def test_comparison_markdown_reads_like_the_chapter(two_models):
    text = reports.comparison_markdown(
        two_models["table"], test_photos=8, choice=two_models["choice"], champion_note="The alias moved."
    )

    assert text.startswith("# Cats vs dogs")
    assert "same 3,000 training photos" in text and "8 test photos" in text
    assert "| **scratch_cnn** (champion) | small CNN trained from scratch | 3,000 | 10 | 12 min 34 s | 0.740 | 0.72 | 0.875 |" in text
    assert "| vgg16_features | dense head on VGG16 features | 3,000 | 30 | 1 min 5 s | 0.900 | 0.88 (0.87-0.90) | 0.625 |" in text
    assert "**Champion: scratch_cnn**, with the best test accuracy, 0.875, ahead of vgg16_features at 0.625. The alias moved." in text


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.4, "4 s"), (65.2, "1 min 5 s"), (3725, "1 h 2 min"), (None, "?"), (math.nan, "?")]
)
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text


def test_misclassified_photos_come_most_confident_first():
    # wrong: index 2 (dog 0.6), 4 (cat 0.7), 7 (cat 0.55)
    order = reports.misclassified(LABELS, P_DOG, (P_DOG >= 0.5).astype(int))

    assert order.tolist() == [4, 2, 7]
    assert reports.misclassified(LABELS, P_DOG, (P_DOG >= 0.5).astype(int), limit=2).tolist() == [4, 2]


def photo_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"photo.{i}.jpg"
        Image.new("RGB", (60 + i, 40), (i * 20, 100, 150)).save(path)
        paths.append(path)
    return paths


def test_misclassified_grid_titles_say_what_was_predicted_and_what_is_true(tmp_path):
    paths = photo_files(tmp_path, len(LABELS))

    figure = reports.misclassified_figure(paths, LABELS, P_DOG, (P_DOG >= 0.5).astype(int), "vgg16_features")

    titles = [axes.get_title() for axes in figure.axes if axes.images]
    assert titles == [
        "predicted cat 0.70, actually dog", "predicted dog 0.60, actually cat", "predicted cat 0.55, actually dog",
    ]
    assert figure.get_suptitle() == "vgg16_features: 3 of 8 test photos misclassified"


def test_a_model_without_mistakes_gets_a_note_not_an_empty_grid(tmp_path):
    paths = photo_files(tmp_path, 2)
    figure = reports.misclassified_figure(paths, np.array([0, 1]), np.array([0.1, 0.9]), np.array([0, 1]), "fine_tune")

    assert not any(axes.images for axes in figure.axes)
    assert "classified all 2 test photos correctly" in figure.texts[0].get_text()


def test_roc_figure_has_a_curve_per_model_and_chance(two_models):
    figure = reports.roc_figure(two_models["evaluations"])

    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["scratch_cnn (AUC 1.000)", "vgg16_features (AUC 0.800)", "chance (AUC 0.5)"]


def test_accuracy_figure_draws_test_bars_and_chapter_marks(two_models):
    axes = reports.accuracy_figure(two_models["table"]).axes[0]

    heights = [patch.get_height() for patch in axes.patches]
    assert heights == pytest.approx([7 / 8, 5 / 8])
    chapter_lines = axes.collections[0].get_segments()
    assert [segment[0][1] for segment in chapter_lines] == [0.72, 0.88]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["scratch_cnn\n(champion)", "vgg16_features"]


def test_reports_folder_is_rebuilt_whole(two_models, tmp_path):
    paths = photo_files(tmp_path / "photos", len(LABELS))
    target = tmp_path / "reports"
    (target / "plots" / "roc").mkdir(parents=True)
    (target / "plots" / "roc" / "dropped_model.csv").write_text("stale")

    reports.write_reports(
        target, table=two_models["table"], evaluations=two_models["evaluations"], labels=LABELS,
        photo_paths=paths, choice=two_models["choice"], champion_note="The alias moved.",
    )

    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == [
        "classification_reports.md", "comparison.csv", "comparison.md",
        "figures/misclassified.png", "figures/roc.png", "figures/test_accuracy.png", "per_class.csv",
        "plots/predictions/scratch_cnn.csv", "plots/predictions/vgg16_features.csv",
        "plots/roc/scratch_cnn.csv", "plots/roc/vgg16_features.csv",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "reports"]  # no build or old folder left
    predictions = pd.read_csv(target / "plots" / "predictions" / "vgg16_features.csv")
    assert predictions.values.tolist() == [
        ["cat", "cat"], ["cat", "cat"], ["cat", "dog"], ["dog", "dog"], ["dog", "cat"], ["dog", "dog"], ["dog", "dog"], ["dog", "cat"],
    ]
    per_class = pd.read_csv(target / "per_class.csv")
    assert per_class.loc[(per_class.model == "vgg16_features") & (per_class.label == "dog"), "recall"].item() == pytest.approx(0.6)
    assert "| actual cat | 2 | 1 |" in (target / "classification_reports.md").read_text()
    for png in (target / "figures").iterdir():
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 400
