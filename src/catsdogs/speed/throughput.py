"""Measuring how fast this machine runs the pipeline's pieces.

Shared by the duration estimate (a few steps of each model, before a long
run) and by ``make bench`` (more steps, real photos, the chapter's way side
by side). Speeds are images per second; a first call is always made and
thrown away, because it traces the TensorFlow graph.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from catsdogs.core.classes import LABELS
from catsdogs.data.inputs import photo_files
from catsdogs.models import networks
from catsdogs.models.bottleneck import unfreeze_from


def timed(work: Callable[[], object]) -> float:
    """Wall seconds of one call of ``work``."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def random_photos(n: int, image_size: int, seed: int = 0) -> np.ndarray:
    """``n`` random 0..255 float32 RGB images: speed does not depend on content."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, image_size, image_size, 3)).astype(np.float32)


class _StepClock(keras.callbacks.Callback):
    """Notes the time at the end of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter())


def train_rate(model: keras.Model, dataset: tf.data.Dataset, *, steps: int, batch_size: int, warmup: int = 2) -> float:
    """Images per second of ``steps`` training steps of a compiled model.

    Timed between the ends of steps inside one ``fit``, so neither tracing
    the graph nor starting the input pipeline (filling a shuffle buffer,
    decoding into a cache) is counted.

    Args:
        model: compiled.
        dataset: repeating batches of (images, labels).
        steps: steps timed, after ``warmup`` untimed ones.
        batch_size: images per step.
    """
    clock = _StepClock()
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return steps * batch_size / (clock.times[-1] - clock.times[warmup - 1])


def in_memory_batches(image_size: int, batch_size: int, augment: keras.layers.Layer | None = None) -> tf.data.Dataset:
    """Repeating batches of random photos, optionally augmented in the pipeline as the stages do."""
    images = random_photos(batch_size * 2, image_size)
    labels = (np.arange(len(images)) % 2).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def predict_rate(model: keras.Model, images: np.ndarray, batch_size: int, repeats: int = 3) -> float:
    """Images per second of ``model.predict`` over ``images``: the median of
    ``repeats`` timings, because on a shared machine one of them now and then
    runs at half speed (measured: VGG16 at 6.2 instead of 12.4 photos/s)."""
    model.predict(images[:batch_size], batch_size=batch_size, verbose=0)
    seconds = [timed(lambda: model.predict(images, batch_size=batch_size, verbose=0)) for _ in range(repeats)]
    return len(images) / float(np.median(seconds))


def dataset_rate(dataset: tf.data.Dataset, batches: int) -> float:
    """Images per second of pulling ``batches`` batches out of a pipeline."""
    iterator = iter(dataset)
    next(iterator)
    count = 0

    def pull() -> None:
        nonlocal count
        for _ in range(batches):
            count += int(next(iterator)[0].shape[0])

    seconds = timed(pull)
    return count / seconds


def vgg16_convolutional_base(image_size: int) -> keras.Model:
    """VGG16 without its top and without pretrained weights: as fast as with them."""
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))


def vgg16_model(image_size: int, *, trainable_from: str | None, preprocessing: str = "imagenet") -> keras.Model:
    """A VGG16 classifier like the stages', base frozen or trainable from a layer."""
    base = vgg16_convolutional_base(image_size)
    base.trainable = False
    if trainable_from is not None:
        unfreeze_from(base, trainable_from)
    head = networks.build_classifier_head(base.output_shape[1:])
    return networks.build_vgg16_classifier(base, head, image_size, preprocessing)


def conv_flops_per_image(model: keras.Model) -> float:
    """Floating-point operations of one image through every Conv2D of ``model``.

    Two operations (a multiply and an add) per kernel weight per output
    pixel; nested models are walked.
    """
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops_per_image(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw, in_channels, _ = layer.kernel.shape
            total += 2.0 * height * width * kh * kw * in_channels * out_channels
    return total


def matmul_flops_per_second(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 10) -> float:
    """This machine's dense float32 matrix-multiply rate: the best of
    ``repeats`` square products of each size.

    Several sizes because the fastest one depends on the CPU's caches, and
    a shared machine's rate wanders between runs: the best is the closest
    to what the hardware can do.
    """
    best = 0.0
    for size in sizes:
        a = tf.random.uniform((size, size), dtype=tf.float32, seed=1)
        b = tf.random.uniform((size, size), dtype=tf.float32, seed=2)
        tf.matmul(a, b).numpy()
        seconds = min(timed(lambda: tf.matmul(a, b).numpy()) for _ in range(repeats))
        best = max(best, 2.0 * size**3 / seconds)
    return best


def load_one_by_one(split_dir: Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The chapter's way: open, resize and copy every photo into one NumPy array, in turn."""
    files = [(path, index) for index, label in enumerate(LABELS) for path in photo_files(split_dir, label)]
    images = np.zeros((len(files), image_size, image_size, 3), dtype=np.float32)
    for i, (path, _) in enumerate(files):
        with Image.open(path) as photo:
            images[i] = np.asarray(photo.convert("RGB").resize((image_size, image_size), Image.BILINEAR), dtype=np.float32)
    labels = np.array([index for _, index in files], dtype=np.float32)
    return images, labels
