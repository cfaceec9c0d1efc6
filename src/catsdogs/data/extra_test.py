"""A second test set: archive photos the small dataset did not draw.

The small dataset draws 5,000 photos of the archive; the rest are photos
no model ever saw, of the same kind. Scoring every model on some of them
narrows the intervals the 1,000-photo test split leaves (at 3,000 photos
+/- 1.6 points instead of 2.7 at an accuracy near 0.75). The test split
stays the study's headline: this set is reported beside it, labelled.

A photo is left out when the small dataset lists it (any split) or set it
aside (``skipped.csv``: unreadable, too small, or a duplicate of another
photo, which also keeps copies of drawn photos out).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from catsdogs.core.classes import LABELS
from catsdogs.core.errors import CatsDogsError
from catsdogs.data.inputs import load_split_arrays, photo_files


class ExtraTestError(CatsDogsError):
    """The raw photos or the small dataset's lists cannot be read."""


def undrawn_photos(raw_dir: Path, data_dir: Path, limit: int, seed: int) -> list[Path]:
    """Up to ``limit`` raw photos the small dataset neither drew nor set aside: half of each class, fewer if it lacks them.

    Args:
        raw_dir: the download stage's ``<label>/*.jpg`` folders.
        data_dir: the small dataset, whose ``manifest.csv`` and ``skipped.csv`` are read.
        limit: at most this many photos.
        seed: which photos, when there are more than ``limit``.

    Returns:
        The photos, sorted by label then name.

    Raises:
        ExtraTestError: a folder or list is missing.
    """
    raw_dir, data_dir = Path(raw_dir), Path(data_dir)
    try:
        drawn = set(pd.read_csv(data_dir / "manifest.csv", usecols=["source"])["source"])
        skipped_rows = pd.read_csv(data_dir / "skipped.csv", usecols=["file", "label"])
    except (FileNotFoundError, ValueError) as err:
        raise ExtraTestError(f"cannot read the small dataset's lists in {data_dir} ({err}); run `dvc repro build_small_dataset`") from None
    skipped = {f"{row.label}/{row.file}" for row in skipped_rows.itertuples(index=False)}
    rng = np.random.default_rng(seed)
    per_class = {label: [] for label in LABELS}
    for label in LABELS:
        folder = raw_dir / label
        if not folder.is_dir():
            raise ExtraTestError(f"{folder} not found: run `dvc repro download`")
        per_class[label] = [
            p for p in photo_files(raw_dir, label) if f"{label}/{p.name}" not in drawn and f"{label}/{p.name}" not in skipped
        ]
    chosen: list[Path] = []
    for label in LABELS:
        pool = per_class[label]
        take = min(len(pool), limit // len(LABELS))
        chosen += [pool[j] for j in sorted(rng.choice(len(pool), size=take, replace=False))]
    return sorted(chosen, key=lambda p: (p.parent.name, p.name))


def load_photos(photos: list[Path], image_size: int) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """The photos as arrays, decoded and resized exactly as the splits are.

    The photos are linked into a temporary ``<label>/`` folder so that
    :func:`catsdogs.data.inputs.load_split_arrays` reads them the one way every
    split is read.

    Returns:
        Images float32 (n, size, size, 3), labels (n,), and the photos' own paths.
    """
    with tempfile.TemporaryDirectory(prefix="catsdogs-extra-test-") as tmp:
        for photo in photos:
            link = Path(tmp) / photo.parent.name / photo.name
            link.parent.mkdir(exist_ok=True)
            os.symlink(photo.resolve(), link)
        images, labels, links = load_split_arrays(Path(tmp), image_size=image_size)
        by_link = {Path(tmp) / p.parent.name / p.name: p for p in photos}
        return images, labels, [by_link[Path(link)] for link in links]
