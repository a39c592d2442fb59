"""The Likelihood page on the real model: scoring, single-token note and geometry, a one-step DPO run."""

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
    # Default set: single-token pairs; the page says why CHES is 0 and shows the geometry instead.
    at.button(key="lik_run_rank").click().run()
    assert not at.exception and not at.error
    assert any("CHES is 0 for every pair" in i.value for i in at.info)
    geo = next(d.value for d in at.dataframe if "proj_coeff" in d.value.columns)
    assert len(geo) == 16 and geo["single_token"].all()
    at.radio(key="lik_preset").set_value("custom").run()
    at.number_input(key="lik_steps_custom").set_value(1)
    at.button(key="lik_run_dpo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    summary = at.dataframe[-1].value
    assert list(summary["step"]) == [0, 1]
    assert summary["loss_mean"].iloc[1] < summary["loss_mean"].iloc[0]
    gainers = next(d.value for d in at.dataframe if "p_change_mean" in d.value.columns)
    assert len(gainers) == 10
    real_lm.assert_clean()
