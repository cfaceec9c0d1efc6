"""Runs a stage's ``main`` and turns user-facing errors into one clear message."""

from __future__ import annotations

import sys
from typing import Callable

from catsdogs.errors import CatsDogsError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Calls ``main``; a :class:`CatsDogsError` exits 1 with its message only.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        main()
    except CatsDogsError as err:
        print(f"\n{name}: error: {err}", file=sys.stderr)
        sys.exit(1)

