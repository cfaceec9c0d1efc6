"""Random image augmentation matching the chapter's ``ImageDataGenerator``.

The chapter trained its third CNN on batches from::

    ImageDataGenerator(rescale=1./255, zoom_range=0.3, rotation_range=50,
                       width_shift_range=0.2, height_shift_range=0.2,
                       shear_range=0.2, horizontal_flip=True,
                       fill_mode='nearest')

:func:`make_augmentation` builds the same transformations from Keras 3
preprocessing layers, so they run inside a ``tf.data`` pipeline on batches of
raw 0..255 pixels (the ``rescale`` step lives in the model instead).
"""

from __future__ import annotations

import math

import keras

from catsdogs.config import AugmentationParams

# The legacy generator composed one affine matrix, rotation @ shift @ shear @
# zoom, mapping each output pixel to the input pixel it samples. Chained layers
# compose in call order, so calling them in that same order gives the same
# overall geometry (each layer resamples once, so the result is slightly
# softer than the generator's single resampling).
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


def make_augmentation(params: AugmentationParams, seed: int) -> keras.Sequential:
    """Builds the seeded random augmentation for batches of 0..255 pixels.

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
