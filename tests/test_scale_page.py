"""Home page: the memory estimate refuses a model that would not fit, before loading it,
and the split-over-GPUs choices are offered."""

from __future__ import annotations

import re

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


@pytest.mark.real_model
def test_home_refuses_a_model_too_big_and_keeps_the_loaded_one(monkeypatch):
    from analysis import models

    at = AppTest.from_file(str(MAIN), default_timeout=240).run()
    before = {m.label: m.value for m in at.metric}
    assert "split over GPUs (auto)" in at.selectbox(key="home_device").options
    monkeypatch.setattr("analysis.scale.memory.free_memory", lambda: {"cpu": 8 * 10**9})
    monkeypatch.setattr(models, "_load_uncached", lambda *a, **k: pytest.fail("tried to load"))
    at.selectbox(key="home_pick").set_value("gemma-2-27b")
    at.selectbox(key="home_device").set_value("cpu")
    at.button[0].click().run()
    assert not at.exception
    errors = [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", e.value) for e in at.error]  # as shown (md-escaped)
    assert any("gemma-2-27b needs" in e and "would not fit" in e for e in errors), errors
    assert {m.label: m.value for m in at.metric} == before
