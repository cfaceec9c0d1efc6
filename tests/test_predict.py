"""Tests of `catsdogs predict` / `catsdogs request` and the functions behind them.

A hand-weighted 32x32 classifier (warm photos are cats, cool ones dogs, like
conftest's synthetic photos) is saved as a .keras file and registered in a
SQLite MLflow store in a temp project, under a stage alias and ``champion``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from catsdogs.serving import cli

from catsdogs.serving import predict

from catsdogs.data.inputs import load_split_arrays
from catsdogs.serving.predict import PredictError, Prediction
from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.mlflow_runs import TrackingError

from conftest import real_photos, synthetic_photo, write_split_folders

SIZE = 32
STAGE = "scratch_cnn"


def warm_cool_classifier(size: int = SIZE) -> keras.Model:
    """P(dog) rises with blue and falls with red: right on conftest's synthetic photos."""
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_dog")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("p_dog").set_weights([np.array([[-4.0], [0.0], [4.0]]), np.array([0.0])])
    return model


def register_classifier(project: Path, stage: str, model: keras.Model, champion: bool) -> str:
    """Logs ``model`` as the project's stage would, optionally moving ``champion`` to it."""
    example = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
    with mlflow_runs.start_run(stage, {"base.image_size": model.input_shape[1]}, manifest=None, root=project) as run:
        run.log_summary({"best_val_accuracy": 0.9})
        version = run.log_model(model, example=example)
    if champion:
        mlflow.MlflowClient().set_registered_model_alias(mlflow_runs.REGISTERED_MODEL_NAME, "champion", version)
    return version


def new_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text("stages: {}\n")
    return folder


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A project whose store holds the classifier as @scratch_cnn and @champion."""
    project = new_project(tmp_path_factory.mktemp("project"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        model = warm_cool_classifier()
        version = register_classifier(project, STAGE, model, champion=True)
    keras_file = project / "models" / f"{STAGE}.keras"
    keras_file.parent.mkdir()
    model.save(keras_file)
    return {"project": project, "version": version, "model": model, "keras_file": keras_file}


@pytest.fixture
def in_project(registered, monkeypatch):
    """Runs the test from inside the registered project, as a user would."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(registered["project"])
    return registered["project"]


@pytest.fixture
def photos(tmp_path) -> Path:
    """3 cats and 3 dogs in nested folders, plus files that are not photos."""
    root = tmp_path / "photos"
    (root / "more" / "deeper").mkdir(parents=True)
    for i in range(3):
        synthetic_photo("cat", i, size=48).save(root / f"cat.{i}.jpg")
    synthetic_photo("dog", 0, size=60).save(root / "more" / "dog.0.png")
    synthetic_photo("dog", 1, size=40).save(root / "more" / "deeper" / "dog.1.JPEG")
    synthetic_photo("dog", 2, size=48).save(root / "more" / "dog.2.bmp")
    (root / "notes.txt").write_text("not a photo, and not listed: wrong suffix\n")
    return root


def broken_photo(folder: Path) -> Path:
    path = folder / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    return path


# --- decoding -------------------------------------------------------------------


def test_photos_are_decoded_exactly_like_the_training_photos(tmp_path):
    split = write_split_folders(tmp_path / "small", {"test": 3}, size=48) / "test"
    for n, (label, data) in enumerate(real_photos(2)):
        (split / label / f"real.{n}.jpg").write_bytes(data)

    images, _, paths = load_split_arrays(split, image_size=SIZE)

    for image, path in zip(images, paths):
        np.testing.assert_array_equal(predict.load_image(path, (SIZE, SIZE)), image)


def test_any_photo_type_becomes_rgb_at_the_requested_size(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 70), 128, np.uint8), "L").save(gray)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (50, 30), (10, 20, 30, 0)).save(rgba)
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 40), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])

    for path in (gray, rgba, gif):
        pixels = predict.load_image(path, (24, 16))
        assert pixels.shape == (24, 16, 3) and pixels.dtype == np.float32
    assert np.all(predict.load_image(gray, (8, 8)) == 128)
    assert predict.load_image(gif, (8, 8))[..., 0].min() > 200  # the first frame, red


# --- finding photos -------------------------------------------------------------


def test_folders_are_searched_recursively_for_photos(photos):
    found = predict.find_images([photos])

    assert [p.relative_to(photos).as_posix() for p in found] == [
        "cat.0.jpg", "cat.1.jpg", "cat.2.jpg", "more/deeper/dog.1.JPEG", "more/dog.0.png", "more/dog.2.bmp",
    ]


def test_files_are_kept_as_given_even_when_not_photos(photos, tmp_path):
    notes, missing = photos / "notes.txt", tmp_path / "missing.jpg"

    assert predict.find_images([notes, photos / "cat.1.jpg", missing]) == [notes, photos / "cat.1.jpg", missing]


def test_a_folder_without_photos_is_a_usage_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.md").write_text("no photos\n")

    with pytest.raises(PredictError, match=r"no photos found in .*empty.*\.jpg"):
        predict.find_images([tmp_path / "empty"])


# --- predicting -----------------------------------------------------------------


def test_labels_follow_keras_accuracy_threshold():
    assert Prediction(Path("a.jpg"), 0.5).label == "cat"
    assert Prediction(Path("a.jpg"), 0.5001).label == "dog"
    assert Prediction(Path("a.jpg"), None, "broken").label == "error"


def test_batched_predictions_equal_the_model_on_each_photo(registered, photos):
    loaded = predict.LoadedModel(registered["model"], "test", (SIZE, SIZE))
    files = predict.find_images([photos])

    results = predict.predict_files(loaded, files, batch_size=4)  # two batches: 4 + 2

    expected = registered["model"].predict(np.stack([predict.load_image(f, (SIZE, SIZE)) for f in files]), verbose=0)
    assert [r.file for r in results] == files
    np.testing.assert_allclose([r.p_dog for r in results], expected[:, 0], rtol=1e-6)
    assert [r.label for r in results] == ["cat"] * 3 + ["dog"] * 3
    assert all(r.error is None for r in results)


def test_unreadable_files_get_an_error_and_the_others_are_predicted(registered, photos, tmp_path):
    loaded = predict.LoadedModel(registered["model"], "test", (SIZE, SIZE))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    files = [photos / "cat.0.jpg", broken_photo(tmp_path), tmp_path / "missing.jpg", empty, photos / "more" / "dog.0.png"]

    results = predict.predict_files(loaded, files, batch_size=2)

    assert [r.label for r in results] == ["cat", "error", "error", "error", "dog"]
    assert "not a readable image" in results[1].error and "[Op:" not in results[1].error
    assert results[2].error == "cannot read the file: No such file or directory"
    assert "empty" in results[3].error.lower()
    assert results[1].p_dog is None


# --- loading models -------------------------------------------------------------


def test_a_keras_file_is_loaded_with_its_input_size(registered):
    loaded = predict.load_model(str(registered["keras_file"]))

    assert loaded.image_size == (SIZE, SIZE)
    assert loaded.source == str(registered["keras_file"])
    sample = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(loaded.model.predict(sample, verbose=0), registered["model"].predict(sample, verbose=0))


def test_a_missing_keras_file_says_how_to_make_it(tmp_path):
    with pytest.raises(PredictError, match=r"nothere\.keras not found; `make run`"):
        predict.load_model(str(tmp_path / "nothere.keras"))


def test_a_keras_file_that_is_no_model_is_a_clear_error(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"not a zip")

    with pytest.raises(PredictError, match=r"model\.keras is not a Keras model .* `make run`"):
        predict.load_model(str(tmp_path / "model.keras"))


def test_a_path_that_is_not_a_keras_file_is_refused(tmp_path):
    with pytest.raises(PredictError, match=r"alias .* or a \.keras file"):
        predict.load_model(str(tmp_path / "model.h5"))


def test_an_alias_loads_the_registered_version(in_project, registered):
    champion = predict.load_model("champion")
    stage = predict.load_model(STAGE)

    version = registered["version"]
    assert champion.source == f"models:/cats-vs-dogs@champion (version {version}, trained by {STAGE})"
    assert stage.source == f"models:/cats-vs-dogs@{STAGE} (version {version})"
    assert champion.image_size == (SIZE, SIZE)
    sample = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(champion.model.predict(sample, verbose=0), registered["model"].predict(sample, verbose=0))


def test_an_unknown_alias_lists_the_aliases_there_are(in_project):
    with pytest.raises(PredictError, match=r"alias 'fine_tune' not found .* aliases: champion, scratch_cnn\."):
        predict.load_model("fine_tune")


def test_a_project_without_a_store_says_to_run_the_pipeline(tmp_path, monkeypatch):
    project = new_project(tmp_path / "fresh")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project)

    with pytest.raises(TrackingError, match=r"no MLflow store at .*mlflow\.db.*run `make run`"):
        predict.load_model("champion")
    assert not (project / "mlruns").exists()  # looking must not create an empty store


def test_a_store_without_registered_models_has_no_aliases(tmp_path, monkeypatch):
    project = new_project(tmp_path / "untrained")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow_runs.use_experiment(project)
    monkeypatch.chdir(project)

    with pytest.raises(PredictError, match="aliases: none yet"):
        predict.load_model("champion")


# --- the command line -----------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_predict_prints_a_table_of_labels_and_p_dog(in_project, photos, capsys):
    status, out, err = run_cli(capsys, "predict", str(photos / "cat.0.jpg"), str(photos / "more"))

    lines = out.splitlines()
    assert status == 0
    assert lines[0].split() == ["file", "label", "P(dog)"]
    assert len(lines) == 1 + 1 + 3  # header, the cat, the 3 dogs under more/
    assert lines[1].split()[:2] == [str(photos / "cat.0.jpg"), "cat"]
    assert all(line.split()[1] == "dog" for line in lines[2:])
    assert all(0 <= float(line.split()[2]) <= 1 for line in lines[1:])
    assert "models:/cats-vs-dogs@champion" in err and "32x32" in err


def test_predict_csv_marks_failed_files_and_exits_1(in_project, registered, photos, tmp_path, capsys):
    broken = broken_photo(tmp_path)
    status, out, err = run_cli(
        capsys, "predict", str(photos), str(broken), "--model", str(registered["keras_file"]), "--format", "csv"
    )

    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 1
    assert [r["label"] for r in rows] == ["cat"] * 3 + ["dog"] * 3 + ["error"]
    assert rows[-1]["file"] == str(broken) and rows[-1]["p_dog"] == ""
    assert "not a readable image" in rows[-1]["error"]
    assert f"{broken}: not a readable image" in err
    assert all(0 < float(r["p_dog"]) < 1 and r["error"] == "" for r in rows[:-1])


def test_predict_json_has_one_object_per_photo(in_project, photos, capsys):
    status, out, _ = run_cli(capsys, "predict", str(photos / "more"), "--model", STAGE, "--format", "json")

    rows = json.loads(out)
    assert status == 0
    assert [set(r) for r in rows] == [{"file", "label", "p_dog", "error"}] * 3
    assert all(r["label"] == "dog" and r["p_dog"] > 0.5 and r["error"] is None for r in rows)


def test_an_unknown_alias_is_a_usage_error(in_project, photos, capsys):
    status, out, err = run_cli(capsys, "predict", str(photos), "--model", "fine_tune")

    assert status == 2
    assert out == ""
    assert "aliases: champion, scratch_cnn" in err


def test_no_store_is_a_usage_error(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(new_project(tmp_path / "fresh"))

    status, _, err = run_cli(capsys, "predict", str(photos))

    assert status == 2
    assert "run `make run`" in err


def test_bad_arguments_are_usage_errors(capsys):
    for argv in (["predict"], ["predict", "x.jpg", "--format", "xml"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
    assert "--format" in capsys.readouterr().err


def test_request_writes_the_serving_body_at_the_models_size(in_project, photos, capsys):
    files = [photos / "cat.1.jpg", photos / "more" / "dog.0.png"]
    status, out, _ = run_cli(capsys, "request", *map(str, files))

    body = json.loads(out)
    assert status == 0
    assert list(body) == ["inputs"]
    pixels = np.array(body["inputs"])
    assert pixels.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(pixels, np.stack([predict.load_image(f, (SIZE, SIZE)) for f in files]))


def test_request_with_an_explicit_size_needs_no_model(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.chdir(new_project(tmp_path / "fresh"))  # no store: --size must not need one
    status, out, _ = run_cli(capsys, "request", str(photos / "cat.2.jpg"), "--size", "20")

    assert status == 0
    assert np.array(json.loads(out)["inputs"]).shape == (1, 20, 20, 3)


def test_request_for_an_unreadable_photo_fails_clearly(tmp_path, photos, capsys):
    status, out, err = run_cli(capsys, "request", str(broken_photo(tmp_path)), "--size", "20")

    assert status == 1
    assert out == ""
    assert "broken.jpg: not a readable image" in err


def test_ui_without_a_store_says_to_run_the_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(new_project(tmp_path / "fresh"))

    status, _, err = run_cli(capsys, "ui", "--port", "5999")

    assert status == 2
    assert "no MLflow store" in err and "make run" in err
