"""Durations as people read them: the project's one way to print seconds."""

from __future__ import annotations

import math


def format_duration(seconds: float | None, *, rough: bool = False) -> str:
    """E.g. ``"45 s"``, ``"12 min 5 s"``, ``"2 h 3 min"``; ``"?"`` for no value.

    With ``rough`` (an estimate, where seconds would be false precision):
    ``"42 min"``, ``"3.5 h"`` or ``"2.1 days"``.
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if rough:
        if seconds < 2 * 3600:
            return f"{seconds / 60:.0f} min"
        if seconds < 48 * 3600:
            return f"{seconds / 3600:.1f} h"
        return f"{seconds / 86400:.1f} days"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
