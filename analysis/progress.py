"""The progress callback every long computation takes.

``progress(fraction, stage)``: ``fraction`` in [0, 1] of the whole job and a
short human-readable stage name ("extracting layer 3", "permutation 200/1000").
A callback may raise :class:`Stopped` to stop the job; a job that supports
stopping catches it, keeps what it finished, and returns a partial result
that says so. Callbacks are plain functions: the app draws its bar *outside*
any Streamlit cache (see app/progress.py), so nothing replays.
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[float, str], None]


class Stopped(Exception):
    """Raised by a progress callback to ask the running job to stop."""


def report(progress: Optional[Progress], fraction: float, stage: str) -> None:
    """Call ``progress`` if given, with ``fraction`` clipped to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), stage)


def scaled(progress: Optional[Progress], start: float, stop: float) -> Optional[Progress]:
    """A callback mapping a sub-job's [0, 1] onto [start, stop] of the parent's."""
    if progress is None:
        return None
    return lambda f, stage: progress(start + (stop - start) * min(1.0, max(0.0, f)), stage)
