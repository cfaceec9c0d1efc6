"""Gets the raw cat and dog photos from the first source in params.yaml that works.

A source is a local zip or folder (Kaggle or Microsoft layout) or an http(s)
URL of such a zip. URLs are downloaded resumably into a downloads folder and
verified before use; see :mod:`catsdogs.data.archive` for how photos are copied out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
from tqdm import tqdm

from catsdogs.core.atomic import sha256_file
from catsdogs.core.config import Source
from catsdogs.core.errors import CatsDogsError
from catsdogs.data.archive import extract_photos

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (10.0, 60.0)  # seconds to connect, seconds between bytes
DEFAULT_CHUNK = 1 << 20


class SourceError(CatsDogsError):
    """One source cannot be used: missing, unreachable or wrong."""


class DownloadError(SourceError):
    """A URL could not be downloaded."""


class ChecksumError(SourceError):
    """A file's sha256 is not the one params.yaml expects."""


class NoSourceError(CatsDogsError):
    """No source in params.yaml gave the photos."""


@dataclass(frozen=True)
class RawSummary:
    """What :func:`fetch_raw_photos` did.

    Attributes:
        source: the location that worked, as written in params.yaml.
        path: the local zip or folder the photos were copied from.
        counts: photos written per label.
        skipped: why each earlier source failed, in order.
    """

    source: str
    path: Path
    counts: dict[str, int]
    skipped: tuple[str, ...] = ()

    def __str__(self) -> str:
        per_class = ", ".join(f"{n} {label}s" for label, n in self.counts.items())
        lines = [f"skipped {reason}" for reason in self.skipped]
        lines.append(f"{sum(self.counts.values())} photos ({per_class}) from {self.source}")
        return "\n".join(lines)


def verify_sha256(path: Path, expected: str, name: str | None = None) -> None:
    """Raises :class:`ChecksumError` naming both digests unless ``path`` matches.

    Args:
        path: the file to hash.
        expected: the digest from params.yaml.
        name: how to call the file in the error; defaults to ``path``.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{name or path}: sha256 mismatch: expected {expected.lower()}, actual {actual}; "
            "the file is damaged or is not the one params.yaml names"
        )


def _connection_problem(err: requests.RequestException) -> str:
    """Turns a requests error into one line a user can read."""
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the connection broke during the transfer"
    # requests wraps urllib3's MaxRetryError, whose .reason is the real cause
    # ("Failed to resolve ...", "Connection refused") behind a connection repr.
    reason = getattr(err.args[0], "reason", None) if err.args else None
    text = str(reason or err)
    return "cannot connect: " + text.split("): ", 1)[-1]


def _fetch_once(url: str, part: Path, chunk_size: int, timeout: tuple[float, float]) -> None:
    """Fetches ``url`` into ``part``, continuing after the bytes already there."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: a compressed transfer would make byte offsets and
    # Content-Length disagree with the bytes written to disk.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and offset:
            # The range starts at or past the end: the .part is stale or
            # already whole but unverified. Starting over is always right.
            part.unlink()
            _fetch_once(url, part, chunk_size, timeout)
            return
        resp.raise_for_status()
        if offset and resp.status_code == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                raise DownloadError(
                    f"{url}: asked for bytes from {offset} but the server sent "
                    f"{resp.headers.get('Content-Range')!r}; delete {part} and run again"
                )
            mode = "ab"
        else:
            # A 200 to a Range request means the server ignores ranges and is
            # sending the whole file: start the .part over.
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, mode) as fh,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name) as bar,
        ):
            for chunk in resp.iter_content(chunk_size):
                fh.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        # Raised as the error requests gives for a cut-off body, so that
        # download_url resumes it the same way.
        raise requests.exceptions.ChunkedEncodingError(f"got {part.stat().st_size} of {total} bytes")


def download_url(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    attempts: int = 3,
) -> Path:
    """Downloads ``url`` to ``dest`` through ``dest.part``, resuming and verifying.

    A ``dest`` already there (and matching ``sha256`` when given) is reused.
    Bytes go to ``<dest>.part``; an interrupted transfer is resumed with an
    HTTP Range request, both on the next attempt and on the next run. Only a
    complete, verified file is renamed to ``dest``.

    Args:
        url: an http(s) URL.
        dest: where the finished file goes; its folder must exist.
        sha256: the expected hex digest, or None to skip the check.
        chunk_size: bytes read per write. requests drops the chunk a
            connection breaks in, so a resume restarts at the last whole chunk.
        timeout: (connect, read) timeouts in seconds.
        attempts: tries in this call; a try that added no bytes is not repeated.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: the server could not be reached or answered an error.
        ChecksumError: the download does not match ``sha256``; it is deleted.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            log.info("reusing %s", dest)
            return dest
        log.info("%s does not match its sha256; downloading it again", dest)
        dest.unlink()
    for attempt in range(1, attempts + 1):
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(url, part, chunk_size, timeout)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            got = part.stat().st_size if part.exists() else 0
            # Retry only a transfer that was making progress: an unreachable
            # server will not become reachable a second later.
            if got <= before or attempt == attempts:
                kept = f"; the {got} bytes received are kept in {part} and the next run resumes" if got else ""
                raise DownloadError(f"{url}: {_connection_problem(err)}{kept}") from err
            log.info("%s: transfer cut off after %d bytes; resuming", url, got)
        except requests.RequestException as err:
            raise DownloadError(f"{url}: {_connection_problem(err)}") from err
    if sha256 is not None:
        try:
            verify_sha256(part, sha256, f"{url} (downloaded to {part})")
        except ChecksumError as err:
            part.unlink()
            raise ChecksumError(f"{err}; the download was deleted") from None
    part.replace(dest)
    return dest


def download_name(url: str) -> str:
    """The file name a URL is saved under: the last part of its path."""
    return PurePosixPath(urlparse(url).path).name or "download"


def resolve_source(source: Source, *, root: Path, downloads_dir: Path) -> Path:
    """Returns a local, verified zip or folder for one source.

    Args:
        source: a path (relative to ``root``) or URL, with an optional sha256.
        root: the project root, which relative paths start from.
        downloads_dir: where URLs are downloaded to (created if needed).

    Returns:
        The local zip or folder.

    Raises:
        SourceError: the path is missing, a URL failed, or the sha256 differs.
    """
    if source.is_url:
        downloads_dir.mkdir(parents=True, exist_ok=True)
        return download_url(source.location, downloads_dir / download_name(source.location), sha256=source.sha256)
    path = root / Path(source.location).expanduser()
    if not path.exists():
        raise SourceError(f"{source.location}: not found (looked for {path.resolve()})")
    path = path.resolve()
    if source.sha256 is not None:
        if path.is_dir():
            raise SourceError(f"{source.location}: is a folder, which has no sha256; set its sha256 to null")
        verify_sha256(path, source.sha256)
    return path


def _no_source_message(failures: Sequence[str]) -> str:
    lines = ["none of the sources under download.sources in params.yaml gave the photos:"]
    lines += [f"  {i}. {reason}" for i, reason in enumerate(failures, 1)]
    lines += [
        "To use a copy you have (Kaggle's train.zip, Microsoft's kagglecatsanddogs zip, or a folder",
        "extracted from either), list its path first under download.sources in params.yaml, or run",
        "  dvc exp run -S 'download.sources=[/path/to/train.zip]'",
    ]
    return "\n".join(lines)


def fetch_raw_photos(
    sources: Sequence[Source],
    out_dir: str | Path,
    *,
    root: str | Path,
    downloads_dir: str | Path,
    max_entry_bytes: int,
) -> RawSummary:
    """Fills ``out_dir/cat`` and ``out_dir/dog`` from the first source that works.

    Args:
        sources: tried in order (params.yaml ``download.sources``).
        out_dir: the output folder, replaced only once a source succeeded.
        root: the project root; relative source paths start from it.
        downloads_dir: where URL sources are downloaded and kept for reuse.
        max_entry_bytes: the largest photo accepted in an archive.

    Returns:
        Which source was used and how many photos per label were written.

    Raises:
        NoSourceError: every source failed; the message says why for each.
            Every error message names its file or URL, so the list reads
            without repeating each location.
    """
    failures: list[str] = []
    for source in sources:
        log.info("trying %s", source.location)
        try:
            path = resolve_source(source, root=Path(root), downloads_dir=Path(downloads_dir))
            counts = extract_photos(path, out_dir, max_entry_bytes=max_entry_bytes)
        except CatsDogsError as err:
            failures.append(str(err))
            continue
        return RawSummary(source=source.location, path=path, counts=counts, skipped=tuple(failures))
    raise NoSourceError(_no_source_message(failures))
