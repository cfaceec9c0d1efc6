"""Where the project is, also from inside a DVC experiment's copy of it.

``dvc exp run --temp`` and queued experiments run the stages in a copy of the
repository under ``<project>/.dvc/tmp/exps/``. A path relative to the
project, such as the photo mirror ``../shared/...`` in params.yaml or the
MLflow store, must still mean the same file there, so both are resolved from
:func:`project_root`: ``DVC_ROOT``, which DVC sets for every stage it runs to
the project's root (for an experiment's copy too: the copy is the working
directory), else the path itself, for a stage run by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "DVC_ROOT"

_EXPS_MARKER = (".dvc", "tmp", "exps")


def project_root(cwd: str | Path | None = None) -> Path:
    """Finds the project a stage belongs to.

    Inside a DVC experiment's temporary copy of the repo
    (``<root>/.dvc/tmp/exps/<name>/...``) that is the project holding the copy,
    not the copy, which DVC deletes after the run.

    Args:
        cwd: where the stage runs; the current directory by default.

    Returns:
        The absolute project root: ``$DVC_ROOT`` when DVC runs the stage; else
        the part of ``cwd`` before ``/.dvc/tmp/exps/``, else the nearest
        folder holding ``dvc.yaml`` or ``.dvc/``, else ``cwd`` itself.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    cwd = Path(cwd if cwd is not None else Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(_EXPS_MARKER) + 1):
        if parts[i : i + len(_EXPS_MARKER)] == _EXPS_MARKER:
            return Path(*parts[:i])
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".dvc").is_dir():
            return folder
    return cwd


def in_project(path: str | Path, cwd: str | Path | None = None) -> Path:
    """A path from params.yaml as an absolute path: relative ones start at :func:`project_root`.

    Args:
        path: absolute, ``~``-prefixed or relative to the project root.
        cwd: where the stage runs; the current directory by default.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root(cwd) / path
