"""The Concepts page on a tiny model (AppTest): run, figures, uploads and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = Path(__file__).resolve().parent.parent / "pages" / "concepts.py"


@pytest.fixture
def page(monkeypatch, tmp_path):
    from tests.conftest import make_tiny_lm

    import app.state

    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("REPSCOPE_MODEL", "tiny-concepts-page")  # its own st.cache_resource key
    monkeypatch.setattr(app.state, "load_model", lambda name, device=None: make_tiny_lm(name=name))
    at = AppTest.from_file(str(PAGE), default_timeout=180)
    return at.run()


def test_run_shows_accuracy_similarity_and_projection(page):
    at = page
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == []
    at.selectbox(key="concepts_method").set_value("mean_diff")
    at.number_input(key="concepts_random").set_value(2)
    at.number_input(key="concepts_max").set_value(20)
    at.button(key="concepts_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == []
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # accuracy, cosine matrix, projection (+ any SAE figures)
    titles = " ".join(c.proto.spec for c in charts)
    assert "CAV held-out accuracy" in titles and "cosine similarity" in titles and "PCA" in titles


def test_workspace_concepts_are_listed_and_deletable(page):
    at = page
    # AppTest cannot drive st.file_uploader; the save path is exercised through the analysis API
    # and the page must list what is in the workspace after a rerun.
    from analysis.concepts.sets import save_uploaded_concepts

    save_uploaded_concepts({"my_topic": [f"a sentence about my topic number {i}" for i in range(12)]})
    at.run()
    assert not at.exception
    options = at.multiselect(key="concepts_pick").options
    assert any(o.startswith("my_topic (12, yours)") for o in options)
    assert at.selectbox(key="concepts_delete_pick").value == "my_topic"
    at.button(key="concepts_delete").click().run()
    assert not at.exception
    assert not any(o.startswith("my_topic") for o in at.multiselect(key="concepts_pick").options)


def test_too_few_texts_says_the_widgets_word_for_all(page):
    at = page
    at.number_input(key="concepts_max").set_value(3)
    at.button(key="concepts_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "0 for all" in errors[0] and "None" not in errors[0], errors
    assert not at.get("plotly_chart")  # nothing was fitted
