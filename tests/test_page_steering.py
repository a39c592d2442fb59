"""The Steering page on the real model: build a vector, see the layer search, steer a short generation."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


@pytest.mark.real_model
def test_steering_page_builds_vector_and_generates_side_by_side(real_lm):
    at = AppTest.from_file(str(MAIN), default_timeout=900).run()
    at.switch_page("../pages/steering.py").run()
    assert not at.exception
    at.selectbox(key="steer_set").set_value("sentiment").run()
    at.button(key="steer_build").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.multiselect(key="steer_layers").value  # defaults to the searched layer
    at.slider(key="steer_n").set_value(4)
    at.number_input(key="steer_alpha").set_value(2.0)
    at.button(key="steer_generate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(m.value == "**Unsteered**" for m in at.markdown)
    real_lm.assert_clean()
