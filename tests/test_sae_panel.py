"""Smoke test of app.sae_panel.render_sae_panel through Streamlit's AppTest, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.text import md_escape


def _script() -> None:
    from app.sae_panel import render_sae_panel
    from tests.conftest import make_tiny_lm

    render_sae_panel(make_tiny_lm(), ["food_aspect", "price_aspect"], 1)


@pytest.fixture
def tiny_sae_folder(tmp_path):
    from analysis.saes.training import build_sae

    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(32, 64, generator=g), "b_enc": torch.zeros(64),
             "W_dec": torch.randn(64, 32, generator=g), "b_dec": torch.zeros(32)}
    build_sae(state, 4, "blocks.1.hook_resid_post", "tiny").save_model(tmp_path / "tiny-sae")
    return tmp_path / "tiny-sae"


def _with_source(path: str) -> AppTest:
    at = AppTest.from_function(_script).run(timeout=120)
    at.radio(key="sae-how").set_value("Local folder or release:id").run(timeout=120)
    at.text_input(key="sae-path").set_value(path).run(timeout=300)
    return at


def test_panel_renders_every_figure_for_a_local_sae(tiny_sae_folder):
    at = _with_source(str(tiny_sae_folder))
    assert not at.exception, at.exception
    assert len(at.error) == 0, [e.value for e in at.error]
    # concept latents, probe accuracy, latent histogram, promoted tokens
    assert len(at.get("plotly_chart")) == 4
    assert at.number_input(key="sae-latent").value < 64


def test_panel_shows_load_errors(tmp_path):
    at = _with_source(str(tmp_path))
    assert not at.exception
    assert any(md_escape("has no cfg.json") in e.value for e in at.error)  # shown escaped: it quotes a path
    assert len(at.get("plotly_chart")) == 0
