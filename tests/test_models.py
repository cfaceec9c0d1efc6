"""Tests of the model builders: sizes, preprocessing, saving, seeding."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from catsdogs.core.config import OPTIMIZERS
from catsdogs.core.errors import CatsDogsError
from catsdogs.models import networks


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_parameter_counts_at_150_match_the_chapter() -> None:
    scratch = networks.build_scratch_cnn(150)
    assert scratch.count_params() == 19_024_513
    assert networks.build_regularized_cnn(150).count_params() == 3_706_113
    assert networks.build_classifier_head((4, 4, 512)).count_params() == 4_457_985
    assert scratch.output_shape == (None, 1)
    assert scratch.get_layer("p_dog").activation is keras.activations.sigmoid


def test_models_scale_raw_pixels_themselves() -> None:
    model = networks.build_regularized_cnn(46)
    rescale = model.layers[1]
    assert isinstance(rescale, keras.layers.Rescaling)
    assert rescale.scale == pytest.approx(1 / 255)
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [0.3, 0.3]
    p = model.predict(pixels(3, 46), verbose=0)
    assert p.shape == (3, 1) and np.all((p > 0) & (p < 1))


@pytest.mark.parametrize(
    ("name", "minimum", "build"),
    [
        ("scratch_cnn", 22, networks.build_scratch_cnn),
        ("regularized_cnn", 46, networks.build_regularized_cnn),
    ],
)
def test_too_small_images_fail_before_building(name, minimum, build) -> None:
    assert networks.min_image_size(name) == minimum
    assert build(minimum).output_shape == (None, 1)  # the minimum itself works
    with pytest.raises(CatsDogsError, match=rf"base\.image_size: {minimum - 1} .*at least {minimum}"):
        build(minimum - 1)


def test_vgg16_minimum_and_unknown_names() -> None:
    assert networks.min_image_size("augmented_cnn") == networks.min_image_size("regularized_cnn")
    assert networks.min_image_size("vgg16") == 32
    with pytest.raises(CatsDogsError, match="base.image_size"):
        networks.check_image_size("vgg16", 31)
    with pytest.raises(ValueError, match="unknown model"):
        networks.min_image_size("resnet")


def test_same_seed_gives_the_same_initial_weights() -> None:
    def weights(seed: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(seed)
        return networks.build_regularized_cnn(46).get_weights()

    a, b, c = weights(1), weights(1), weights(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "sgd"])
def test_compile_and_one_training_epoch(optimizer: str) -> None:
    keras.utils.set_random_seed(0)
    model = networks.compile_model(networks.build_scratch_cnn(32), optimizer, 1e-3)
    assert type(model.optimizer).__name__.lower() == optimizer
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    data = tf.data.Dataset.from_tensor_slices((pixels(8, 32), np.array([0, 1] * 4, np.float32))).batch(4)
    history = model.fit(data, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert set(history.history) == {"loss", "accuracy"}


def test_every_optimizer_params_yaml_allows_is_known() -> None:
    assert set(networks.OPTIMIZER_CLASSES) == set(OPTIMIZERS)


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(CatsDogsError, match="unknown optimizer 'adamw'"):
        networks.compile_model(networks.build_scratch_cnn(32), "adamw", 1e-3)


def test_imagenet_preprocessing_layer_matches_keras_applications() -> None:
    x = pixels(2, 8)
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    got = np.asarray(networks.imagenet_preprocessing()(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def vgg16_base(size: int) -> keras.Model:
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))


def test_vgg16_classifier_with_rescale_chains_base_and_head() -> None:
    base = vgg16_base(32)
    head = networks.build_classifier_head(base.output_shape[1:])
    model = networks.build_vgg16_classifier(base, head, 32, "rescale")
    x = pixels(2, 32)
    expected = head.predict(base.predict(x / 255, verbose=0), verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert model.count_params() == base.count_params() + head.count_params()


def test_vgg16_classifier_refuses_bad_settings() -> None:
    base = vgg16_base(32)
    head = networks.build_classifier_head(base.output_shape[1:])
    with pytest.raises(CatsDogsError, match="unknown VGG16 preprocessing"):
        networks.build_vgg16_classifier(base, head, 32, "torch")
    with pytest.raises(ValueError, match="base takes"):
        networks.build_vgg16_classifier(base, head, 64, "rescale")
    with pytest.raises(CatsDogsError, match="base.image_size"):
        networks.build_vgg16_classifier(base, head, 16, "rescale")


def test_saved_models_load_back_and_predict_the_same(tmp_path: Path) -> None:
    base = vgg16_base(32)
    head = networks.build_classifier_head(base.output_shape[1:])
    vgg = networks.build_vgg16_classifier(base, head, 32, "imagenet")
    built = {
        "vgg16": (vgg, 32),
        "scratch": (networks.build_scratch_cnn(32), 32),
        "regularized": (networks.build_regularized_cnn(46), 46),
    }
    for name, (model, size) in built.items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        x = pixels(3, size, seed=1)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    loaded_vgg = keras.saving.load_model(tmp_path / "vgg16.keras")
    # Only built-in layers: the file loads where catsdogs is not installed (MLflow serving).
    assert type(loaded_vgg.get_layer("imagenet_preprocessing")) is keras.layers.Conv2D


def test_start_from_copies_an_earlier_stages_weights_or_says_what_to_run(tmp_path) -> None:
    keras.utils.set_random_seed(5)
    trained = networks.build_regularized_cnn(48)
    path = tmp_path / "regularized_cnn.keras"
    with pytest.raises(networks.WarmStartError, match=r"augmented_cnn.initial_weights=regularized_cnn: .*regularized_cnn.keras not found; run `dvc repro cnn@regularized_cnn`"):
        networks.start_from(trained, "augmented_cnn.initial_weights", "regularized_cnn", path)
    trained.save(path)

    keras.utils.set_random_seed(6)
    model = networks.build_regularized_cnn(48)
    tags = networks.start_from(model, "augmented_cnn.initial_weights", "regularized_cnn", path)
    for ours, theirs in zip(model.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert list(tags) == ["augmented_cnn.initial_weights.sha256"] and len(tags["augmented_cnn.initial_weights.sha256"]) == 64

    # Trained at another image size: the dense layer's shape differs.
    with pytest.raises(networks.WarmStartError, match=r"does not fit this model.*dvc repro cnn@regularized_cnn"):
        networks.start_from(networks.build_regularized_cnn(64), "augmented_cnn.initial_weights", "regularized_cnn", path)
