"""Runs a stage's ``main``: one clear message for user errors, and a record
of the stage's wall time and peak memory.

Every stage writes ``metrics/timings/<stage>.json``, an output versioned in
Git beside the metrics (not a DVC metric, so that ``dvc metrics show`` stays
one row per model), which ``make bench`` adds up.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

from catsdogs.core.atomic import write_json_atomically
from catsdogs.core.errors import CatsDogsError
from catsdogs.core.stopping import StageStopped, stop_handlers, stop_requested

TIMINGS_DIR = Path("metrics/timings")


def timing_path(name: str) -> Path:
    """Where a stage's wall time and peak memory go."""
    return TIMINGS_DIR / f"{name}.json"


def peak_memory_mib() -> float:
    """The most resident memory this process has held so far, in MiB."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def seconds_since_process_start() -> float:
    """Wall time since this process began, imports included (TensorFlow's take seconds)."""
    return time.time() - psutil.Process().create_time()


def record_timing(name: str, path: Path | None = None) -> dict:
    """Writes the stage's wall time so far and its peak memory.

    Args:
        name: the DVC stage name.
        path: where to write; :func:`timing_path` by default.

    Returns:
        ``{"stage", "wall_seconds", "peak_memory_mib"}``.
    """
    path = timing_path(name) if path is None else path
    record = {
        "stage": name,
        "wall_seconds": round(seconds_since_process_start(), 2),
        "peak_memory_mib": round(peak_memory_mib(), 1),
    }
    write_json_atomically(record, path)
    return record


def run_stage(name: str, main: Callable[[], None], timings: Path | None = None) -> None:
    """Calls ``main`` then records the stage's cost; a :class:`CatsDogsError`
    exits 1 with its message only.

    SIGINT and SIGTERM stop the stage (see :mod:`catsdogs.core.stopping`): one
    line says so and the process exits with ``128 + signal``. Any other
    exception is a bug and keeps its traceback.

    Args:
        name: the DVC stage name.
        main: the stage's work.
        timings: where the wall time and peak memory go
            (``metrics/timings/<name>.json`` by default).
    """
    try:
        with stop_handlers():
            main()
            record = record_timing(name, timings)
    except CatsDogsError as err:
        print(f"\n{name}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except StageStopped as stop:
        print(f"\n{name}: stopped by {stop.signal_name}{stop.detail}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Everything is written and the run ended: skip the interpreter's
        # teardown, which waits about 10 s here for an interrupted tf.data
        # pipeline's threads.
        os._exit(stop.exit_code)
    print(f"{name}: {record['wall_seconds']:.0f} s in all, peak memory {record['peak_memory_mib']:.0f} MiB")
    if (signum := stop_requested()) is not None:
        print(f"{name}: {signal.Signals(signum).name} came while the outputs were being saved: finished them first")
