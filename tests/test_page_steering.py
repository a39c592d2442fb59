"""The Steering page on the real model: build a vector, see the layer search, steer a short generation.

Also the cache-replay regression (issue 9): building, leaving the page, coming back and building again
with the same settings must not raise (the old page drew its bar from inside ``st.cache_data``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


def _build(at, score="paper"):
    at.selectbox(key="steer_set").set_value("sentiment").run()
    at.selectbox(key="steer_score").set_value(score).run()  # the distributional score keeps the test short
    at.button(key="steer_build").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error] + [str(e) for e in at.exception]


@pytest.mark.real_model
def test_steering_page_builds_vector_and_generates_side_by_side(real_lm):
    at = AppTest.from_file(str(MAIN), default_timeout=900).run()
    at.switch_page("../pages/steering.py").run()
    assert not at.exception
    _build(at)
    assert at.multiselect(key="steer_layers").value  # defaults to the searched layer
    assert any("degenerate" in w.value for w in at.warning)  # Gemma's massive dims saturate the paper score
    at.slider(key="steer_n").set_value(4)
    at.number_input(key="steer_alpha").set_value(2.0)
    at.number_input(key="steer_rep").set_value(1.5)
    at.button(key="steer_generate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(m.value == "**Unsteered**" for m in at.markdown)
    # leave and come back: the same build is a cache hit in app.jobs, and nothing replays
    at.switch_page("../pages/home.py").run()
    at.switch_page("../pages/steering.py").run()
    assert not at.exception
    _build(at)
    at.button(key="steer_build").click().run()
    assert not at.exception and not at.error
    real_lm.assert_clean()
