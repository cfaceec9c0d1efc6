"""Builds the small cats vs. dogs dataset: train, validation and test folders.

The steps, each a function of its own:

1. :func:`scan_raw` decodes every ``<raw>/<label>/*.jpg`` once, in a process
   pool, and sets aside the files that cannot be used.
2. :func:`remove_duplicates` drops photos whose output bytes are identical,
   so no photo appears twice, within a split or across splits.
3. :func:`assign_splits` shuffles each class with the seed and takes train,
   then validation, then test.
4. :func:`write_dataset` writes the folders, ``manifest.csv`` and
   ``skipped.csv`` into a temporary folder and renames it into place.

:func:`build_small_dataset` runs them all. The result depends only on the
files' names and bytes, the parameters and the seed: never on the order the
file system lists files in, nor on how the pool schedules work.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from catsdogs.core.atomic import write_json_atomically
from catsdogs.core.classes import LABELS, SPLITS
from catsdogs.core.config import DatasetParams
from catsdogs.core.errors import CatsDogsError
from catsdogs.data.images import DECODE_REASONS, PhotoRecord, Skip, inspect_photo

PHOTO_SUFFIX = ".jpg"

# Reasons added by this module to those of catsdogs.data.images.
UNEXPECTED_FILE = "unexpected_file"
DUPLICATE = "duplicate"
DUPLICATE_CONFLICTING_LABEL = "duplicate_conflicting_label"
SKIP_REASONS = DECODE_REASONS + (UNEXPECTED_FILE, DUPLICATE, DUPLICATE_CONFLICTING_LABEL)

MANIFEST_COLUMNS = (
    "split", "label", "filename", "sha256", "width", "height",
    "path", "source", "source_sha256", "converted", "conversion",
)  # fmt: skip
SKIPPED_COLUMNS = ("file", "label", "reason", "detail")

_CHUNKSIZE = 32  # photos per task sent to a worker: amortises pickling


class RawDataError(CatsDogsError):
    """The raw photos folder is missing or laid out wrongly."""


class NotEnoughPhotosError(CatsDogsError):
    """A class has fewer valid photos than the splits ask for."""


@dataclass(frozen=True)
class SkippedFile:
    """One row of skipped.csv."""

    file: str
    label: str
    reason: str
    detail: str


Records = dict[str, list[PhotoRecord]]  # label -> photos, sorted by file name
Splits = dict[str, dict[str, list[PhotoRecord]]]  # split -> label -> photos


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`build_small_dataset` did.

    Attributes:
        out_dir: the dataset folder.
        counts: photos written per split and label.
        skipped: files left out per reason (every reason, zeros included).
        candidates: *.jpg files found per label in the raw folder.
        valid: usable photos per label after skipping and de-duplication.
        converted: photos written re-encoded rather than copied.
        seconds: wall time of the whole build.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    skipped: dict[str, int]
    candidates: dict[str, int]
    valid: dict[str, int]
    converted: int
    seconds: float

    @property
    def duplicates_removed(self) -> int:
        return self.skipped[DUPLICATE] + self.skipped[DUPLICATE_CONFLICTING_LABEL]

    def metrics(self) -> dict[str, Any]:
        """Returns the DVC metrics: deterministic, so the wall time is left out."""
        return {
            "counts": self.counts,
            "total": sum(n for per_label in self.counts.values() for n in per_label.values()),
            "skipped": self.skipped,
            "skipped_total": sum(self.skipped.values()),
            "duplicates_removed": self.duplicates_removed,
            "candidates": self.candidates,
            "valid": self.valid,
            "converted": self.converted,
        }

    def __str__(self) -> str:
        lines = [f"{sum(self.candidates.values())} candidate photos -> {self.out_dir} in {self.seconds:.1f} s"]
        for split, per_label in self.counts.items():
            lines.append(f"  {split:<10} " + ", ".join(f"{n} {label}" for label, n in per_label.items()))
        skipped = {reason: n for reason, n in self.skipped.items() if n}
        lines.append(
            "  skipped    " + (", ".join(f"{n} {reason}" for reason, n in skipped.items()) if skipped else "none")
        )
        lines.append("  valid      " + ", ".join(f"{n} {label}" for label, n in self.valid.items()))
        lines.append(f"  converted  {self.converted} (re-encoded as RGB JPEG)")
        return "\n".join(lines)


def split_counts(params: DatasetParams) -> dict[str, int]:
    """Returns the photos per class each split asks for, in :data:`SPLITS` order.

    Args:
        params: the build_small_dataset section of params.yaml.

    Returns:
        ``{"train": ..., "validation": ..., "test": ...}``.
    """
    return {
        "train": params.train_per_class,
        "validation": params.validation_per_class,
        "test": params.test_per_class,
    }


def list_candidates(raw_dir: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Lists ``<raw_dir>/<label>/*.jpg`` for every label, sorted by label then name.

    Args:
        raw_dir: the folder holding one sub-folder per label.

    Returns:
        The candidate photos, and the other files found (reported, not used).

    Raises:
        RawDataError: a label's folder is missing.
    """
    candidates: list[Path] = []
    others: list[SkippedFile] = []
    for label in LABELS:
        folder = raw_dir / label
        if not folder.is_dir():
            raise RawDataError(
                f"{folder}: folder not found; the raw photos must be in {raw_dir}/cat and {raw_dir}/dog "
                "(run the download stage first: dvc repro download)"
            )
        # Sorting makes everything after this independent of listing order.
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.is_file() and path.suffix.lower() == PHOTO_SUFFIX:
                candidates.append(path)
            else:
                others.append(SkippedFile(path.name, label, UNEXPECTED_FILE, f"not a *{PHOTO_SUFFIX} file"))
    return candidates, others


def scan_raw(
    raw_dir: str | Path,
    min_side: int,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Records, list[SkippedFile]]:
    """Decodes every candidate photo once, in parallel, and sorts out the unusable.

    Args:
        raw_dir: the folder holding cat/ and dog/.
        min_side: the smallest width and height accepted, in pixels.
        workers: processes to decode with; None uses every available core,
            1 decodes in this process.
        progress: whether to show a tqdm progress bar.

    Returns:
        The usable photos per label (sorted by file name), and the files left
        out with their reasons (sorted by label, then file name).

    Raises:
        RawDataError: a label's folder is missing.
    """
    candidates, skipped = list_candidates(Path(raw_dir))
    results = _inspect_all(candidates, min_side, workers, progress)
    records: Records = {label: [] for label in LABELS}
    for result in sorted(results, key=lambda r: (r.path.parent.name, r.path.name)):
        label = result.path.parent.name
        if isinstance(result, Skip):
            skipped.append(SkippedFile(result.path.name, label, result.reason, result.detail))
        else:
            records[label].append(result)
    return records, _sorted_skips(skipped)


def _inspect_all(paths: Sequence[Path], min_side: int, workers: int | None, progress: bool) -> list[PhotoRecord | Skip]:
    workers = workers or len(os.sched_getaffinity(0))
    bar = dict(total=len(paths), desc="decoding photos", unit="photo", disable=not progress)
    if workers == 1 or len(paths) < 2:
        return [inspect_photo(path, min_side) for path in tqdm(paths, **bar)]
    # spawn, not fork: the caller may have loaded TensorFlow, whose threads
    # do not survive a fork; the workers only need Pillow.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = pool.map(inspect_photo, paths, repeat(min_side), chunksize=_CHUNKSIZE)
        return list(tqdm(results, **bar))


def remove_duplicates(records: Mapping[str, Sequence[PhotoRecord]]) -> tuple[Records, list[SkippedFile]]:
    """Keeps one photo per distinct output (sha256 of the bytes the dataset holds).

    Hashing the output rather than the source also catches two different
    files that become the same JPEG once converted. Within a class the first
    file by name is kept; bytes found under both labels cannot be trusted
    with either, so every copy is dropped.

    Args:
        records: usable photos per label.

    Returns:
        The photos kept per label (sorted by file name), and the dropped ones.
    """
    groups: dict[str, list[tuple[str, PhotoRecord]]] = defaultdict(list)
    for label in sorted(records):
        for record in sorted(records[label], key=lambda r: r.path.name):
            groups[record.sha256].append((label, record))
    kept: Records = {label: [] for label in records}
    skipped: list[SkippedFile] = []
    for group in groups.values():
        labels = sorted({label for label, _ in group})
        if len(labels) > 1:
            names = ", ".join(f"{label}/{r.path.name}" for label, r in group)
            for label, record in group:
                skipped.append(
                    SkippedFile(record.path.name, label, DUPLICATE_CONFLICTING_LABEL, f"same bytes as: {names}")
                )
            continue
        (label, first), *copies = group
        kept[label].append(first)
        for _, record in copies:
            same = "bytes" if record.source_sha256 == first.source_sha256 else "bytes after conversion"
            skipped.append(SkippedFile(record.path.name, label, DUPLICATE, f"same {same} as {first.path.name}"))
    for photos in kept.values():
        photos.sort(key=lambda r: r.path.name)
    return kept, _sorted_skips(skipped)


def assign_splits(records: Mapping[str, Sequence[PhotoRecord]], counts: Mapping[str, int], seed: int) -> Splits:
    """Shuffles each class with the seed and deals out the splits in order.

    Each class is sorted by file name, shuffled with
    ``numpy.random.default_rng(seed)``, and cut into train, then validation,
    then test; the remaining photos are not used.

    Args:
        records: usable, de-duplicated photos per label.
        counts: photos per class for each split, e.g. from :func:`split_counts`.
        seed: base.seed from params.yaml.

    Returns:
        ``{split: {label: photos}}`` with each list sorted by file name.

    Raises:
        NotEnoughPhotosError: a class has fewer photos than the splits need;
            raised before anything is shuffled or written.
    """
    check_enough(records, counts)
    splits: Splits = {split: {} for split in counts}
    for label in sorted(records):
        photos = sorted(records[label], key=lambda r: r.path.name)
        order = np.random.default_rng(seed).permutation(len(photos))
        start = 0
        for split, n in counts.items():
            chosen = [photos[i] for i in order[start : start + n]]
            splits[split][label] = sorted(chosen, key=lambda r: r.path.name)
            start += n
    return splits


def check_enough(records: Mapping[str, Sequence[PhotoRecord]], counts: Mapping[str, int]) -> None:
    """Raises :class:`NotEnoughPhotosError` naming every class that is short.

    Args:
        records: usable, de-duplicated photos per label.
        counts: photos per class for each split.
    """
    needed = sum(counts.values())
    breakdown = " + ".join(f"{split} {n}" for split, n in counts.items())
    short = [
        f"class {label!r} needs {needed} photos ({breakdown}) but only {len(photos)} valid ones are available"
        for label, photos in sorted(records.items())
        if len(photos) < needed
    ]
    if short:
        raise NotEnoughPhotosError(
            "; ".join(short) + " after skipping unusable files and removing duplicates. "
            "Lower build_small_dataset.train_per_class, validation_per_class or test_per_class "
            "in params.yaml, or add photos to the raw folder."
        )


def write_dataset(out_dir: str | Path, splits: Splits, skipped: Sequence[SkippedFile]) -> None:
    """Writes the split folders, manifest.csv and skipped.csv, all or nothing.

    Everything goes into a temporary folder beside ``out_dir`` that is then
    renamed into place, replacing any previous dataset; an interrupted run
    leaves the previous dataset (or nothing) behind, never a mix.

    Args:
        out_dir: the dataset folder to create or replace.
        splits: the photos per split and label.
        skipped: the files left out.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        rows = []
        for split, per_label in splits.items():
            for label, photos in per_label.items():
                folder = staging / split / label
                folder.mkdir(parents=True)
                for record in photos:
                    _write_photo(record, folder / record.path.name)
                    rows.append(_manifest_row(split, label, record))
        rows.sort(key=lambda row: (SPLITS.index(row["split"]), row["label"], row["filename"]))
        _write_csv(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), staging / "manifest.csv")
        _write_csv(pd.DataFrame([vars(s) for s in skipped], columns=list(SKIPPED_COLUMNS)), staging / "skipped.csv")
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there if something failed


def _write_photo(record: PhotoRecord, dest: Path) -> None:
    if record.jpeg is None:
        shutil.copyfile(record.path, dest)
    else:
        dest.write_bytes(record.jpeg)


def _manifest_row(split: str, label: str, record: PhotoRecord) -> dict[str, Any]:
    return {
        "split": split,
        "label": label,
        "filename": record.path.name,
        "sha256": record.sha256,
        "width": record.width,
        "height": record.height,
        "path": f"{split}/{label}/{record.path.name}",
        "source": f"{record.path.parent.name}/{record.path.name}",
        "source_sha256": record.source_sha256,
        "converted": record.converted,
        "conversion": record.conversion,
    }


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def _replace_dir(new: Path, dest: Path) -> None:
    """Renames ``new`` to ``dest``, moving an existing ``dest`` aside first."""
    if not dest.exists():
        new.rename(dest)
        return
    # A directory cannot be renamed over a non-empty one: swap, then delete.
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    dest.rename(old / dest.name)
    new.rename(dest)
    shutil.rmtree(old)


def _sorted_skips(skipped: Iterable[SkippedFile]) -> list[SkippedFile]:
    return sorted(skipped, key=lambda s: (s.label, s.file, s.reason))


def build_small_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    params: DatasetParams,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> DatasetSummary:
    """Builds ``<out_dir>/{train,validation,test}/{cat,dog}`` from the raw photos.

    Args:
        raw_dir: the folder holding cat/ and dog/ (only read, never changed).
        out_dir: the dataset folder to create or replace.
        params: the build_small_dataset section of params.yaml.
        seed: base.seed from params.yaml.
        workers: decoding processes; None uses every available core.
        progress: whether to show a progress bar while decoding.

    Returns:
        What was written and skipped.

    Raises:
        RawDataError: the raw folder lacks cat/ or dog/.
        NotEnoughPhotosError: a class is short of valid photos; nothing is written.
    """
    start = time.perf_counter()
    records, decode_skips = scan_raw(raw_dir, params.min_side, workers=workers, progress=progress)
    unique, duplicate_skips = remove_duplicates(records)
    splits = assign_splits(unique, split_counts(params), seed)
    skipped = _sorted_skips(decode_skips + duplicate_skips)
    write_dataset(out_dir, splits, skipped)
    reasons = Counter(s.reason for s in skipped)
    return DatasetSummary(
        out_dir=Path(out_dir),
        counts={split: {label: len(splits[split][label]) for label in LABELS} for split in splits},
        skipped={reason: reasons[reason] for reason in SKIP_REASONS},
        candidates={
            label: len(records[label])
            + sum(s.label == label and s.reason in DECODE_REASONS for s in decode_skips)
            for label in LABELS
        },
        valid={label: len(unique[label]) for label in LABELS},
        converted=sum(r.converted for per_label in splits.values() for rs in per_label.values() for r in rs),
        seconds=time.perf_counter() - start,
    )


def write_metrics(summary: DatasetSummary, path: str | Path) -> None:
    """Writes the summary's DVC metrics as JSON, atomically.

    Args:
        summary: the result of :func:`build_small_dataset`.
        path: the JSON file, e.g. metrics/dataset.json.
    """
    write_json_atomically(summary.metrics(), Path(path))
