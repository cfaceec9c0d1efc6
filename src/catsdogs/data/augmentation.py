"""Random image augmentation matching the chapter's ``ImageDataGenerator``.

The chapter trained its third CNN on batches from::

    ImageDataGenerator(rescale=1./255, zoom_range=0.3, rotation_range=50,
                       width_shift_range=0.2, height_shift_range=0.2,
                       shear_range=0.2, horizontal_flip=True,
                       fill_mode='nearest')

:func:`make_augmentation` draws the same random rotation, shifts, shear, zoom
and flip for every photo, composes them into one affine matrix and resamples
each photo once (one pass over the pixels, like the generator, instead of
one per transformation). It runs inside a ``tf.data`` pipeline on batches of
raw 0..255 pixels (the ``rescale`` step lives in the model instead).
:func:`layered_augmentation` is the same augmentation as five Keras
preprocessing layers applied one after the other: the reference the
composed transform is tested against.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from catsdogs.core.config import AugmentationParams

# The legacy generator composed one affine matrix, rotation @ shift @ shear @
# zoom, mapping each output pixel to the input pixel it samples. Chained layers
# compose in call order, so calling them in that same order gives the same
# overall geometry; AffineAugmentation multiplies the same matrices in the
# same order and resamples once, as the generator did.
_INTERPOLATION = "bilinear"  # the generator's default, interpolation_order=1


def shear_factor(shear_degrees: float) -> float:
    """Converts ``ImageDataGenerator``'s ``shear_range`` to a ``RandomShear`` factor.

    ``shear_range`` is a shear angle in degrees: keras-team/keras#8868 switched
    it from radians to degrees in December 2017, months before the book, and
    keras-preprocessing and tf.keras kept degrees (``apply_affine_transform``
    calls ``np.deg2rad(shear)``). ``RandomShear``
    wants the shear as a slope, the tangent of that angle. The chapter's
    ``shear_range=0.2`` is therefore +-0.2 degrees, a slope of at most 0.0035:
    under half a pixel at 150x150, so faithfully reproduced it is almost a
    no-op.

    Args:
        shear_degrees: largest shear angle, in degrees.

    Returns:
        The ``RandomShear`` factor: the sampled slope lies in [-factor, factor].
    """
    return math.tan(math.radians(shear_degrees))


def layered_augmentation(params: AugmentationParams, seed: int) -> keras.Sequential:
    """The augmentation as five Keras preprocessing layers, one resampling each.

    Slower than :func:`make_augmentation` (each layer transforms the whole
    image) and slightly softer (four bilinear resamplings instead of one);
    kept as the reference that the composed transform is checked against.

    Transformations whose parameter is 0 (or ``horizontal_flip`` false) are
    left out. Call the result with ``training=True``; it keeps the shape and
    dtype of its input, and its output stays within 0..255.

    Args:
        params: the ``augmentation`` section of params.yaml.
        seed: base seed; each layer gets its own seed derived from it, so two
            layers never draw the same random numbers.

    Returns:
        A ``keras.Sequential`` of preprocessing layers.
    """
    # fill_value only matters for fill_mode "constant"; 0 is black, as in the
    # generator's default cval=0.
    geometric = {"fill_mode": params.fill_mode, "interpolation": _INTERPOLATION}
    layers: list[keras.layers.Layer] = []
    if params.rotation_degrees:
        # The generator draws the angle uniformly in [-rotation_range,
        # rotation_range] degrees; RandomRotation's factor is a fraction of a
        # full turn.
        layers.append(
            keras.layers.RandomRotation(
                params.rotation_degrees / 360.0, seed=seed + 1, name="rotation", **geometric
            )
        )
    if params.height_shift or params.width_shift:
        # Both draw a shift uniformly in [-f, f] times the height or width.
        layers.append(
            keras.layers.RandomTranslation(
                height_factor=params.height_shift,
                width_factor=params.width_shift,
                seed=seed + 2,
                name="shift",
                **geometric,
            )
        )
    if params.shear:
        # The legacy shear matrix [[1, -sin s, 0], [0, cos s, 0]] acts on
        # (row, column): rows slide in proportion to the column, which is
        # RandomShear's y_factor. RandomShear shears about the top-left corner
        # rather than the centre; at the chapter's 0.2 degrees the difference
        # is below half a pixel.
        layers.append(
            keras.layers.RandomShear(
                x_factor=0.0,
                y_factor=shear_factor(params.shear),
                seed=seed + 3,
                name="shear",
                **geometric,
            )
        )
    if params.zoom:
        # The generator draws the horizontal and vertical zoom independently
        # in [1 - zoom, 1 + zoom] (values above 1 zoom out); RandomZoom draws
        # 1 + U(-f, f) for each axis when width_factor is given.
        layers.append(
            keras.layers.RandomZoom(
                height_factor=params.zoom,
                width_factor=params.zoom,
                seed=seed + 4,
                name="zoom",
                **geometric,
            )
        )
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 5, name="flip"))
    # Bilinear weights are rounded in float32, so a 255 pixel can come out as
    # 255.00002; ReLU(max_value=255) clips back to the pixel range (and makes
    # the Sequential non-empty when every transformation is switched off).
    layers.append(keras.layers.ReLU(max_value=255.0, name="clip_to_pixel_range"))
    return keras.Sequential(layers, name="augmentation")


class AffineAugmentation(keras.layers.Layer):
    """The chapter's random rotation, shifts, shear, zoom and flip in one resampling.

    Each photo gets its own draw of every transformation, with the ranges and
    conventions of the Keras layers in :func:`layered_augmentation` (angle in
    degrees, shifts in pixels, shear as a slope, zoom per axis, flip with
    probability 1/2). The five matrices are multiplied into one, which maps
    every output pixel to the input point it samples, and
    ``keras.ops.image.affine_transform`` (one projective transform, as each
    Keras layer uses) resamples the photo bilinearly once, filling uncovered
    pixels by ``fill_mode``.
    """

    def __init__(self, params: AugmentationParams, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.params = params
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def draw(self, batch_size: int) -> dict:
        """One random draw of every transformation per photo, each of shape (batch_size,).

        Keys: ``angle`` (degrees, counter-clockwise), ``shift_x`` and
        ``shift_y`` (fractions of the width and height), ``shear`` (slope),
        ``zoom_x`` and ``zoom_y`` (above 1 zooms out), ``flip`` (bool).
        """
        p = self.params

        def uniform(bound: float, centre: float = 0.0):
            return keras.random.uniform(
                (batch_size,), minval=centre - bound, maxval=centre + bound, seed=self.generator
            )

        flip = keras.random.uniform((batch_size,), seed=self.generator) < 0.5
        return {
            "angle": uniform(p.rotation_degrees),
            "shift_x": uniform(p.width_shift),
            "shift_y": uniform(p.height_shift),
            "shear": uniform(shear_factor(p.shear)),
            "zoom_x": uniform(p.zoom, 1.0),
            "zoom_y": uniform(p.zoom, 1.0),
            "flip": ops.logical_and(flip, p.horizontal_flip),
        }

    def call(self, images, training: bool = True):
        if not training:
            return images
        return self.transform(images, self.draw(ops.shape(images)[0]))

    def transform(self, images, draws: dict):
        """Applies given draws (as :meth:`draw` returns them) to a batch of photos."""
        shape = ops.shape(images)
        matrix = affine_matrix(draws, height=shape[1], width=shape[2])
        out = ops.image.affine_transform(
            images, matrix, interpolation=_INTERPOLATION, fill_mode=self.params.fill_mode, fill_value=0.0
        )
        # Bilinear weights are rounded in float32: keep the pixel range exact.
        return ops.clip(out, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape


def affine_matrix(draws: dict, *, height: int, width: int):
    """The ``affine_transform`` rows of rotation @ shift @ shear @ zoom @ flip.

    Args:
        draws: per-photo transformations as :meth:`AffineAugmentation.draw`
            returns them.
        height, width: of the photos, in pixels.

    Returns:
        (batch, 8) float32: ``[a0, a1, a2, b0, b1, b2, 0, 0]`` per photo, the
        output pixel (x, y) sampling the input at (a0 x + a1 y + a2,
        b0 x + b1 y + b2).
    """
    angle = ops.convert_to_tensor(draws["angle"], "float32") * (math.pi / 180.0)
    batch = ops.shape(angle)[0]
    zero, one = ops.zeros((batch,)), ops.ones((batch,))
    w, h = ops.cast(width, "float32"), ops.cast(height, "float32")
    # Rotation and zoom act about the photo's centre, as in the Keras layers.
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0

    def rows(a0, a1, a2, b0, b1, b2):
        return ops.stack([ops.stack([a0, a1, a2], -1), ops.stack([b0, b1, b2], -1),
                          ops.stack([zero, zero, one], -1)], 1)

    cos, sin = ops.cos(angle), ops.sin(angle)
    rotation = rows(cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    dx = ops.convert_to_tensor(draws["shift_x"], "float32") * w
    dy = ops.convert_to_tensor(draws["shift_y"], "float32") * h
    shift = rows(one, zero, -dx, zero, one, -dy)
    # RandomShear's y_factor: rows slide in proportion to the column, about
    # the top-left corner.
    shear = rows(one, zero, zero, ops.convert_to_tensor(draws["shear"], "float32"), one, zero)
    zx = ops.convert_to_tensor(draws["zoom_x"], "float32")
    zy = ops.convert_to_tensor(draws["zoom_y"], "float32")
    zoom = rows(zx, zero, cx * (1.0 - zx), zero, zy, cy * (1.0 - zy))
    sign = ops.where(ops.convert_to_tensor(draws["flip"]), -one, one)
    flip = rows(sign, zero, ops.where(ops.convert_to_tensor(draws["flip"]), w - 1.0, zero), zero, one, zero)
    combined = rotation @ shift @ shear @ zoom @ flip
    return ops.concatenate([ops.reshape(combined, (batch, 9))[:, :6], ops.zeros((batch, 2))], axis=1)


def make_augmentation(params: AugmentationParams, seed: int) -> AffineAugmentation:
    """Builds the seeded random augmentation for batches of 0..255 pixels.

    Call the result with ``training=True``; it keeps the shape of its input,
    returns float32 within 0..255, and draws new transformations on every
    call (the same sequence for the same seed).

    Args:
        params: the ``augmentation`` section of params.yaml.
        seed: seed of the random draws.
    """
    return AffineAugmentation(params, seed, name="augmentation")
