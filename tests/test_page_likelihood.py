"""The Likelihood page on the real model: scoring, table, export, and a one-step DPO run."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


@pytest.mark.real_model
def test_likelihood_page_scores_pairs_and_runs_one_dpo_step(real_lm):
    at = AppTest.from_file(str(MAIN), default_timeout=900).run()
    at.switch_page("../pages/likelihood.py").run()
    assert not at.exception
    at.selectbox(key="lik_source").set_value("conversational_example").run()
    at.button(key="lik_run_rank").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) == 6 and list(table["ches"]) == sorted(table["ches"], reverse=True)
    at.number_input(key="lik_steps").set_value(1)
    at.button(key="lik_run_dpo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    history = at.dataframe[-1].value
    assert list(history["step"]) == [0, 1]
    assert history["loss"].iloc[1] < history["loss"].iloc[0]
    real_lm.assert_clean()
