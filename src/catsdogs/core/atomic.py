"""Writing an output file so that it is either the old file or the whole new
one, never half of one: written beside its destination, then renamed over it.

A stage stopped by a signal, a crash or a full disk thus never leaves a
truncated model, metrics or plot file in a declared output.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[str], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary file in ``path``'s folder, then
    renames it to ``path``; the temporary file is removed if ``write`` fails.

    The temporary name keeps ``path``'s suffix, for writers that choose the
    format by it (``model.save``, ``np.savez``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`write_atomically`."""
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomically(data: object, path: Path, *, sort_keys: bool = False) -> Path:
    """Writes ``data`` as indented JSON (a final newline), whole or not at all: the project's one JSON writer."""
    return write_text_atomically(Path(path), json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as 64 lower-case hex digits, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
