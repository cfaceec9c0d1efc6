"""Tests of the composed augmentation that stands in for ImageDataGenerator."""

from __future__ import annotations

import math
from dataclasses import replace

import keras
import numpy as np
import pytest

from catsdogs.core.config import AugmentationParams
from catsdogs.data.augmentation import AffineAugmentation, layered_augmentation, make_augmentation, shear_factor

CHAPTER = AugmentationParams(
    zoom=0.3,
    rotation_degrees=50,
    width_shift=0.2,
    height_shift=0.2,
    shear=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
)
LAYERS = ("rotation", "shift", "shear", "zoom", "flip")


def batch(seed: int = 0) -> np.ndarray:
    """Random photos with many 0 and 255 pixels, where overshoot would show."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, (6, 32, 32, 3)) * 255).astype(np.float32)


def smooth_photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Photos that vary smoothly from pixel to pixel, as photos mostly do:
    sums of random waves at least 12 pixels long, within 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    photos = np.zeros((n, size, size, 3), np.float32)
    for i in range(n):
        for c in range(3):
            for _ in range(3):
                fy, fx = rng.uniform(-1 / 12, 1 / 12, 2)
                photos[i, :, :, c] += np.cos(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    return (photos + 3) / 6 * 255


def chained_with_keras_draws(images: np.ndarray, params: AugmentationParams, seed: int) -> tuple[np.ndarray, dict]:
    """The five Keras layers applied one after the other, each with a draw
    of its own; returns the result and those draws in AffineAugmentation's terms."""
    layers = layered_augmentation(params, seed)
    x = keras.ops.convert_to_tensor(images)
    draws = {}
    for name in LAYERS:
        layer = layers.get_layer(name)
        transformation = layer.get_random_transformation(x, training=True)
        draws[name] = transformation
        x = layer.transform_images(x, transformation, training=True)
    height, width = images.shape[1:3]
    translations = np.asarray(draws["shift"]["translations"])
    shears = np.asarray(draws["shear"]["shear_factor"])
    assert np.all(shears[:, 0] == 0)  # no horizontal shear, as in the chapter
    return np.asarray(x), {
        "angle": np.asarray(draws["rotation"]["angle"]),
        "shift_x": translations[:, 0] / width,
        "shift_y": translations[:, 1] / height,
        "shear": shears[:, 1],
        "zoom_x": np.asarray(draws["zoom"]["width_zoom"])[:, 0],
        "zoom_y": np.asarray(draws["zoom"]["height_zoom"])[:, 0],
        "flip": np.asarray(draws["flip"]["flips"]).reshape(-1),
    }


def ramps(n: int, size: int) -> np.ndarray:
    """Photos whose every channel is a linear ramp: bilinear resampling
    reproduces a ramp exactly, so one resampling or four give the same
    image wherever the geometry is the same."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([x * 2.5, y * 2.5, (x + y) * 1.25], -1)[None].repeat(n, 0)


def inside_every_layer(images: np.ndarray, seed: int) -> np.ndarray:
    """Pixels that every chained layer sampled from inside its input: they
    stay 1 when the same chain, with black fill, runs on white photos.
    Elsewhere a layer filled from its border, which one pass fills differently
    (and there the composed transform does what the generator did)."""
    white, _ = chained_with_keras_draws(np.ones_like(images), replace(CHAPTER, fill_mode="constant"), seed)
    return np.all(white > 0.999, axis=-1)


def test_one_composed_transform_gives_the_five_layers_image():
    """Same draws, same photos: within 0.01 of a gray level, on every pixel
    every layer took from inside its input."""
    images = ramps(16, 96)
    chained, draws = chained_with_keras_draws(images, CHAPTER, seed=11)
    composed = np.asarray(AffineAugmentation(CHAPTER, seed=0).transform(images, draws))
    inside = inside_every_layer(images, seed=11)
    assert inside.mean() > 0.5  # most pixels are compared
    assert draws["flip"].any() and not draws["flip"].all()
    assert np.ptp(draws["angle"]) > 50  # the draws cover the range, not one corner of it
    assert np.abs(composed - images).mean() > 10  # the photos did move
    assert np.abs(composed - chained)[inside].max() < 0.01


def test_on_smooth_photos_one_resampling_is_a_little_sharper_than_four():
    """On photos with detail the chain's four bilinear resamplings blur a
    little more than one: 1.5 gray levels apart on average (the photos
    themselves move by about 58)."""
    images = smooth_photos(16, 96)
    chained, draws = chained_with_keras_draws(images, CHAPTER, seed=11)
    composed = np.asarray(AffineAugmentation(CHAPTER, seed=0).transform(images, draws))
    difference = np.abs(composed - chained)[inside_every_layer(images, seed=11)]
    assert difference.mean() < 2.0
    assert np.percentile(difference, 99) < 8.0
    assert np.abs(composed - images).mean() > 40


def test_the_composed_transform_is_not_equal_to_a_wrong_order():
    """The comparison above can fail: a flip applied first instead of last
    (the same draws in another order) moves pixels by far more."""
    images = ramps(16, 96)
    chained, draws = chained_with_keras_draws(images, CHAPTER, seed=11)
    flipped = draws["flip"]
    mirrored = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    wrong = np.asarray(AffineAugmentation(CHAPTER, seed=0).transform(mirrored, {**draws, "flip": np.zeros_like(flipped)}))
    assert np.abs(wrong - chained)[flipped][inside_every_layer(images, seed=11)[flipped]].mean() > 10


def test_draws_cover_the_chapters_ranges():
    draws = {k: np.asarray(v) for k, v in AffineAugmentation(CHAPTER, seed=1).draw(4000).items()}
    for name, low, high in (("angle", -50, 50), ("shift_x", -0.2, 0.2), ("shift_y", -0.2, 0.2),
                            ("zoom_x", 0.7, 1.3), ("zoom_y", 0.7, 1.3)):
        values = draws[name]
        span = high - low
        assert values.min() >= low and values.max() <= high, name
        assert values.min() < low + 0.01 * span and values.max() > high - 0.01 * span, name  # all of it
    slope = math.tan(math.radians(0.2))  # shear_range=0.2 degrees
    assert np.abs(draws["shear"]).max() <= slope + 1e-9 and np.abs(draws["shear"]).max() > 0.98 * slope
    assert 0.45 < draws["flip"].mean() < 0.55
    assert abs(np.corrcoef(draws["zoom_x"], draws["zoom_y"])[0, 1]) < 0.1  # independent, like zx and zy


def test_the_layered_reference_uses_the_chapters_ranges():
    layers = {layer.name: layer for layer in layered_augmentation(CHAPTER, seed=1).layers}
    assert list(layers) == [*LAYERS, "clip_to_pixel_range"]
    assert layers["rotation"].factor == pytest.approx((-50 / 360, 50 / 360))
    assert (layers["shift"].height_factor, layers["shift"].width_factor) == (0.2, 0.2)
    assert layers["shear"].y_factor == pytest.approx((-0.00349, 0.00349), abs=1e-5)
    assert layers["shear"].x_factor == (0.0, 0.0)
    assert (layers["zoom"].height_factor, layers["zoom"].width_factor) == (0.3, 0.3)
    assert layers["flip"].mode == "horizontal"
    for name in ("rotation", "shift", "shear", "zoom"):
        assert layers[name].fill_mode == "nearest"
        assert layers[name].interpolation == "bilinear"
    seeds = [layer.seed for layer in layers.values() if hasattr(layer, "seed")]
    assert len(set(seeds)) == len(seeds) == 5  # no two layers share random numbers


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


def test_switched_off_transformations_do_nothing() -> None:
    none = AugmentationParams(
        zoom=0, rotation_degrees=0, width_shift=0, height_shift=0, shear=0, horizontal_flip=False
    )
    images = batch()
    np.testing.assert_array_equal(np.asarray(make_augmentation(none, seed=0)(images, training=True)), images)

    flip_only = AugmentationParams(
        zoom=0, rotation_degrees=0, width_shift=0, height_shift=0, shear=0, horizontal_flip=True
    )
    out = np.asarray(make_augmentation(flip_only, seed=0)(images, training=True))
    for got, image in zip(out, images):
        assert np.array_equal(got, image) or np.array_equal(got, image[:, ::-1])


def test_fill_mode_decides_the_uncovered_pixels() -> None:
    white = np.full((1, 32, 32, 3), 255.0, np.float32)
    zoomed_out = {"angle": [0.0], "shift_x": [0.0], "shift_y": [0.0], "shear": [0.0],
                  "zoom_x": [1.3], "zoom_y": [1.3], "flip": [False]}
    constant = AffineAugmentation(replace(CHAPTER, fill_mode="constant"), seed=0).transform(white, zoomed_out)
    nearest = AffineAugmentation(CHAPTER, seed=0).transform(white, zoomed_out)
    assert np.asarray(constant).min() == 0  # black borders
    np.testing.assert_array_equal(np.asarray(nearest), white)


def augmentation_statistics(outputs: np.ndarray, photo: np.ndarray) -> tuple[float, float]:
    """How far the augmented copies of one photo move from it on average,
    and how much each pixel varies from copy to copy."""
    return float(np.abs(outputs - photo).mean()), float(outputs.std(axis=0).mean())


def test_augmentation_is_statistically_the_chapters_generator():
    """400 augmented copies of one photo (ramps, so that how far a pixel
    changes says how far it moved), ours and ImageDataGenerator's: they
    change the photo as much (within 3 %), vary each pixel as much (within
    3 %) and average to the same image (within 4 gray levels). Half the
    rotation range (10 % less change) would be told apart."""
    import tensorflow as tf

    photo = ramps(1, 48)[0]
    np.random.seed(0)  # the legacy generator draws from NumPy's global generator
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=50, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
        zoom_range=0.3, horizontal_flip=True, fill_mode="nearest",
    )
    theirs = np.stack([generator.random_transform(photo) for _ in range(400)])
    copies = np.repeat(photo[None], 400, axis=0)
    ours = np.asarray(make_augmentation(CHAPTER, seed=5)(copies, training=True))
    (their_move, their_spread), (our_move, our_spread) = (augmentation_statistics(x, photo) for x in (theirs, ours))
    assert our_move == pytest.approx(their_move, rel=0.03)
    assert our_spread == pytest.approx(their_spread, rel=0.03)
    assert np.abs(ours.mean(axis=0) - theirs.mean(axis=0)).mean() < 4
    half = np.asarray(make_augmentation(replace(CHAPTER, rotation_degrees=25), seed=5)(copies, training=True))
    assert augmentation_statistics(half, photo)[0] < 0.95 * their_move
