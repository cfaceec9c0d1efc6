"""Tests of the Keras augmentation that stands in for ImageDataGenerator."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from catsdogs.augmentation import make_augmentation, shear_factor
from catsdogs.config import AugmentationParams

CHAPTER = AugmentationParams(
    zoom=0.3,
    rotation_degrees=50,
    width_shift=0.2,
    height_shift=0.2,
    shear=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
)


def batch(seed: int = 0) -> np.ndarray:
    """Random photos with many 0 and 255 pixels, where overshoot would show."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, (6, 32, 32, 3)) * 255).astype(np.float32)


def test_layers_match_the_chapters_generator() -> None:
    layers = {layer.name: layer for layer in make_augmentation(CHAPTER, seed=1).layers}
    assert list(layers) == ["rotation", "shift", "shear", "zoom", "flip", "clip_to_pixel_range"]
    assert isinstance(layers["rotation"], keras.layers.RandomRotation)
    assert layers["rotation"].factor == pytest.approx((-50 / 360, 50 / 360))
    assert isinstance(layers["shift"], keras.layers.RandomTranslation)
    assert (layers["shift"].height_factor, layers["shift"].width_factor) == (0.2, 0.2)
    assert isinstance(layers["shear"], keras.layers.RandomShear)
    assert layers["shear"].y_factor == pytest.approx((-0.00349, 0.00349), abs=1e-5)
    assert layers["shear"].x_factor == (0.0, 0.0)
    assert isinstance(layers["zoom"], keras.layers.RandomZoom)
    assert layers["flip"].mode == "horizontal"
    for name in ("rotation", "shift", "shear", "zoom"):
        assert layers[name].fill_mode == "nearest"
        assert layers[name].interpolation == "bilinear"
    seeds = [layer.seed for layer in layers.values() if hasattr(layer, "seed")]
    assert len(set(seeds)) == len(seeds) == 5  # no two layers share random numbers


def test_zoom_is_drawn_per_axis_in_the_generators_range() -> None:
    zoom = make_augmentation(CHAPTER, seed=1).get_layer("zoom")
    draws = zoom.get_random_transformation(np.zeros((500, 8, 8, 3), np.float32))
    height, width = np.asarray(draws["height_zoom"]), np.asarray(draws["width_zoom"])
    for z in (height, width):
        assert z.min() >= 0.7 and z.max() <= 1.3
        assert z.min() < 0.75 and z.max() > 1.25  # the whole of [0.7, 1.3]
    assert not np.allclose(height, width)  # independent, like zx and zy


def test_shear_range_is_read_as_degrees() -> None:
    assert shear_factor(0.2) == pytest.approx(math.tan(math.radians(0.2)))
    assert shear_factor(45) == pytest.approx(1.0)
    assert shear_factor(0) == 0


def test_augmentation_changes_photos_but_keeps_shape_and_pixel_range() -> None:
    images = batch()
    out = np.asarray(make_augmentation(CHAPTER, seed=3)(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    changed = [not np.allclose(a, b) for a, b in zip(out, images)]
    assert all(changed)


def test_same_seed_same_output_and_a_new_draw_every_call() -> None:
    images = batch()
    a, b = make_augmentation(CHAPTER, seed=7), make_augmentation(CHAPTER, seed=7)
    first = np.asarray(a(images, training=True))
    np.testing.assert_array_equal(first, np.asarray(b(images, training=True)))
    assert not np.allclose(first, np.asarray(a(images, training=True)))
    other = make_augmentation(CHAPTER, seed=8)(images, training=True)
    assert not np.allclose(first, np.asarray(other))


def test_switched_off_transformations_are_left_out() -> None:
    none = AugmentationParams(
        zoom=0, rotation_degrees=0, width_shift=0, height_shift=0, shear=0, horizontal_flip=False
    )
    augment = make_augmentation(none, seed=0)
    assert [layer.name for layer in augment.layers] == ["clip_to_pixel_range"]
    images = batch()
    np.testing.assert_array_equal(np.asarray(augment(images, training=True)), images)

    flip_only = AugmentationParams(
        zoom=0, rotation_degrees=0, width_shift=0, height_shift=0, shear=0, horizontal_flip=True
    )
    out = np.asarray(make_augmentation(flip_only, seed=0)(images, training=True))
    for got, image in zip(out, images):
        assert np.array_equal(got, image) or np.array_equal(got, image[:, ::-1])


def test_constant_fill_mode_reaches_every_geometric_layer() -> None:
    params = AugmentationParams(fill_mode="constant", horizontal_flip=False)
    layers = make_augmentation(params, seed=0).layers
    assert {layer.fill_mode for layer in layers if hasattr(layer, "fill_mode")} == {"constant"}
