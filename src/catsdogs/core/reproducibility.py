"""One switch for reproducible training on the CPU."""

from __future__ import annotations

import keras


def make_deterministic(seed: int) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras.

    On the CPU this alone gives the same initial weights, shuffles,
    augmentations and metrics for the same seed (the augmentation runs one
    batch at a time for that reason, see ``inputs``). TensorFlow's
    ``enable_op_determinism`` is not used: it turns off prefetching of the
    augmented pipeline, costing about 13 s an epoch here for no gain on CPU.

    Args:
        seed: the ``base.seed`` of params.yaml.
    """
    keras.utils.set_random_seed(seed)
