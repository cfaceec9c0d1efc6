"""One switch for reproducible training on the CPU."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_deterministic(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and asks TensorFlow for deterministic ops.

    With it, the same seed gives the same initial weights, the same shuffles
    and augmentations and the same metrics on the same machine. On a GPU some
    ops are slower in deterministic mode; TensorFlow raises at the first op
    that has no deterministic kernel rather than silently differing.

    Args:
        seed: the ``base.seed`` of params.yaml.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
