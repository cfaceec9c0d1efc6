"""Decodes one candidate photo and decides what the dataset keeps of it.

:func:`inspect_photo` reads a file once, hashes its bytes, fully decodes it
with Pillow and returns either a :class:`PhotoRecord` (the photo is usable,
with the exact bytes the dataset will hold) or a :class:`Skip` (why not).
It is a top-level function of picklable arguments and results so that
:mod:`catsdogs.data.dataset` can run it in a process pool.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Reasons a file is left out of the dataset, as written in skipped.csv.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
TOO_SMALL = "too_small"
DECOMPRESSION_BOMB = "decompression_bomb"
UNSUPPORTED_MODE = "unsupported_mode"
DECODE_REASONS = (EMPTY, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_SMALL, DECOMPRESSION_BOMB, UNSUPPORTED_MODE)

# Fixed encoder settings, so re-encoding the same photo always gives the same
# bytes (for a given Pillow/libjpeg build).
JPEG_SETTINGS = {"quality": 95, "subsampling": "4:2:0", "optimize": False, "progressive": False}
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, not black

# Leading bytes of formats Pillow reads: a file that starts like one of them
# but cannot be identified is a damaged image, not some other kind of file.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "WEBP",
}

# In the compressed picture data after a start-of-scan, 0xFF is followed only
# by 0x00 (a stuffed byte), 0xD0-0xD7 (restart markers) or 0xFF (fill): any
# other pair is the next real marker.
_NEXT_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI, _TEM = 0xDA, 0xD9, 0x01

# Errors Pillow raises for damaged files; anything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


@dataclass(frozen=True)
class PhotoRecord:
    """A photo that decoded cleanly and is big enough.

    Attributes:
        path: the source file.
        sha256: hex digest of the bytes the dataset will hold (the source's
            bytes when copied, the re-encoded JPEG's otherwise).
        source_sha256: hex digest of the source file's bytes.
        width: width in pixels.
        height: height in pixels.
        source_format: the format Pillow found ("JPEG", "PNG", ...).
        source_mode: the source's Pillow mode ("RGB", "CMYK", "L", ...).
        conversion: why the photo was re-encoded ("" when copied as is).
        jpeg: the re-encoded baseline RGB JPEG, or None to copy the source.
    """

    path: Path
    sha256: str
    source_sha256: str
    width: int
    height: int
    source_format: str
    source_mode: str
    conversion: str = ""
    jpeg: bytes | None = None

    @property
    def converted(self) -> bool:
        return self.jpeg is not None

    def output_bytes(self) -> bytes:
        """Returns the bytes the dataset holds for this photo."""
        return self.jpeg if self.jpeg is not None else self.path.read_bytes()


@dataclass(frozen=True)
class Skip:
    """A candidate file left out, with a reason code and a readable detail."""

    path: Path
    reason: str
    detail: str


def inspect_photo(path: Path, min_side: int) -> PhotoRecord | Skip:
    """Reads, hashes and fully decodes one file; says whether and how to keep it.

    The file is decoded completely (``Image.load``) with Pillow's
    ``LOAD_TRUNCATED_IMAGES`` left off, so a cut-off file is caught here rather
    than by the training input pipeline. An RGB baseline JPEG is kept byte for
    byte; any other decodable image is converted to RGB and re-encoded as a
    baseline JPEG with fixed settings and no EXIF or ICC data.

    Args:
        path: the candidate file.
        min_side: the smallest width and height accepted, in pixels.

    Returns:
        A :class:`PhotoRecord` for a usable photo, else a :class:`Skip`.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        return Skip(path, EMPTY, "file has 0 bytes")
    try:
        image = _decode(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Skip(path, DECOMPRESSION_BOMB, str(err))
    except UnidentifiedImageError:
        return _unidentified(path, data)
    except _DECODE_ERRORS as err:
        reason = TRUNCATED if "truncated" in str(err).lower() else CORRUPT
        return Skip(path, reason, f"{type(err).__name__}: {err}")
    except Exception as err:
        # Raised across the process pool, so say which file caused it.
        err.add_note(f"while decoding {path}")
        raise
    with image:
        if image.format == "JPEG" and (problem := jpeg_stream_problem(data)):
            reason = TRUNCATED if problem.startswith("no end-of-image") else CORRUPT
            return Skip(path, reason, f"JPEG stream: {problem}")
        return _keep(path, data, image, min_side)


def _decode(data: bytes) -> Image.Image:
    """Opens and fully decodes an image held in memory."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a photo
        # of that many pixels is never a pet snapshot, so refuse it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        image.load()
    return image


def jpeg_stream_problem(data: bytes) -> str | None:
    """Walks a JPEG's marker segments; says what is wrong with them, if anything.

    Pillow stops reading once it has every pixel, so it accepts streams that
    are damaged further on: a segment whose length runs past the end of the
    file, or a missing end-of-image marker. TensorFlow's decoder reads the
    whole stream and rejects those, so they are caught here too.

    Args:
        data: the bytes of a file Pillow decoded as JPEG.

    Returns:
        None when every segment fits and the stream reaches its end-of-image
        marker, else a short description of the first problem.
    """
    pos, size = 2, len(data)  # past the start-of-image marker
    while True:
        if pos + 2 > size:
            return "no end-of-image marker: the file is cut short"
        if data[pos] != 0xFF:
            # Stray bytes between segments: libjpeg (and so TensorFlow) skips
            # them with a warning, so only the marker after them matters.
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return "no end-of-image marker: the file is cut short"
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            return None
        if marker == _TEM or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > size or length < 2 or pos + 2 + length > size:
            return f"segment 0x{marker:02x} at byte {pos} runs past the end of the file"
        pos += 2 + length
        if marker == _SOS:
            found = _NEXT_MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return "no end-of-image marker: the file is cut short"
            pos = found.start()


def _unidentified(path: Path, data: bytes) -> Skip:
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return Skip(path, CORRUPT, f"starts like a {name} file but Pillow cannot parse it")
    return Skip(path, NOT_AN_IMAGE, f"not an image format Pillow knows (starts with {data[:8].hex()})")


def _keep(path: Path, data: bytes, image: Image.Image, min_side: int) -> PhotoRecord | Skip:
    width, height = image.size
    if min(width, height) < min_side:
        return Skip(path, TOO_SMALL, f"{width}x{height} pixels, min_side is {min_side}")
    source_sha256 = hashlib.sha256(data).hexdigest()
    common = dict(
        path=path,
        source_sha256=source_sha256,
        width=width,
        height=height,
        source_format=image.format or "",
        source_mode=image.mode,
    )
    conversion = _conversion_needed(image)
    if not conversion:
        return PhotoRecord(sha256=source_sha256, **common)
    try:
        jpeg = encode_jpeg(to_rgb(image))
    except ValueError as err:  # Pillow has no conversion from this mode to RGB
        return Skip(path, UNSUPPORTED_MODE, f"mode {image.mode}: {err}")
    return PhotoRecord(sha256=hashlib.sha256(jpeg).hexdigest(), conversion=conversion, jpeg=jpeg, **common)


def _conversion_needed(image: Image.Image) -> str:
    """Says why an image cannot be copied as is ("" when it can)."""
    reasons = []
    if image.format != "JPEG":
        reasons.append(f"{image.format or 'unknown'} to JPEG")
    if image.mode != "RGB":
        reasons.append(f"{image.mode} to RGB")
    if image.format == "JPEG" and image.info.get("progressive"):
        reasons.append("progressive to baseline")
    return ", ".join(reasons)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow image to RGB, the one mode the dataset holds.

    Transparent pixels are laid over white. Integer greyscale modes (``I``,
    ``I;16``...) come from 16-bit files, so 0..65535 is scaled to 0..255
    instead of being clipped at 255 as a plain ``convert`` would.

    Args:
        image: a loaded image in any mode.

    Returns:
        A new RGB image with no metadata in ``info``.

    Raises:
        ValueError: Pillow cannot convert this mode to RGB.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        levels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        image = Image.fromarray(np.round(levels).astype(np.uint8))  # 2-D uint8: mode L
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        background.alpha_composite(rgba)
        image = background
    rgb = image.convert("RGB")
    # convert() copies info; dropping it keeps EXIF, ICC and comments out of
    # the re-encoded file, so its bytes depend on the pixels alone.
    rgb.info.clear()
    return rgb


def encode_jpeg(image: Image.Image) -> bytes:
    """Encodes an RGB image as a baseline JPEG with the fixed :data:`JPEG_SETTINGS`.

    Args:
        image: an RGB image.

    Returns:
        The JPEG file's bytes.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **JPEG_SETTINGS)
    return buffer.getvalue()
