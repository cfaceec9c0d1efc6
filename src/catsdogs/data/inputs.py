"""``tf.data`` input pipelines over ``<split>/{cat,dog}/*.jpg`` folders.

Images come out as float32 raw pixel values in 0..255: scaling to [0, 1] is
the model's first layer, so a saved model takes raw pixels like the ones a
user would feed it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from catsdogs.core.classes import LABELS
from catsdogs.core.errors import CatsDogsError

# The file types image_dataset_from_directory loads; counting the same ones
# keeps count_images in step with what the datasets yield.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


class InputDataError(CatsDogsError):
    """A split folder is missing, or holds no photos for a label."""


def photos_under(folder: Path) -> list[Path]:
    """Every photo file below ``folder``, sorted by path (empty if it is missing)."""
    return sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def photo_files(split_dir: Path, label: str) -> list[Path]:
    """A label's photos in a split folder, in the order
    image_dataset_from_directory reads them."""
    return photos_under(Path(split_dir) / label)


def count_images(split_dir: Path) -> dict[str, int]:
    """Counts the photos of each label in a split folder.

    Args:
        split_dir: a folder with one subfolder per label, e.g. data/small/train.

    Returns:
        ``{"cat": n_cats, "dog": n_dogs}``, zero for a missing label folder.
    """
    return {label: len(photo_files(split_dir, label)) for label in LABELS}


def _check_split(split_dir: Path) -> None:
    if not split_dir.is_dir():
        raise InputDataError(
            f"{split_dir}: folder not found; run `dvc repro build_small_dataset` "
            "to create the small data set"
        )
    counts = count_images(split_dir)
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        raise InputDataError(
            f"{split_dir / empty[0]}: no photos found (expected *.jpg files for "
            f"label {empty[0]!r}); rebuild the data set with "
            "`dvc repro build_small_dataset`"
        )


# libjpeg decodes a JPEG straight at 1/2, 1/4 or 1/8 of its size (scaling
# its DCT blocks), several times faster than decoding it whole.
_JPEG_SCALES = (1, 2, 4, 8)


def decode_photo(contents: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """A photo's bytes -> (height, width, 3) uint8, resized bilinearly.

    A JPEG at least twice the target size on both sides is decoded at the
    largest of 1/2, 1/4 or 1/8 scale that keeps it at least as large as the
    target, then resized as any other photo: the result differs from
    resizing the full-size decode by rounding, not content (tested). Other
    formats (PNG, GIF's first frame, BMP) are decoded whole.

    Args:
        contents: the file's bytes, a scalar string tensor.
        image_size: (height, width) to resize to.

    Returns:
        Whole 0..255 pixel values, like the chapter's PIL-resized arrays
        (and a cache a quarter the size of float32).
    """
    target = tf.constant(image_size, tf.int32)

    def jpeg() -> tf.Tensor:
        height_width = tf.io.extract_jpeg_shape(contents)[:2]
        # How many of the scales 2, 4, 8 leave both sides at least the target's.
        fits = [tf.reduce_all(height_width >= target * scale) for scale in _JPEG_SCALES[1:]]
        index = tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))
        branches = [lambda r=scale: tf.io.decode_jpeg(contents, channels=3, ratio=r) for scale in _JPEG_SCALES]
        return tf.switch_case(index, branches)

    def other() -> tf.Tensor:
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image = tf.image.resize(image, image_size, method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, (*image_size, 3))


def decoded_images(split_dir: Path, image_size: int) -> tf.data.Dataset:
    """Unbatched (uint8 image, float32 label) pairs in sorted file order.

    The dataset's ``file_paths`` attribute lists the photos in that order.
    """
    split_dir = Path(split_dir)
    _check_split(split_dir)
    files = [(str(path), float(index)) for index, label in enumerate(LABELS) for path in photo_files(split_dir, label)]
    paths = [path for path, _ in files]
    size = (image_size, image_size)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return decode_photo(tf.io.read_file(path), size), label

    ds = tf.data.Dataset.from_tensor_slices((paths, [label for _, label in files]))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds.file_paths = paths
    return ds


def make_dataset(
    split_dir: Path,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: keras.layers.Layer | None = None,
    repeat: bool = False,
    cache: bool | str = True,
) -> tf.data.Dataset:
    """Builds the batched (images, labels) pipeline of one split.

    Order of work: list files (sorted) -> read, decode and resize once ->
    cache -> shuffle (a new order each epoch) -> repeat -> batch -> random
    augmentation -> prefetch. Augmentation comes after the cache, so every
    epoch sees freshly augmented photos.

    Args:
        split_dir: folder with ``cat/`` and ``dog/`` subfolders of photos.
        image_size: photos are resized to image_size x image_size.
        batch_size: photos per batch; the last batch may be smaller.
        shuffle: shuffle the photos, with a new order each epoch.
        seed: seed of the shuffle.
        augment: random augmentation applied to each batch (called with
            ``training=True``), e.g. from
            :func:`catsdogs.data.augmentation.make_augmentation`; None for
            evaluation data. Its random state advances batch by batch, so a
            freshly made augmentation with the same seed repeats the same
            augmented batches.
        repeat: repeat forever (use with ``steps_per_epoch``).
        cache: True caches decoded photos in memory, a string caches them in
            that file, False decodes them again every epoch.

    Returns:
        A dataset of ``(images, labels)``: images float32 of shape
        (batch, image_size, image_size, 3) in 0..255, labels float32 of shape
        (batch,), 0 for cat and 1 for dog.

    Raises:
        InputDataError: the split folder or one of its label folders is
            missing or empty.
    """
    ds = decoded_images(Path(split_dir), image_size)
    n_images = len(ds.file_paths)
    if cache is True:
        ds = ds.cache()
    elif cache:
        ds = ds.cache(str(cache))
    if shuffle:
        # A buffer as large as the split gives a uniform shuffle.
        ds = ds.shuffle(n_images, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    ds = ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:

        def augment_batch(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return augment(images, training=True), labels

        # Sequential on purpose: Keras random layers keep their RNG state in a
        # variable that each call reads and advances, so parallel calls would
        # race for it and which batch gets which transformation would depend
        # on thread timing. One call at a time keeps augmentation
        # reproducible from the seed; it costs little, as a batch augments
        # several times faster than it trains, and prefetch overlaps the two.
        ds = ds.map(augment_batch)
    return ds.prefetch(tf.data.AUTOTUNE)


def _to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels


def load_split_arrays(
    split_dir: Path, *, image_size: int
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Loads a whole split into memory, in sorted file order.

    Args:
        split_dir: folder with ``cat/`` and ``dog/`` subfolders of photos.
        image_size: photos are resized to image_size x image_size.

    Returns:
        ``(images, labels, paths)``: images float32 (n, size, size, 3) in
        0..255, the same values :func:`make_dataset` yields; labels float32
        (n,); paths the photo files, in the same order.

    Raises:
        InputDataError: the split folder or one of its label folders is
            missing or empty.
    """
    ds = decoded_images(Path(split_dir), image_size)
    paths = [Path(p) for p in ds.file_paths]
    batches = list(ds.batch(256).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches]).astype(np.float32)
    labels = np.concatenate([b[1] for b in batches])
    return images, labels, paths
