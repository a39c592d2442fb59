"""app/jobs.py: worker-thread jobs with progress, stop and a result cache (no Streamlit replay)."""

from __future__ import annotations

import threading

import pytest
from streamlit.testing.v1 import AppTest

from analysis.progress import Stopped
from app import jobs


def _wait(job):
    job.thread.join(10)
    assert job.done


def test_finished_result_is_cached_under_its_key():
    calls = []

    def fn(progress):
        calls.append(1)
        progress(0.5, "half")
        return 42

    key = ("test-cache", id(fn))
    _wait(jobs.start(key, fn, "t"))
    assert jobs.cached(key) == 42 and calls == [1]
    jobs.forget(key)
    assert jobs.cached(key) is None


def test_stop_raises_stopped_inside_the_job_and_nothing_is_cached():
    go = threading.Event()

    def fn(progress):
        go.wait(5)
        for i in range(100):
            progress(i / 100, f"step {i}")
        return "never"

    key = ("test-stop",)
    job = jobs.start(key, fn, "t")
    job.stop_requested = True
    go.set()
    _wait(job)
    assert isinstance(job.error, Stopped) and jobs.cached(key) is None


def test_a_partial_result_is_returned_but_not_cached():
    class Partial:
        partial = True

    key = ("test-partial",)
    job = jobs.start(key, lambda progress: Partial(), "t")
    _wait(job)
    assert job.error is None and isinstance(job.result, Partial) and jobs.cached(key) is None


def test_a_running_job_is_found_again_by_key_not_started_twice():
    go = threading.Event()
    key = ("test-twice",)
    first = jobs.start(key, lambda progress: go.wait(5) and 1, "t")
    second = jobs.start(key, lambda progress: 2, "t")
    assert second is first
    go.set()
    _wait(first)
    assert jobs.cached(key) == 1


def test_run_in_a_page_draws_progress_and_reraises_errors():
    def page():
        import streamlit as st

        from app import jobs

        def fn(progress):
            progress(0.5, "working")
            return st.session_state.get("n", 0) + 7

        st.write(f"value={jobs.run(('apptest-run',), fn, 'Job')}")

        def bad(progress):
            raise ValueError("bad input, say so")

        try:
            jobs.run(("apptest-bad",), bad, "Bad")
        except ValueError as err:
            st.error(str(err))

    at = AppTest.from_function(page, default_timeout=30).run()
    assert not at.exception
    assert any("value=7" in m.value for m in at.markdown)
    assert [e.value for e in at.error] == ["bad input, say so"]
    # a finished job leaves neither its bar nor its Stop button behind
    assert not at.get("progress") and not [b for b in at.button if b.label == "Stop"]
    at.run()  # a rerun hits the cache: same output, no exception
    assert not at.exception and any("value=7" in m.value for m in at.markdown)


@pytest.fixture(autouse=True)
def _clean():
    yield
    for key in [("test-cache",), ("apptest-run",)]:
        jobs.forget(key)
