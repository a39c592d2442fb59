"""No hidden recomputation on the Live inspection page (issue 16 item 3).

A display-only control (colour scale, lens metric, attention layer/head, top-k
table position) must re-render from cached results: a counting forward hook
on the tiny model checks that no forward pass runs on such a change. The time
it takes is measured in bench/, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = Path(__file__).resolve().parent.parent / "pages" / "live_inspection.py"
TEXT = "the cat is very happy and the dog is sad\nthe food was very good"


@pytest.fixture()
def counted_page(tiny_lm, monkeypatch):
    import app.state

    import streamlit as st

    monkeypatch.setattr(app.state, "require_model", lambda: tiny_lm)
    # Another test in this process may have inspected the same text on the same tiny model: start from an
    # empty result cache, so "the first inspection runs the model" holds in any test order.
    st.cache_data.clear()
    calls = []
    handle = tiny_lm.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        yield AppTest.from_file(str(PAGE), default_timeout=120), calls
    finally:
        handle.remove()


def _ok(at):
    assert not at.exception, [str(e) for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_display_only_controls_run_no_forward_pass(counted_page):
    at, calls = counted_page
    at.run()
    at.text_area[0].set_value(TEXT)
    at.button[0].click().run()  # the form's submit button
    _ok(at)
    assert calls, "the first inspection must run the model"
    assert any("Inspecting prompt 1" in m.value for m in at.markdown)
    after_compute = len(calls)
    at.checkbox(key="inspect_log_norms").uncheck().run()
    at.radio(key="inspect_metric").set_value("rank").run()
    at.selectbox(key="inspect_layer").set_value(1).run()
    at.selectbox(key="inspect_head").set_value(2).run()
    at.selectbox(key="inspect_position").set_value(0).run()
    at.number_input(key="inspect_ranks_10").set_value(3).run()
    _ok(at)
    assert len(calls) == after_compute, "a display-only control ran the model again"
    # the lens is there after the re-renders, built from the cache, with the ranks asked for
    assert any("Top-3 of the top-10 logit-lens tokens at position 0" in c.value for c in at.caption)
    assert list(at.dataframe[-1].value.columns) == ["#1", "#2", "#3"]


def test_rejected_input_clears_previous_results(counted_page):
    at, _ = counted_page
    at.run()
    at.text_area[0].set_value(TEXT)
    at.button[0].click().run()
    _ok(at)
    assert any("Inspecting prompt" in m.value for m in at.markdown)
    at.text_area[0].set_value("   ")
    at.button[0].click().run()
    assert at.error  # "No prompts: ..."
    assert not any("Inspecting prompt" in m.value for m in at.markdown)
    at.run()  # and they do not come back on the next rerun
    assert not any("Inspecting prompt" in m.value for m in at.markdown)
