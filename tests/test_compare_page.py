"""The Compare page under AppTest on the tiny bridge model: base vs base in the lens view, and bad state specs."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = Path(__file__).resolve().parent.parent / "pages" / "compare.py"


def _page(monkeypatch, folder) -> AppTest:
    monkeypatch.setenv("REPSCOPE_MODEL", str(folder))
    return AppTest.from_file(str(PAGE), default_timeout=120).run()


def test_compare_page_lens_view_runs_and_draws(tiny_bridge_lm, monkeypatch, tmp_path):
    lm, _ = tiny_bridge_lm
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path))
    at = _page(monkeypatch, lm.name)
    assert not at.exception, at.exception
    at.radio(key="cmp_view").set_value("lens").run()
    at.text_input(key="cmp_prompt").set_value("the cat is happy").run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.dataframe  # the most-changed tokens table
    assert len(at.get("plotly_chart")) >= 1


def test_compare_page_rejects_a_bad_state_before_running(tiny_bridge_lm, monkeypatch, tmp_path):
    lm, _ = tiny_bridge_lm
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path))
    at = _page(monkeypatch, lm.name)
    at.text_input(key="cmp_b_base").set_value("steer:/nope.safetensors@alpha=1").run()
    assert not at.exception
    assert any("not found" in e.value for e in at.error)
    assert not at.button  # stopped before any Compare button
