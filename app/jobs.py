"""Long computations in the app: progress with a stage and an estimate, a Stop button, no cache replay.

Why not ``st.cache_data`` with a progress callback: a cached function that
touches a Streamlit element (a bar made outside it) is *replayed* on the next
cache hit into a block that no longer exists (``CacheReplayClosureError``),
and the broken entry is shared by every session. So here:

* the computation runs in a worker thread and never calls Streamlit; it gets
  a plain :data:`analysis.progress.Progress` callback that only writes to the
  job's fields;
* the page's script thread draws the bar (stage, percent, time left) and a
  Stop button, polling the job;
* finished results go into a process-wide LRU keyed by the caller's key
  (frozen configs and the model name), so a repeat run with the same
  settings, in any browser session, returns at once;
* Stop sets a flag; the next progress call inside the job raises
  :class:`analysis.progress.Stopped`. A job that supports stopping catches it
  at a step boundary and returns what it finished (marked partial); one that
  does not is abandoned and its result is never cached.
* If the user changes a widget mid-run, Streamlit reruns the page: the job
  keeps running and the next run of the page finds it by key and keeps
  showing its progress, so nothing is computed twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from analysis.progress import Stopped

_LOCK = threading.Lock()
_RESULTS: "OrderedDict[Hashable, Any]" = OrderedDict()
_JOBS: dict[Hashable, "Job"] = {}
MAX_RESULTS = 64
POLL_S = 0.25


@dataclass
class Job:
    """One computation in a worker thread; only plain fields are shared with the script."""

    key: Hashable
    label: str
    fraction: float = 0.0
    stage: str = "starting"
    started: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def progress(self, fraction: float, stage: str) -> None:
        """The callback handed to the computation (never touches Streamlit)."""
        self.fraction = min(1.0, max(0.0, float(fraction)))
        self.stage = str(stage)
        if self.stop_requested:
            raise Stopped(f"stopped by the user at {self.fraction:.0%} ({self.stage})")

    def eta_text(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.fraction <= 0.02 or elapsed < 1.0:
            return f"{elapsed:.0f} s so far"
        left = elapsed * (1.0 - self.fraction) / self.fraction
        return f"{elapsed:.0f} s so far, about {left:.0f} s left"


def cached(key: Hashable) -> Any | None:
    """The finished result stored under ``key``, or None."""
    with _LOCK:
        if key in _RESULTS:
            _RESULTS.move_to_end(key)
            return _RESULTS[key]
    return None


def _store(key: Hashable, value: Any) -> None:
    with _LOCK:
        _RESULTS[key] = value
        _RESULTS.move_to_end(key)
        while len(_RESULTS) > MAX_RESULTS:
            _RESULTS.popitem(last=False)


def forget(key: Hashable) -> None:
    with _LOCK:
        _RESULTS.pop(key, None)


def clear() -> None:
    """Forget every finished result (running jobs keep running); tests start from an empty cache."""
    with _LOCK:
        _RESULTS.clear()


def start(key: Hashable, fn: Callable[[Callable[[float, str], None]], Any], label: str) -> Job:
    """Start ``fn(progress)`` in a worker thread under ``key`` unless a job with that key is running."""
    with _LOCK:
        job = _JOBS.get(key)
        if job is not None and not job.done:
            return job
        job = Job(key=key, label=label)
        _JOBS[key] = job

    def work() -> None:
        try:
            job.result = fn(job.progress)
        except BaseException as err:  # noqa: BLE001 - handed to the script thread, which re-raises
            job.error = err
        finally:
            job.done = True
            if job.error is None and not getattr(job.result, "partial", False):
                _store(key, job.result)

    job.thread = threading.Thread(target=work, name=f"repscope-job-{label}", daemon=True)
    job.thread.start()
    return job


def run(key: Hashable, fn: Callable[[Callable[[float, str], None]], Any], label: str, *,
        stop_key: str | None = None) -> Any:
    """The result of ``fn(progress)`` for ``key``: cached, or computed now with a bar and a Stop button.

    Call from a page's script (never inside ``st.cache_*``). Raises what ``fn``
    raised; a job stopped before it could return anything raises ``Stopped``.
    """
    import streamlit as st

    hit = cached(key)
    if hit is not None:
        return hit
    job = start(key, fn, label)
    box = st.empty()  # one placeholder: emptying it removes the bar and the Stop button together
    with box.container():
        bar = st.progress(0.0, text=f"{label}: starting")
        stop = st.button("Stop", key=stop_key or f"stop-{abs(hash(key))}", help="Stop after the current step; "
                         "what is finished is kept where the analysis supports it.")
    if stop:
        job.stop_requested = True
    while not job.done:
        bar.progress(job.fraction, text=f"{label}: {job.stage} ({job.fraction:.0%}; {job.eta_text()})")
        job.thread.join(POLL_S)
    box.empty()
    with _LOCK:
        if _JOBS.get(key) is job:
            del _JOBS[key]
    if job.error is not None:
        raise job.error
    return job.result
