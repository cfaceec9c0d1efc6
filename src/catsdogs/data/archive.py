"""Copies the cat and dog photos out of a zip or folder into ``<out>/cat``, ``<out>/dog``.

Two layouts are understood, told apart by the entry names:

- Kaggle's ``train.zip``: ``train/cat.1.jpg``, ``train/dog.1.jpg`` (the label is
  the part of the file name before the first dot);
- Microsoft's ``kagglecatsanddogs_*.zip``: ``PetImages/Cat/1.jpg``,
  ``PetImages/Dog/1.jpg``.

Photos keep their original file names. Only ``*.jpg`` / ``*.jpeg`` names are
copied; whether each one is a readable photo is judged by a later stage.
A zip is untrusted input: every entry is checked (path, symlink, size) before
anything is written, and the output appears all at once or not at all.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, Iterator

from tqdm import tqdm

from catsdogs.core.atomic import sha256_file
from catsdogs.core.classes import LABELS
from catsdogs.core.errors import CatsDogsError

PHOTO_SUFFIXES = (".jpg", ".jpeg")
EXPECTED_LAYOUTS = (
    "Kaggle's train/cat.N.jpg and train/dog.N.jpg, "
    "or Microsoft's PetImages/Cat/N.jpg and PetImages/Dog/N.jpg"
)
_COPY_CHUNK = 1 << 20


class ArchiveError(CatsDogsError):
    """A zip or folder cannot be read as a source of cat and dog photos."""


class UnsafeEntryError(ArchiveError):
    """A zip entry would escape the output folder, is a symlink, or is too big."""


class LayoutError(ArchiveError):
    """A zip or folder holds neither the Kaggle nor the Microsoft layout."""


@dataclass(frozen=True)
class PlannedPhoto:
    """One entry to copy: where it is in the source and where it goes."""

    entry: str
    label: str
    name: str


def classify_entry(entry: str) -> tuple[str, str, str] | None:
    """Says which layout an entry name belongs to, and where its photo goes.

    Args:
        entry: a '/'-separated path inside the archive (or folder).

    Returns:
        ``(layout, label, file_name)`` with layout ``"kaggle"`` or
        ``"microsoft"``, or None for anything that is not a cat or dog photo
        (folders, ``Thumbs.db``, readme files, macOS ``._`` resource forks).
    """
    parts = PurePosixPath(entry).parts
    if len(parts) < 2 or "__MACOSX" in parts:
        return None
    name = parts[-1]
    # macOS zips add "._cat.1.jpg" twins holding metadata, not photos.
    if name.startswith(".") or not name.lower().endswith(PHOTO_SUFFIXES):
        return None
    folder = parts[-2]
    if folder == "train":
        label = name.split(".", 1)[0].lower()
        return ("kaggle", label, name) if label in LABELS else None
    if len(parts) >= 3 and parts[-3] == "PetImages" and folder.lower() in LABELS:
        return "microsoft", folder.lower(), name
    return None


def plan_photos(entries: list[str], source: Path) -> list[PlannedPhoto]:
    """Picks the photos to copy out of a source's entry names.

    Args:
        entries: every file name in the source, '/'-separated.
        source: the zip or folder, named in errors.

    Returns:
        The photos, in entry order.

    Raises:
        LayoutError: no photo of either layout, both layouts at once, a class
            with no photo, or two entries that would land on the same file.
    """
    photos: list[PlannedPhoto] = []
    layouts: set[str] = set()
    seen: dict[tuple[str, str], str] = {}
    for entry in entries:
        found = classify_entry(entry)
        if found is None:
            continue
        layout, label, name = found
        if (label, name) in seen:
            raise LayoutError(
                f"{source}: entries {seen[label, name]!r} and {entry!r} would both become "
                f"{label}/{name}; keep only one copy of the photos in the source"
            )
        seen[label, name] = entry
        layouts.add(layout)
        photos.append(PlannedPhoto(entry, label, name))
    if not photos:
        hint = ""
        if any(PurePosixPath(e).name == "train.zip" for e in entries):
            hint = " (it holds train.zip: extract that and use it as the source)"
        raise LayoutError(f"{source}: no cat or dog photos found; expected {EXPECTED_LAYOUTS}{hint}")
    if len(layouts) > 1:
        raise LayoutError(f"{source}: holds both the Kaggle and the Microsoft layout; use one or the other")
    missing = [label for label in LABELS if not any(p.label == label for p in photos)]
    if missing:
        raise LayoutError(f"{source}: holds no {missing[0]} photos; expected {EXPECTED_LAYOUTS}")
    return photos


def check_zip_entry(info: zipfile.ZipInfo, archive: Path, max_entry_bytes: int) -> None:
    """Refuses an entry that could write outside the output or fill the disk.

    Args:
        info: the entry, as listed in the zip's central directory.
        archive: the zip, named in errors.
        max_entry_bytes: the largest uncompressed size allowed.

    Raises:
        UnsafeEntryError: absolute path, a ``..`` component, a symlink, or a
            declared size above ``max_entry_bytes``.
    """
    name = info.filename
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise UnsafeEntryError(f"{archive}: entry {name!r} has an absolute path; refusing to extract this archive")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeEntryError(
            f"{archive}: entry {name!r} points outside the output folder; refusing to extract this archive"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeEntryError(f"{archive}: entry {name!r} is a symbolic link; refusing to extract this archive")
    if info.file_size > max_entry_bytes:
        raise UnsafeEntryError(
            f"{archive}: entry {name!r} is {info.file_size} bytes, more than the {max_entry_bytes} "
            "allowed by download.max_entry_mb in params.yaml; refusing to extract this archive"
        )


def _copy_limited(src: BinaryIO, dst: BinaryIO, limit: int, where: str) -> None:
    """Copies at most ``limit`` bytes, whatever size the entry's header declares.

    zipfile already stops at the declared size, but the size limit is a
    safety property, so it is enforced here too rather than assumed.
    """
    copied = 0
    while chunk := src.read(_COPY_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise UnsafeEntryError(
                f"{where} holds more than the {limit} bytes allowed by download.max_entry_mb in params.yaml; "
                "refusing to extract this archive"
            )
        dst.write(chunk)


def _extract_zip(archive: Path, dest: Path, max_entry_bytes: int) -> list[PlannedPhoto]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                check_zip_entry(info, archive, max_entry_bytes)
            files = [info.filename for info in infos if not info.is_dir()]
            photos = plan_photos(files, archive)
            for photo in tqdm(photos, desc=f"extract {archive.name}", unit="photo"):
                # photo.name is a single path component, so the target is
                # always inside dest whatever the entry's folders say.
                with zf.open(photo.entry) as src, open(dest / photo.label / photo.name, "wb") as dst:
                    _copy_limited(src, dst, max_entry_bytes, f"{archive}: entry {photo.entry!r}")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        # zlib.error and EOFError: damaged compressed data; NotImplementedError:
        # a compression method Python cannot read.
        raise ArchiveError(f"{archive}: not a readable zip ({err}); replace it with a good copy") from err
    return photos


def _folder_files(folder: Path) -> Iterator[str]:
    """Yields the folder's files as '/'-separated names relative to its parent.

    Relative to the parent so that pointing at ``.../train`` or
    ``.../PetImages`` keeps the folder name the layouts are recognised by.
    """
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            yield (Path(dirpath) / name).relative_to(folder.parent).as_posix()


def _extract_folder(folder: Path, dest: Path, max_entry_bytes: int) -> list[PlannedPhoto]:
    photos = plan_photos(sorted(_folder_files(folder)), folder)
    for photo in tqdm(photos, desc=f"copy {folder.name}", unit="photo"):
        src = folder.parent / photo.entry
        if src.stat().st_size > max_entry_bytes:
            raise UnsafeEntryError(
                f"{src} is more than the {max_entry_bytes} bytes allowed by download.max_entry_mb in params.yaml"
            )
        shutil.copyfile(src, dest / photo.label / photo.name)
    return photos


def _swap_into_place(new: Path, out_dir: Path) -> None:
    """Renames ``new`` to ``out_dir``, replacing a previous output only at the end."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    old = new.with_name(f"{new.name}.old")  # new's name is unique, so this one is too
    out_dir.rename(old)
    try:
        new.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old)


RAW_MANIFEST = "manifest.csv"
RAW_MANIFEST_COLUMNS = ("label", "filename", "bytes", "sha256")


def write_raw_manifest(folder: Path, photos: list[PlannedPhoto]) -> None:
    """Lists every photo written under ``folder`` with its size and SHA-256.

    The stages that read the raw photos depend on this one file rather than
    on the 8,000 photos: DVC then checks one file for them, and the file
    changes whenever a photo does (``dvc repro`` restores an edited photo
    through the download stage, whose output the folder is).
    """
    rows = []
    for photo in sorted(photos, key=lambda p: (p.label, p.name)):
        path = folder / photo.label / photo.name
        rows.append((photo.label, photo.name, path.stat().st_size, sha256_file(path)))
    with (folder / RAW_MANIFEST).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RAW_MANIFEST_COLUMNS)
        writer.writerows(rows)


def extract_photos(source: str | Path, out_dir: str | Path, *, max_entry_bytes: int) -> dict[str, int]:
    """Copies every cat and dog photo of a zip or folder to ``out_dir/{cat,dog}``.

    The photos are written to a temporary folder beside ``out_dir`` that is
    renamed into place at the end: on any error ``out_dir`` is left as it was.
    ``out_dir/manifest.csv`` lists them (:func:`write_raw_manifest`).

    Args:
        source: a zip (Kaggle or Microsoft layout) or a folder extracted from one.
        out_dir: the folder to create or replace; it gets ``cat/`` and ``dog/``.
        max_entry_bytes: the largest photo accepted; bigger ones stop the run.

    Returns:
        The number of photos copied per label, e.g. ``{"cat": 4000, "dog": 4000}``.

    Raises:
        ArchiveError: the source is missing, unreadable, unsafe or has neither layout.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise ArchiveError(f"{source}: not found")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        for label in LABELS:
            (tmp / label).mkdir()
        if source.is_dir():
            photos = _extract_folder(source, tmp, max_entry_bytes)
        else:
            photos = _extract_zip(source, tmp, max_entry_bytes)
        write_raw_manifest(tmp, photos)
        _swap_into_place(tmp, out_dir)
    finally:
        # After a successful swap tmp no longer exists; after a failure it
        # holds a partial copy that must not outlive the run.
        shutil.rmtree(tmp, ignore_errors=True)
    return {label: sum(p.label == label for p in photos) for label in LABELS}
