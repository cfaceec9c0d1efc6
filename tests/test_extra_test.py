"""The second test set: archive photos the small dataset did not draw."""

from __future__ import annotations

import pytest

from catsdogs.core.config import ParamsError, parse_params
from catsdogs.data.extra_test import ExtraTestError, load_photos, undrawn_photos

from conftest import synthetic_photo


def raw_archive(root, per_class=10):
    for label in ("cat", "dog"):
        (root / "raw" / label).mkdir(parents=True)
        for i in range(per_class):
            synthetic_photo(label, i, 40).save(root / "raw" / label / f"{label}.{i}.jpg")
    small = root / "small"
    small.mkdir()
    # The small dataset drew cat.0-3 and dog.0-1, and set aside dog.2 (a duplicate).
    drawn = [("train", "cat", i) for i in range(4)] + [("test", "dog", i) for i in range(2)]
    (small / "manifest.csv").write_text(
        "split,label,filename,source\n" + "".join(f"{s},{l},{l}.{i}.jpg,{l}/{l}.{i}.jpg\n" for s, l, i in drawn)
    )
    (small / "skipped.csv").write_text("file,label,reason,detail\ndog.2.jpg,dog,duplicate,same bytes as dog.1.jpg\n")
    return root / "raw", small


def test_undrawn_photos_leave_out_drawn_and_skipped_ones(tmp_path):
    raw, small = raw_archive(tmp_path)
    every = undrawn_photos(raw, small, limit=100, seed=0)
    names = [f"{p.parent.name}/{p.name}" for p in every]
    assert names == sorted(names)
    assert {n for n in names if n.startswith("cat/")} == {f"cat/cat.{i}.jpg" for i in range(4, 10)}
    assert {n for n in names if n.startswith("dog/")} == {f"dog/dog.{i}.jpg" for i in range(3, 10)}

    capped = undrawn_photos(raw, small, limit=6, seed=1)
    assert [p.parent.name for p in capped] == ["cat"] * 3 + ["dog"] * 3
    assert set(capped) <= set(every)
    assert capped == undrawn_photos(raw, small, limit=6, seed=1)  # seeded
    assert capped != undrawn_photos(raw, small, limit=6, seed=2)

    images, labels, paths = load_photos(capped, image_size=32)
    assert images.shape == (6, 32, 32, 3) and labels.tolist() == [0.0] * 3 + [1.0] * 3
    assert paths == capped


def test_undrawn_photos_name_what_is_missing(tmp_path):
    raw, small = raw_archive(tmp_path)
    (small / "skipped.csv").unlink()
    with pytest.raises(ExtraTestError, match="dvc repro build_small_dataset"):
        undrawn_photos(raw, small, limit=4, seed=0)


def test_the_cap_is_checked():
    assert parse_params({"evaluate": {"extra_test_photos": 3000}}).evaluate.extra_test_photos == 3000
    with pytest.raises(ParamsError, match="evaluate.extra_test_photos"):
        parse_params({"evaluate": {"extra_test_photos": 1}})
