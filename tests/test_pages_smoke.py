"""Every registered page runs without an exception (AppTest), and the home page
survives bad model choices.

Pages are discovered at collection time from ``PAGES`` in ``app/main.py``, so a
page added later is covered as soon as its file exists. The real-model tests
share one model: ``st.cache_resource`` lives in this process, so only the first
AppTest run pays the load.
"""

from __future__ import annotations

import re

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.gguf_convert import GEMMA_NOTICE
from analysis.models import DEFAULT_MODEL
from app.widgets import registered_pages

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
TIMEOUT = 240  # the first run loads the real model; a loaded CI box is slow
PAGE_FILES = [file for file, _, _ in registered_pages()]


def _home(timeout: float = TIMEOUT) -> AppTest:
    return AppTest.from_file(str(MAIN), default_timeout=timeout).run()


def _shown(value: str) -> str:
    """A message as the reader sees it (app.text.md_escape backslash-escapes punctuation)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", value)


def _errors(at: AppTest) -> list[str]:
    return [_shown(e.value) for e in at.error]


def test_page_registry_lists_existing_files_in_order():
    assert PAGE_FILES[0] == "home.py"
    pages_dir = MAIN.parent.parent / "pages"
    assert all((pages_dir / f).is_file() for f in PAGE_FILES)
    assert len(PAGE_FILES) == len(set(PAGE_FILES))


def test_home_with_unloadable_model_shows_error_and_keeps_running(monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1, so a hub name fails at once.
    monkeypatch.setenv("REPSCOPE_MODEL", "no-such-org/no-such-model")
    at = _home(timeout=60)
    assert not at.exception
    assert any("no-such-org/no-such-model" in e and "offline" in e for e in _errors(at))
    assert not at.metric  # no facts without a model
    # The picker is still there, pointing at the name that failed, for editing.
    assert at.text_input(key="home_custom").value == "no-such-org/no-such-model"
    assert at.button[0].label == "Load"


def test_home_blank_custom_field_loads_catalogue_choice(monkeypatch):
    # A blank free-text field means "use the catalogue choice", never an empty name.
    monkeypatch.setenv("REPSCOPE_MODEL", "no-such-org/no-such-model")
    at = _home(timeout=60)
    at.text_input(key="home_custom").set_value("   ")
    at.selectbox(key="home_pick").set_value("gpt2")
    at.button[0].click().run()
    assert not at.exception
    assert any("'gpt2'" in e for e in _errors(at))  # tried gpt2 (offline: fails clearly)
    assert any("Kept the previous model" in w.value for w in at.warning)


@pytest.mark.real_model
@pytest.mark.parametrize("page", PAGE_FILES)
def test_page_runs_without_exception(page):
    at = _home()
    assert not at.exception, f"home: {[e.value for e in at.exception]}"
    if page != "home.py":
        at.switch_page(f"../pages/{page}").run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"


@pytest.mark.real_model
def test_home_shows_default_model_facts_and_gemma_notice():
    at = _home()
    assert not at.exception
    assert not _errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "18"
    assert metrics["d_model"] == "640"
    assert metrics["Backend"] == "bridge"
    assert any(GEMMA_NOTICE in i.value for i in at.info)
    assert any(GEMMA_NOTICE in c.value for c in at.sidebar.caption)
    assert any("process RSS" in c.value for c in at.caption)
    assert at.selectbox(key="home_pick").value == DEFAULT_MODEL


@pytest.mark.real_model
def test_home_bad_model_name_keeps_previous_model():
    at = _home()
    at.text_input(key="home_custom").set_value("definitely/not-a-model")
    at.button[0].click().run()
    assert not at.exception
    assert any("definitely/not-a-model" in e for e in _errors(at))
    assert any(DEFAULT_MODEL in _shown(w.value) for w in at.warning)
    # Previous choice restored: picker reset, facts of the default model still shown.
    assert at.text_input(key="home_custom").value == ""
    assert at.selectbox(key="home_pick").value == DEFAULT_MODEL
    assert {m.label: m.value for m in at.metric}["Layers"] == "18"
    # And the next rerun is clean again.
    at.run()
    assert not _errors(at) and not at.exception


@pytest.mark.real_model
def test_home_unavailable_device_keeps_previous_model():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the test needs a device that is missing")
    at = _home()
    before = {m.label: m.value for m in at.metric}
    at.selectbox(key="home_device").set_value("cuda")
    at.button[0].click().run()
    assert not at.exception
    assert any("cuda" in e.lower() for e in _errors(at))
    assert at.selectbox(key="home_device").value == "auto"
    assert {m.label: m.value for m in at.metric} == before
