"""Tests of the build_small_dataset stage: decoding, skipping, de-duplication, splits."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageCms

from catsdogs.core.config import DatasetParams
from catsdogs.data import images
from catsdogs.data.dataset import (
    DUPLICATE,
    DUPLICATE_CONFLICTING_LABEL,
    LABELS,
    SKIP_REASONS,
    SPLITS,
    UNEXPECTED_FILE,
    NotEnoughPhotosError,
    RawDataError,
    assign_splits,
    build_small_dataset,
    remove_duplicates,
    scan_raw,
    write_metrics,
)
from catsdogs.data.images import PhotoRecord, Skip, inspect_photo

REPO = Path(__file__).resolve().parents[1]
SMALL = DatasetParams(train_per_class=3, validation_per_class=2, test_per_class=2, min_side=32)
NEEDED = 7  # 3 + 2 + 2


def noise(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A distinct picture per seed, so no two fixtures share bytes by accident.

    Smooth (8x6 random colours, enlarged) rather than pixel noise, so JPEG
    loses little and converted pixels can be compared with the source's.
    """
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb = Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)
    return rgb if mode == "RGB" else rgb.convert(mode)


def broken_scan(data: bytes) -> bytes:
    """A JPEG whose compressed picture data is replaced by random bytes."""
    start = data.index(b"\xff\xda") + 20  # past the start-of-scan header
    garbage = np.random.default_rng(3).bytes(len(data) - 2 - start)
    return data[:start] + garbage + data[-2:]


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# The messy raw folder most tests use: 9 good photos per class plus one file
# of each troublesome kind, with the reason each should end up with.
MESSY = {
    "cat/empty.jpg": ("skip", images.EMPTY),
    "cat/random.jpg": ("skip", images.NOT_AN_IMAGE),
    "cat/broken_scan.jpg": ("skip", images.CORRUPT),
    "dog/truncated.jpg": ("skip", images.TRUNCATED),
    "dog/tiny.jpg": ("skip", images.TOO_SMALL),
    "cat/png_named.jpg": ("convert", "PNG to JPEG"),
    "dog/cmyk.jpg": ("convert", "CMYK to RGB"),
    "cat/grey.jpg": ("convert", "L to RGB"),
    "dog/palette.jpg": ("convert", "P to RGB"),
    "cat/Thumbs.db": ("skip", UNEXPECTED_FILE),
}


def messy_files() -> dict[str, bytes]:
    """Relative path -> bytes of every file in the messy raw folder."""
    files = {}
    for i, label in enumerate(LABELS):
        for n in range(9):
            files[f"{label}/{label}.{n}.jpg"] = encoded(noise(100 * i + n))
    real = encoded(noise(999, size=(120, 90)))
    files.update(
        {
            "cat/empty.jpg": b"",
            "cat/random.jpg": np.random.default_rng(1).bytes(2000),
            "cat/broken_scan.jpg": broken_scan(real),
            "dog/truncated.jpg": real[: len(real) // 2],
            "dog/tiny.jpg": encoded(noise(3, size=(31, 200))),
            "cat/png_named.jpg": encoded(noise(4), "PNG"),
            "dog/cmyk.jpg": encoded(noise(5, mode="CMYK")),
            "cat/grey.jpg": encoded(noise(6, mode="L")),
            "dog/palette.jpg": encoded(noise(7, mode="P"), "PNG"),
            "cat/Thumbs.db": b"not a photo",
        }
    )
    return files


def make_raw(root: Path, files: dict[str, bytes], reverse: bool = False) -> Path:
    """Writes the files (in reverse order if asked, so directory order differs)."""
    (root / "cat").mkdir(parents=True, exist_ok=True)
    (root / "dog").mkdir(parents=True, exist_ok=True)
    for name in sorted(files, reverse=reverse):
        write(root / name, files[name])
    return root


@pytest.fixture
def messy_raw(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "raw", messy_files())


# --- inspect_photo: one file at a time ---------------------------------------


def test_rgb_jpeg_is_copied_byte_for_byte(tmp_path: Path) -> None:
    data = encoded(noise(1))
    record = inspect_photo(write(tmp_path / "a.jpg", data), min_side=32)
    assert isinstance(record, PhotoRecord)
    assert not record.converted and record.conversion == ""
    assert record.sha256 == record.source_sha256 == sha256(data)
    assert (record.width, record.height) == (64, 48)
    assert record.output_bytes() == data


@pytest.mark.parametrize(
    ("name", "reason"),
    [(name, reason) for name, (kind, reason) in MESSY.items() if kind == "skip" and reason != UNEXPECTED_FILE],
)
def test_unusable_files_are_skipped_with_their_reason(tmp_path: Path, name: str, reason: str) -> None:
    path = write(tmp_path / name, messy_files()[name])
    result = inspect_photo(path, min_side=32)
    assert isinstance(result, Skip)
    assert (result.path, result.reason) == (path, reason)
    assert result.detail


def test_jpeg_with_broken_header_is_corrupt_not_unknown(tmp_path: Path) -> None:
    data = bytearray(encoded(noise(1)))
    data[data.index(b"\xff\xc0") + 9] = 7  # seven colour components: no such JPEG
    result = inspect_photo(write(tmp_path / "bad.jpg", bytes(data)), min_side=32)
    assert isinstance(result, Skip) and result.reason == images.CORRUPT
    assert "JPEG" in result.detail


def late_damage(data: bytes) -> bytes:
    """A JPEG with a segment, just before the end, whose length runs past the end."""
    return data[:-40] + b"\xff\xe4\x7f\xff" + data[-36:]


def test_jpeg_damage_that_pillow_tolerates_is_caught(tmp_path: Path) -> None:
    data = late_damage(encoded(noise(5, size=(120, 90))))
    assert decoded(data).size == (120, 90)  # Pillow alone would accept it
    result = inspect_photo(write(tmp_path / "late.jpg", data), min_side=32)
    assert isinstance(result, Skip) and result.reason == images.CORRUPT
    assert "segment 0xe4" in result.detail and "runs past the end" in result.detail


def test_jpeg_stream_problem() -> None:
    data = encoded(noise(5, size=(120, 90)))
    assert images.jpeg_stream_problem(data) is None
    assert images.jpeg_stream_problem(data + b"trailing junk after the end") is None
    assert images.jpeg_stream_problem(data[:-2] + b"\xff\xff\xff\xd9") is None  # fill bytes
    assert "no end-of-image marker" in images.jpeg_stream_problem(data[:-2])
    assert "runs past the end" in images.jpeg_stream_problem(late_damage(data))
    assert images.jpeg_stream_problem(data[:2] + b"stray" + data[2:]) is None  # libjpeg skips these


def test_min_side_is_inclusive(tmp_path: Path) -> None:
    path = write(tmp_path / "edge.jpg", encoded(noise(1, size=(32, 500))))
    assert isinstance(inspect_photo(path, min_side=32), PhotoRecord)
    skip = inspect_photo(path, min_side=33)
    assert isinstance(skip, Skip) and skip.reason == images.TOO_SMALL
    assert "32x500" in skip.detail


@pytest.mark.parametrize("limit", [1000, 2000])  # 64x48 = 3072 pixels: above 2x the limit, then between 1x and 2x
def test_decompression_bombs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    result = inspect_photo(write(tmp_path / "bomb.jpg", encoded(noise(1))), min_side=32)
    assert isinstance(result, Skip) and result.reason == images.DECOMPRESSION_BOMB


def assert_clean_jpeg(record: PhotoRecord) -> Image.Image:
    """The re-encoded bytes are a baseline RGB JPEG with no metadata, as recorded."""
    assert record.jpeg is not None
    assert record.sha256 == sha256(record.jpeg) != record.source_sha256
    image = decoded(record.jpeg)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (record.width, record.height))
    assert not image.info.get("progressive")
    assert "exif" not in image.info and "icc_profile" not in image.info
    return image


@pytest.mark.parametrize("name", [name for name, (kind, _) in MESSY.items() if kind == "convert"])
def test_other_images_are_converted_to_rgb_jpeg(tmp_path: Path, name: str) -> None:
    data = messy_files()[name]
    record = inspect_photo(write(tmp_path / "photo.jpg", data), min_side=32)
    assert isinstance(record, PhotoRecord)
    assert MESSY[name][1] in record.conversion
    image = assert_clean_jpeg(record)
    # Same picture, within JPEG loss.
    expected = np.asarray(decoded(data).convert("RGB"), dtype=np.float64)
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 20


def test_greyscale_stays_grey(tmp_path: Path) -> None:
    record = inspect_photo(write(tmp_path / "g.jpg", encoded(noise(1, mode="L"))), min_side=32)
    pixels = np.asarray(assert_clean_jpeg(record), dtype=np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 2
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 2


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.tile(np.array([0, 32896, 65535], dtype=np.uint16).repeat(16), (48, 1))  # 48 x 48
    data = encoded(Image.fromarray(levels), "PNG")
    assert decoded(data).mode.startswith("I")
    record = inspect_photo(write(tmp_path / "deep.jpg", data), min_side=32)
    pixels = np.asarray(assert_clean_jpeg(record))
    assert pixels[24, 8].tolist() == pytest.approx([0, 0, 0], abs=3)
    assert pixels[24, 24].tolist() == pytest.approx([128, 128, 128], abs=3)
    assert pixels[24, 40].tolist() == pytest.approx([255, 255, 255], abs=3)


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 40), (200, 0, 0, 0))
    record = inspect_photo(write(tmp_path / "alpha.jpg", encoded(rgba, "PNG")), min_side=32)
    assert "RGBA to RGB" in record.conversion
    assert np.asarray(assert_clean_jpeg(record)).min() >= 250


def test_progressive_jpeg_with_metadata_becomes_plain_baseline(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "a cat"  # ImageDescription
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encoded(noise(1), progressive=True, exif=exif, icc_profile=icc)
    record = inspect_photo(write(tmp_path / "prog.jpg", data), min_side=32)
    assert record.conversion == "progressive to baseline"
    assert_clean_jpeg(record)


def test_reencoding_is_deterministic(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jpg", encoded(noise(1, mode="CMYK")))
    first, second = inspect_photo(path, 32), inspect_photo(path, 32)
    assert first.jpeg == second.jpeg and first.sha256 == second.sha256


# --- scan, de-duplication, splits ---------------------------------------------


def test_scan_raw_sorts_out_every_file(messy_raw: Path) -> None:
    before = tree_bytes(messy_raw)
    records, skipped = scan_raw(messy_raw, min_side=32, workers=2, progress=False)
    got = {f"{s.label}/{s.file}": s.reason for s in skipped}
    assert got == {name: reason for name, (kind, reason) in MESSY.items() if kind == "skip"}
    converted = {f"{label}/{r.path.name}" for label in LABELS for r in records[label] if r.converted}
    assert converted == {name for name, (kind, _) in MESSY.items() if kind == "convert"}
    assert [len(records[label]) for label in LABELS] == [11, 11]
    for label in LABELS:
        names = [r.path.name for r in records[label]]
        assert names == sorted(names)
        assert all(r.path.parent.name == label for r in records[label])
    assert tree_bytes(messy_raw) == before  # the raw folder is only read


def test_missing_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "raw" / "cat").mkdir(parents=True)
    with pytest.raises(RawDataError, match=r"raw/dog: folder not found.*download"):
        scan_raw(tmp_path / "raw", min_side=32, workers=1, progress=False)


def dupes_raw(root: Path) -> Path:
    files = messy_files()
    files["cat/zz_copy.jpg"] = files["cat/cat.3.jpg"]  # within a class: keep cat.3
    files["cat/aa_copy.jpg"] = files["cat/cat.4.jpg"]  # the first by name is kept, whatever it is called
    files["dog/dog.8.jpg"] = files["cat/cat.8.jpg"]  # under both labels: drop both
    # Different PNG bytes, same pixels: identical once re-encoded as JPEG.
    files["cat/png_again.jpg"] = encoded(noise(4), "PNG", compress_level=1)
    assert files["cat/png_again.jpg"] != files["cat/png_named.jpg"]
    return make_raw(root, files)


def test_duplicates_are_removed_before_splitting(tmp_path: Path) -> None:
    records, _ = scan_raw(dupes_raw(tmp_path / "raw"), min_side=32, workers=1, progress=False)
    kept, skipped = remove_duplicates(records)
    got = {(s.label, s.file): s.reason for s in skipped}
    assert got == {
        ("cat", "zz_copy.jpg"): DUPLICATE,
        ("cat", "cat.4.jpg"): DUPLICATE,
        ("cat", "png_named.jpg"): DUPLICATE,
        ("cat", "cat.8.jpg"): DUPLICATE_CONFLICTING_LABEL,
        ("dog", "dog.8.jpg"): DUPLICATE_CONFLICTING_LABEL,
    }
    details = {s.file: s.detail for s in skipped}
    assert details["png_named.jpg"] == "same bytes after conversion as png_again.jpg"
    assert details["cat.4.jpg"] == "same bytes as aa_copy.jpg"
    kept_names = {label: [r.path.name for r in kept[label]] for label in LABELS}
    assert "cat.3.jpg" in kept_names["cat"] and "aa_copy.jpg" in kept_names["cat"]
    hashes = [r.sha256 for label in LABELS for r in kept[label]]
    assert len(hashes) == len(set(hashes))


def test_no_photo_appears_twice_in_the_dataset(tmp_path: Path) -> None:
    out = tmp_path / "small"
    summary = build_small_dataset(dupes_raw(tmp_path / "raw"), out, SMALL, seed=1, workers=1, progress=False)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(manifest) == 2 * NEEDED
    assert manifest["sha256"].is_unique
    for row in manifest.itertuples():
        assert sha256((out / row.path).read_bytes()) == row.sha256
    assert summary.duplicates_removed == 5
    assert summary.valid == {"cat": 11 + 3 - 4, "dog": 11 - 1}


def test_assign_splits_deals_disjoint_seeded_splits(messy_raw: Path) -> None:
    records, _ = scan_raw(messy_raw, min_side=32, workers=1, progress=False)
    counts = {"train": 3, "validation": 2, "test": 2}
    splits = assign_splits(records, counts, seed=7)
    for label in LABELS:
        names = [r.path.name for split in SPLITS for r in splits[split][label]]
        assert len(names) == len(set(names)) == NEEDED
        assert [len(splits[split][label]) for split in SPLITS] == [3, 2, 2]
    assert assign_splits(records, counts, seed=7) == splits
    others = [assign_splits(records, counts, seed=s) for s in range(8, 12)]
    assert any(other != splits for other in others)  # the seed matters


def test_not_enough_photos_names_class_and_numbers_and_writes_nothing(messy_raw: Path, tmp_path: Path) -> None:
    # 11 valid dogs (9 + cmyk + palette) and 11 cats; ask for 12.
    params = DatasetParams(train_per_class=8, validation_per_class=2, test_per_class=2, min_side=32)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(NotEnoughPhotosError) as caught:
        build_small_dataset(messy_raw, tmp_path / "small", params, seed=1, workers=1, progress=False)
    message = str(caught.value)
    assert "class 'cat' needs 12 photos" in message and "class 'dog' needs 12 photos" in message
    assert "only 11 valid" in message and "train 8 + validation 2 + test 2" in message
    assert "build_small_dataset.train_per_class" in message
    assert sorted(tmp_path.iterdir()) == before  # no output, no leftover temp folder


# --- the whole build -------------------------------------------------------------


def test_builds_are_byte_identical_whatever_the_listing_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = messy_files()
    first = build_small_dataset(
        make_raw(tmp_path / "raw1", files), tmp_path / "out1", SMALL, seed=3, workers=2, progress=False
    )
    original_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(original_iterdir(self), reverse=True)))
    second = build_small_dataset(
        make_raw(tmp_path / "raw2", files, reverse=True), tmp_path / "out2", SMALL, seed=3, workers=1, progress=False
    )
    assert first.metrics() == second.metrics()
    assert tree_bytes(tmp_path / "out1") == tree_bytes(tmp_path / "out2")


def test_outputs_layout_manifest_and_skipped_report(messy_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "small"
    summary = build_small_dataset(messy_raw, out, SMALL, seed=5, workers=1, progress=False)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns[:6]) == ["split", "label", "filename", "sha256", "width", "height"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == sorted(manifest["path"])
    assert [len(list((out / s / label).iterdir())) for s in SPLITS for label in LABELS] == [3, 3, 2, 2, 2, 2]
    joined = manifest["split"] + "/" + manifest["label"] + "/" + manifest["filename"]
    assert joined.tolist() == manifest["path"].tolist()
    assert manifest["source"].str.split("/").str[0].tolist() == manifest["label"].tolist()
    for row in manifest.itertuples():
        image = decoded((out / row.path).read_bytes())
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (row.width, row.height))
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["file", "label", "reason", "detail"]
    assert dict(zip(skipped["label"] + "/" + skipped["file"], skipped["reason"])) == {
        name: reason for name, (kind, reason) in MESSY.items() if kind == "skip"
    }
    assert summary.counts == {split: {"cat": n, "dog": n} for split, n in zip(SPLITS, (3, 2, 2))}
    assert not list(out.parent.glob(".small.*"))  # no temp folders left


def test_rebuild_replaces_the_previous_dataset(messy_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    write(out / "train" / "cat" / "stale.jpg", b"old")
    build_small_dataset(messy_raw, out, SMALL, seed=5, workers=1, progress=False)
    assert not (out / "train" / "cat" / "stale.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "small"]


def test_metrics_json_has_the_counts(messy_raw: Path, tmp_path: Path) -> None:
    summary = build_small_dataset(messy_raw, tmp_path / "small", SMALL, seed=5, workers=1, progress=False)
    write_metrics(summary, tmp_path / "metrics" / "dataset.json")
    metrics = json.loads((tmp_path / "metrics" / "dataset.json").read_text())
    assert metrics["counts"] == {split: {"cat": n, "dog": n} for split, n in zip(SPLITS, (3, 2, 2))}
    assert metrics["total"] == 14
    assert set(metrics["skipped"]) == set(SKIP_REASONS)  # stable keys for `dvc metrics diff`
    assert {k: v for k, v in metrics["skipped"].items() if v} == {
        images.EMPTY: 1, images.NOT_AN_IMAGE: 1, images.CORRUPT: 1, images.TRUNCATED: 1,
        images.TOO_SMALL: 1, UNEXPECTED_FILE: 1,
    }  # fmt: skip
    assert metrics["duplicates_removed"] == 0
    assert metrics["candidates"] == {"cat": 14, "dog": 13}  # *.jpg files only
    assert metrics["valid"] == {"cat": 11, "dog": 11}


def test_outputs_decode_as_three_channels_in_tensorflow(messy_raw: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    out = tmp_path / "small"
    # Ask for every valid photo so the converted ones are all in the dataset.
    params = DatasetParams(train_per_class=7, validation_per_class=2, test_per_class=2, min_side=32)
    build_small_dataset(messy_raw, out, params, seed=5, workers=1, progress=False)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert manifest["converted"].sum() == 4
    for row in manifest.itertuples():
        pixels = tf.io.decode_jpeg(tf.io.read_file(str(out / row.path)), channels=0)
        assert tuple(pixels.shape) == (row.height, row.width, 3)
    # What inspect_photo refuses beyond Pillow's own checks, TensorFlow refuses too.
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(late_damage(encoded(noise(5, size=(120, 90)))))


def test_stage_script_end_to_end(messy_raw: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "base: {seed: 9}\n"
        "build_small_dataset: {train_per_class: 3, validation_per_class: 2, test_per_class: 2, min_side: 32}\n"
    )
    command = [
        sys.executable, str(REPO / "stages" / "build_small_dataset.py"), "--params", str(params),
        "--raw", str(messy_raw), "--out", str(tmp_path / "small"), "--metrics", str(tmp_path / "m" / "dataset.json"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # From tmp_path: the stage records its timing in ./metrics/timings, which
    # from the project folder would overwrite the real run's.
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "train      3 cat, 3 dog" in done.stdout
    assert json.loads((tmp_path / "m" / "dataset.json").read_text())["total"] == 14
    assert json.loads((tmp_path / "metrics" / "timings" / "build_small_dataset.json").read_text())["wall_seconds"] > 0

    params.write_text("build_small_dataset: {train_per_class: 100}\n")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert "build_small_dataset: error: class 'cat' needs 1100 photos" in done.stderr
    assert "Traceback" not in done.stderr
