"""Tests of the download stage: sources, layouts, unsafe zips, resumable URLs."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import stat
import struct
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from catsdogs.core.config import Source
from catsdogs.data.archive import ArchiveError, LayoutError, UnsafeEntryError, _copy_limited, extract_photos
from catsdogs.data.download import (
    ChecksumError,
    DownloadError,
    NoSourceError,
    SourceError,
    download_url,
    fetch_raw_photos,
    resolve_source,
    sha256_file,
)
from catsdogs.core.errors import CatsDogsError

MIRROR = Path("/work/shared/datasets/dogs-vs-cats/train.zip")
MIRROR_SHA256 = "88bf3326eb2ffe197e02049ee0601808d0edd260f1d9c320755b5675c5e3aa69"
MB = 1024 * 1024


# ---------------------------------------------------------------- fixtures


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


KAGGLE = {
    "train/cat.1.jpg": jpeg((200, 0, 0)),
    "train/cat.2.jpg": jpeg((0, 200, 0)),
    "train/dog.1.jpg": jpeg((0, 0, 200)),
}
MICROSOFT = {
    "PetImages/Cat/1.jpg": jpeg((200, 0, 0)),
    "PetImages/Cat/666.jpg": b"this is not a JPEG",
    "PetImages/Cat/Thumbs.db": b"\xd0\xcf\x11\xe0 windows thumbnail cache",
    "PetImages/Dog/1.jpg": jpeg((0, 0, 200)),
    "PetImages/Dog/Thumbs.db": b"\xd0\xcf\x11\xe0 windows thumbnail cache",
    "readme[1].txt": b"Microsoft readme",
}


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_folder(root: Path, entries: dict[str, bytes]) -> Path:
    for name, data in entries.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def listing(out: Path) -> dict[str, set[str]]:
    return {d.name: {f.name for f in d.iterdir()} for d in out.iterdir() if d.is_dir()}


def leftovers(folder: Path) -> list[str]:
    """Temporary folders an extraction may have left beside its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class FileServer:
    """Serves one payload over HTTP on 127.0.0.1 and records each request's Range.

    cut_after: on the first request only, send the headers of the whole file
        but close the connection after this many body bytes.
    honour_range: answer a Range request with 206 (else 200 and the whole file).
    """

    def __init__(self, payload: bytes, *, cut_after: int | None = None, honour_range: bool = True):
        self.payload = payload
        self.cut_after = cut_after
        self.honour_range = honour_range
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/data/photos.zip":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                body, status, start = server.payload, 200, 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").removesuffix("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body, status = body[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_after is not None and len(server.ranges) == 1:
                    body = body[: server.cut_after]  # then the connection closes: HTTP/1.0
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/photos.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def serve():
    servers: list[FileServer] = []

    def start(payload: bytes, **kwargs: object) -> FileServer:
        servers.append(FileServer(payload, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def payload() -> bytes:
    """A zip of the Kaggle fixture, big enough to arrive in several chunks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in KAGGLE.items():
            zf.writestr(name, data)
        zf.writestr("train/filler.txt", bytes(range(256)) * 200)
    return buf.getvalue()


CHUNK = 1024


def kept_after_cut(payload: bytes) -> int:
    """Bytes on disk after the server cuts the body at half: whole chunks only.

    requests drops a chunk the connection broke in the middle of, so the
    resume point is the last whole chunk, which must still be past zero.
    """
    kept = len(payload) // 2 // CHUNK * CHUNK
    assert kept > 0
    return kept


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/photos.zip"


# ---------------------------------------------------------------- layouts


def test_kaggle_zip_is_normalised_to_cat_and_dog_folders(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "train.zip", {"train/": b"", **KAGGLE})
    counts = extract_photos(archive, tmp_path / "raw", max_entry_bytes=MB)
    assert counts == {"cat": 2, "dog": 1}
    assert listing(tmp_path / "raw") == {"cat": {"cat.1.jpg", "cat.2.jpg"}, "dog": {"dog.1.jpg"}}
    assert (tmp_path / "raw/cat/cat.2.jpg").read_bytes() == KAGGLE["train/cat.2.jpg"]
    assert leftovers(tmp_path) == []
    # The manifest the later stages depend on: every photo, its size and digest.
    manifest = pd.read_csv(tmp_path / "raw" / "manifest.csv")
    assert list(manifest.columns) == ["label", "filename", "bytes", "sha256"]
    assert manifest[["label", "filename"]].values.tolist() == [["cat", "cat.1.jpg"], ["cat", "cat.2.jpg"], ["dog", "dog.1.jpg"]]
    for row in manifest.itertuples():
        data = (tmp_path / "raw" / row.label / row.filename).read_bytes()
        assert (row.bytes, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_microsoft_zip_copies_every_jpg_name_but_not_thumbs_db(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "kagglecatsanddogs_5340.zip", MICROSOFT)
    counts = extract_photos(archive, tmp_path / "raw", max_entry_bytes=MB)
    assert counts == {"cat": 2, "dog": 1}
    # The junk .jpg is copied: judging photos is build_small_dataset's job.
    assert listing(tmp_path / "raw") == {"cat": {"1.jpg", "666.jpg"}, "dog": {"1.jpg"}}
    assert (tmp_path / "raw/cat/666.jpg").read_bytes() == b"this is not a JPEG"
    assert (tmp_path / "raw/dog/1.jpg").read_bytes() == MICROSOFT["PetImages/Dog/1.jpg"]


@pytest.mark.parametrize(
    ("entries", "point_at", "expected"),
    [
        (KAGGLE, "train", {"cat": {"cat.1.jpg", "cat.2.jpg"}, "dog": {"dog.1.jpg"}}),
        (KAGGLE, ".", {"cat": {"cat.1.jpg", "cat.2.jpg"}, "dog": {"dog.1.jpg"}}),
        (MICROSOFT, "PetImages", {"cat": {"1.jpg", "666.jpg"}, "dog": {"1.jpg"}}),
    ],
    ids=["kaggle-train-folder", "kaggle-parent-folder", "microsoft-petimages-folder"],
)
def test_extracted_folder_is_read_like_its_zip(
    tmp_path: Path, entries: dict[str, bytes], point_at: str, expected: dict[str, set[str]]
) -> None:
    folder = make_folder(tmp_path / "extracted", entries)
    counts = extract_photos(folder / point_at, tmp_path / "raw", max_entry_bytes=MB)
    assert listing(tmp_path / "raw") == expected
    assert counts == {label: len(names) for label, names in expected.items()}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"photos/a.jpg": b"x", "photos/b.jpg": b"y"}, "expected Kaggle's train/cat.N.jpg"),
        ({"train/cat.1.jpg": b"x"}, "holds no dog photos"),
        ({"train.zip": b"nested", "test1.zip": b"nested"}, "extract that and use it"),
        ({**KAGGLE, **MICROSOFT}, "both the Kaggle and the Microsoft layout"),
    ],
    ids=["unknown", "one-class", "kaggle-competition-zip", "both"],
)
def test_bad_layout_is_a_clear_error(tmp_path: Path, entries: dict[str, bytes], message: str) -> None:
    archive = make_zip(tmp_path / "odd.zip", entries)
    with pytest.raises(LayoutError, match=message) as info:
        extract_photos(archive, tmp_path / "raw", max_entry_bytes=MB)
    assert str(archive) in str(info.value)
    assert not (tmp_path / "raw").exists()
    assert leftovers(tmp_path) == []


def test_not_a_zip_is_an_archive_error(tmp_path: Path) -> None:
    bogus = tmp_path / "train.zip"
    bogus.write_bytes(b"<html>login required</html>")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_photos(bogus, tmp_path / "raw", max_entry_bytes=MB)
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------- unsafe zips


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, whose mode bits live in the high 16 bits
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "data", "message"),
    [
        (zipfile.ZipInfo("../evil.jpg"), b"x", "points outside the output folder"),
        (zipfile.ZipInfo("train/../../cat.9.jpg"), b"x", "points outside the output folder"),
        (zipfile.ZipInfo("/etc/cron.d/cat.9.jpg"), b"x", "absolute path"),
        (zipfile.ZipInfo("C:/Windows/cat.9.jpg"), b"x", "absolute path"),
        (symlink_entry("train/cat.9.jpg"), b"/etc/passwd", "symbolic link"),
        (zipfile.ZipInfo("train/cat.9.jpg"), b"\xff" * 2000, "more than the 1000"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive", "symlink", "oversize"],
)
def test_unsafe_entry_refuses_the_whole_archive(
    tmp_path: Path, entry: zipfile.ZipInfo, data: bytes, message: str
) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, photo in KAGGLE.items():
            zf.writestr(name, photo)
        zf.writestr(entry, data)
    assert entry.filename in zipfile.ZipFile(archive).namelist()  # zipfile kept the name as given
    with pytest.raises(UnsafeEntryError, match=message) as info:
        extract_photos(archive, tmp_path / "out" / "raw", max_entry_bytes=1000)
    assert str(archive) in str(info.value) and repr(entry.filename) in str(info.value)
    assert not (tmp_path / "out" / "raw").exists()
    assert leftovers(tmp_path / "out") == []
    assert not (tmp_path / "evil.jpg").exists()


def test_entry_bigger_than_its_header_says_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {**KAGGLE, "train/cat.9.jpg": b"\xff" * 5000})
    raw = bytearray(archive.read_bytes())
    # Declare 100 bytes for the 5,000-byte entry in both its local and central headers.
    name = b"train/cat.9.jpg"
    local = raw.find(name) - 30  # the local header is 30 bytes, then the name
    assert raw[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, local + 22, 100)
    central = raw.rfind(name) - 46
    assert raw[central : central + 4] == b"PK\x01\x02"
    struct.pack_into("<I", raw, central + 24, 100)
    archive.write_bytes(bytes(raw))
    assert zipfile.ZipFile(archive).getinfo("train/cat.9.jpg").file_size == 100

    with pytest.raises(ArchiveError, match=r"liar\.zip"):
        extract_photos(archive, tmp_path / "raw", max_entry_bytes=1000)
    assert not (tmp_path / "raw").exists()
    assert leftovers(tmp_path) == []


def test_copy_guard_stops_at_the_limit_whatever_the_header_said() -> None:
    dst = io.BytesIO()
    with pytest.raises(UnsafeEntryError, match="more than the 1000 bytes"):
        _copy_limited(io.BytesIO(b"x" * 5000), dst, 1000, "liar.zip: entry 'train/cat.9.jpg'")
    assert dst.tell() <= 1000
    _copy_limited(io.BytesIO(b"x" * 1000), dst := io.BytesIO(), 1000, "ok")
    assert dst.getvalue() == b"x" * 1000


# ---------------------------------------------------------------- atomic output


def test_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"cat/old.jpg": b"old cat", "dog/old.jpg": b"old dog"})
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, photo in KAGGLE.items():
            zf.writestr(name, photo)
        zf.writestr("train/dog.2.jpg", b"\xff" * 5000)  # written after good photos were copied
    with pytest.raises(UnsafeEntryError):
        extract_photos(bad, raw, max_entry_bytes=1000)
    assert listing(raw) == {"cat": {"old.jpg"}, "dog": {"old.jpg"}}
    assert leftovers(tmp_path) == []


def test_successful_run_replaces_the_previous_output(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"cat/old.jpg": b"old cat", "bird/x.jpg": b"?"})
    extract_photos(make_zip(tmp_path / "train.zip", KAGGLE), raw, max_entry_bytes=MB)
    assert listing(raw) == {"cat": {"cat.1.jpg", "cat.2.jpg"}, "dog": {"dog.1.jpg"}}
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- sources


def test_first_missing_source_falls_back_to_the_second(tmp_path: Path) -> None:
    (tmp_path / "zips").mkdir()
    make_zip(tmp_path / "zips" / "train.zip", KAGGLE)
    sources = (
        Source("../nowhere/train.zip", sha256="0" * 64),
        Source("zips/train.zip", sha256=sha256_file(tmp_path / "zips" / "train.zip")),
    )
    summary = fetch_raw_photos(
        sources, tmp_path / "data/raw", root=tmp_path, downloads_dir=tmp_path / "data/downloads", max_entry_bytes=MB
    )
    assert summary.source == "zips/train.zip"
    assert summary.path == tmp_path / "zips" / "train.zip"
    assert summary.counts == {"cat": 2, "dog": 1}
    assert len(summary.skipped) == 1 and "../nowhere/train.zip: not found" in summary.skipped[0]
    assert "3 photos (2 cats, 1 dogs) from zips/train.zip" in str(summary)
    assert listing(tmp_path / "data/raw")["cat"] == {"cat.1.jpg", "cat.2.jpg"}
    assert not (tmp_path / "data/downloads").exists()  # no URL was tried


def test_no_working_source_is_one_error_listing_every_source(tmp_path: Path, serve) -> None:
    good = make_zip(tmp_path / "train.zip", KAGGLE)
    junk = make_zip(tmp_path / "junk.zip", {"photos/a.jpg": b"x"})
    (tmp_path / "folder").mkdir()
    server = serve(b"")
    sources = (
        Source("missing/train.zip"),
        Source("train.zip", sha256="ab" * 32),
        Source(str(junk)),
        Source("folder", sha256="cd" * 32),
        Source(closed_port_url()),
        Source(server.url.replace("photos.zip", "gone.zip")),
    )
    with pytest.raises(NoSourceError) as info:
        fetch_raw_photos(sources, tmp_path / "raw", root=tmp_path, downloads_dir=tmp_path / "dl", max_entry_bytes=MB)
    message = str(info.value)
    assert isinstance(info.value, CatsDogsError)
    lines = message.splitlines()
    assert lines[1].startswith("  1. missing/train.zip: not found")
    assert lines[2].startswith("  2. ") and "ab" * 32 in lines[2] and sha256_file(good) in lines[2]
    assert lines[3].startswith(f"  3. {junk}") and "expected Kaggle's train/cat.N.jpg" in lines[3]
    assert lines[4].startswith("  4. folder: is a folder")
    assert lines[5].startswith("  5. http://127.0.0.1:") and "Connection refused" in lines[5]
    assert lines[6].startswith("  6. ") and "HTTP 404" in lines[6]
    assert "list its path first under download.sources in params.yaml" in message
    assert "dvc exp run -S 'download.sources=[/path/to/train.zip]'" in message
    assert "Traceback" not in message
    assert not (tmp_path / "raw").exists()
    assert good.exists()  # a user's own file is never deleted, even when it mismatches


def test_local_checksum_mismatch_names_both_digests_and_keeps_the_file(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "train.zip", KAGGLE)
    with pytest.raises(ChecksumError) as info:
        resolve_source(Source("train.zip", sha256="AB" * 32), root=tmp_path, downloads_dir=tmp_path / "dl")
    assert str(archive) in str(info.value)
    assert f"expected {'ab' * 32}, actual {sha256_file(archive)}" in str(info.value)
    assert archive.exists()


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 5000)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- URLs


def test_url_source_is_downloaded_verified_and_extracted(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload)
    sha = hashlib.sha256(payload).hexdigest()
    summary = fetch_raw_photos(
        (Source(server.url, sha),), tmp_path / "raw", root=tmp_path, downloads_dir=tmp_path / "dl", max_entry_bytes=MB
    )
    assert summary.counts == {"cat": 2, "dog": 1}
    assert (tmp_path / "dl/photos.zip").read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["photos.zip"]

    # A second run reuses the verified file without asking the server.
    fetch_raw_photos(
        (Source(server.url, sha),), tmp_path / "raw", root=tmp_path, downloads_dir=tmp_path / "dl", max_entry_bytes=MB
    )
    assert server.ranges == [None]


def test_download_checksum_mismatch_leaves_nothing_behind(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload)
    wrong = "0" * 64
    with pytest.raises(NoSourceError) as info:
        fetch_raw_photos(
            (Source(server.url, wrong),), tmp_path / "raw", root=tmp_path, downloads_dir=tmp_path / "dl",
            max_entry_bytes=MB,
        )
    message = str(info.value)
    assert server.url in message
    assert f"expected {wrong}, actual {hashlib.sha256(payload).hexdigest()}" in message
    assert list((tmp_path / "dl").iterdir()) == []  # neither photos.zip nor photos.zip.part
    assert not (tmp_path / "raw").exists()
    assert leftovers(tmp_path) == []


def test_cut_off_transfer_resumes_with_a_range_request(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload, cut_after=len(payload) // 2)
    sha = hashlib.sha256(payload).hexdigest()
    dest = download_url(server.url, tmp_path / "photos.zip", sha256=sha, chunk_size=CHUNK)
    assert server.ranges == [None, f"bytes={kept_after_cut(payload)}-"]
    assert dest.read_bytes() == payload
    assert not (tmp_path / "photos.zip.part").exists()


def test_cut_off_transfer_is_kept_for_the_next_run(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload, cut_after=len(payload) // 2)
    dest, kept = tmp_path / "photos.zip", kept_after_cut(payload)
    with pytest.raises(DownloadError, match=f"broke during the transfer; the {kept} bytes received are kept in "):
        download_url(server.url, dest, attempts=1, chunk_size=CHUNK)
    assert not dest.exists()
    assert (tmp_path / "photos.zip.part").read_bytes() == payload[:kept]

    download_url(server.url, dest, sha256=hashlib.sha256(payload).hexdigest(), attempts=1, chunk_size=CHUNK)
    assert server.ranges == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload, honour_range=False)
    third = len(payload) // 3
    (tmp_path / "photos.zip.part").write_bytes(payload[:third])
    dest = download_url(server.url, tmp_path / "photos.zip", sha256=hashlib.sha256(payload).hexdigest())
    assert server.ranges == [f"bytes={third}-"]
    assert dest.read_bytes() == payload  # not the first third twice


def test_stale_part_past_the_end_starts_over(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload)
    (tmp_path / "photos.zip.part").write_bytes(payload + b"stale tail")
    dest = download_url(server.url, tmp_path / "photos.zip")
    assert server.ranges == [f"bytes={len(payload) + 10}-", None]
    assert dest.read_bytes() == payload


def test_existing_download_with_wrong_sha256_is_fetched_again(tmp_path: Path, serve, payload: bytes) -> None:
    server = serve(payload)
    (tmp_path / "photos.zip").write_bytes(b"an older, different file")
    dest = download_url(server.url, tmp_path / "photos.zip", sha256=hashlib.sha256(payload).hexdigest())
    assert server.ranges == [None]
    assert dest.read_bytes() == payload


def test_http_error_is_a_download_error(tmp_path: Path, serve) -> None:
    server = serve(b"")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_url(server.url.replace("photos.zip", "gone.zip"), tmp_path / "gone.zip")
    assert isinstance(info.value, SourceError)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not MIRROR.exists(), reason=f"the local mirror {MIRROR} is absent (no /work/shared here)")
def test_real_mirror_gives_4000_cats_and_4000_dogs(tmp_path: Path) -> None:
    summary = fetch_raw_photos(
        (Source(str(MIRROR), MIRROR_SHA256),),
        tmp_path / "raw",
        root=tmp_path,
        downloads_dir=tmp_path / "dl",
        max_entry_bytes=64 * MB,
    )
    try:
        assert summary.counts == {"cat": 4000, "dog": 4000}
        assert len(list((tmp_path / "raw/cat").glob("cat.*.jpg"))) == 4000
        assert len(list((tmp_path / "raw/dog").glob("dog.*.jpg"))) == 4000
    finally:
        # 190 MB of photos: do not leave them in pytest's kept temp folders.
        shutil.rmtree(tmp_path / "raw")
