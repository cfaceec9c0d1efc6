"""Stopping a stage on SIGINT or SIGTERM: at once, in a known way.

:func:`stop_handlers` makes both signals raise :class:`StageStopped`
in the main thread, which unwinds the stage like any exception: the MLflow
run is ended ``KILLED``, temporary files are removed, and the stage runner
prints one line and exits with ``128 + signal``, as a shell would report it.

SIGINT is installed explicitly because a shell starts a background job
(``dvc repro &``) with SIGINT ignored, and Python keeps an inherited
"ignore": without this, Ctrl-C-style stops of a background run do nothing.

Writes that must not be cut in half (a resume checkpoint, the final outputs
and model registration) run inside :func:`deferred`: a stop that arrives
meanwhile waits until the block ends.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_deferring = 0
_pending: int | None = None


class StageStopped(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that
    ``except Exception`` in library code does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.detail = ""  # what was reached and kept, added on the way up
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    if _deferring:
        _pending = signum
        return
    raise StageStopped(signum)


@contextmanager
def stop_handlers() -> Iterator[None]:
    """Makes SIGINT and SIGTERM raise :class:`StageStopped` inside the block,
    even where the parent shell set SIGINT to be ignored; the previous
    handlers come back after it."""
    previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_requested() -> int | None:
    """The signal that arrived during a :func:`deferred` block, if any."""
    return _pending


@contextmanager
def deferred(*, stop_after: bool = True) -> Iterator[None]:
    """Holds a stop signal back until the block has run.

    Args:
        stop_after: raise :class:`StageStopped` when the block ends if a
            signal came meanwhile; False leaves it to the caller (see
            :func:`stop_requested`), e.g. once a stage's outputs are all written
            and it may as well finish.
    """
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if stop_after and not _deferring and _pending is not None:
        signum, _pending = _pending, None
        raise StageStopped(signum)
