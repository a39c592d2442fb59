"""No hidden recomputation on the pages that compute with the model (issue 16 item 3).

Each page is driven with AppTest on the tiny model: compute once with the cheapest
settings, then change every display-only control (layer / concept / latent shown,
pooling, top-k, filters, table toggles, ...) and check that no forward pass ran,
that nothing failed, and that the display really changed. Controls that are inputs
of a computation but have their own button (generation settings, α values, the
behavioural metric) must not run the model either until the button is pressed.

A forward pass is counted by pre-hooks on the model and on every block: a pre-hook
fires when a call starts, so it also counts the passes that ``run_blocks`` ends
early by raising from a hook (a plain forward hook on the model would miss those),
and the blocks catch passes that do not go through ``model(...)`` (generation, DPO
copies, which inherit the hooks). The Live inspection page has its own test
(tests/test_speed_inspection.py); the ≤ 0.2 s re-render target is measured in
bench/bench_rerender.py, not here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parent.parent / "pages"


class Passes:
    """Counts forward calls of the model and of its blocks while installed."""

    def __init__(self, lm):
        seen: list[int] = []
        self._seen = seen
        # A plain function, not a bound method: a deep copy of the model (a DPO run trains one) shares it,
        # where a copied bound method would count into a copy of this object.
        modules = [lm.model, *lm.model.blocks]
        self._handles = [m.register_forward_pre_hook(lambda *_: seen.append(1)) for m in modules]

    @property
    def calls(self) -> int:
        return len(self._seen)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture()
def page(tiny_lm, monkeypatch, tmp_path):
    """``open(name)`` -> (AppTest of pages/<name>.py on the tiny model, pass counter), from empty caches."""
    import streamlit as st

    import app.state
    from app import jobs

    monkeypatch.setattr(app.state, "require_model", lambda: tiny_lm)
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    # Other tests in this process may have computed the same configs on the same tiny model: start empty,
    # so "the first compute runs the model" holds in any order (the activation disk cache is per test).
    st.cache_data.clear()
    import app.sae_panel

    app.sae_panel._codes.clear()  # the SAE panel's read-only results sit in st.cache_resource
    app.sae_panel._card.clear()
    app.sae_panel._concept_codes.clear()
    jobs.clear()
    passes = Passes(tiny_lm)

    def open_page(name: str):
        return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=180).run(), passes

    try:
        yield open_page
    finally:
        passes.remove()
        jobs.clear()


def _ok(at) -> None:
    assert not at.exception, [str(e) for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


def _figure(at, title_part: str) -> dict:
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if title_part in json.loads(c.proto.spec)["layout"].get("title", {}).get("text", ""))


def _tiny_sae(folder: Path) -> Path:
    from analysis.saes.training import build_sae

    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(32, 64, generator=g), "b_enc": torch.zeros(64),
             "W_dec": torch.randn(64, 32, generator=g), "b_dec": torch.zeros(32)}
    build_sae(state, 4, "blocks.1.hook_resid_post", "tiny").save_model(folder)
    return folder


def test_concepts_page_layer_and_sae_controls_run_no_forward_pass(page, tmp_path):
    at, passes = page("concepts")
    at.selectbox(key="concepts_method").set_value("mean_diff")
    at.number_input(key="concepts_random").set_value(2)
    at.number_input(key="concepts_max").set_value(20)
    at.button(key="concepts_run").click().run()
    _ok(at)
    assert passes.calls, "the first fit must run the model"
    fitted = passes.calls
    # the layer shown (similarity matrix, projection): every fitted layer was extracted once
    for layer in (2, 1):
        at.select_slider(key="concepts_layer").set_value(str(layer)).run()
        _ok(at)
        titles = _titles(at)
        assert f"CAV cosine similarity at layer {layer}" in titles
        assert f"PCA of resid_post activations at layer {layer}" in titles
    assert passes.calls == fitted, "changing the layer shown ran the model again"
    # a compute input without Run: the shown result stays, nothing runs
    at.selectbox(key="concepts_method").set_value("logistic").run()
    _ok(at)
    assert passes.calls == fitted and "CAV cosine similarity at layer 1" in _titles(at)

    # the SAE panel (layer 1 reads the tiny SAE's hook): one encoding, then only display controls
    at.radio(key="sae-how").set_value("Local folder or release:id").run()
    at.text_input(key="sae-path").set_value(str(_tiny_sae(tmp_path / "tiny-sae"))).run()
    _ok(at)
    assert passes.calls > fitted, "the SAE panel must encode the texts once"
    encoded = passes.calls
    at.selectbox(key="sae-pool").set_value("mean").run()
    assert any("mean-pooled" in t for t in _titles(at))
    at.number_input(key="sae-top").set_value(7).run()
    assert len(_figure(at, "SAE latents of 'positive_sentiment'")["data"][0]["y"]) == 7
    at.number_input(key="sae-latent").set_value(3).run()
    assert any(t.startswith("Latent #3:") for t in _titles(at))
    at.selectbox(key="sae-concept").set_value("negative_sentiment").run()
    _ok(at)
    assert any("SAE latents of 'negative_sentiment'" in t for t in _titles(at))
    assert passes.calls == encoded, "a display control of the SAE panel ran the model again"


def test_bias_page_display_controls_run_no_forward_pass(page):
    at, passes = page("bias")
    at.selectbox(key="bias_preset").set_value("insurance_sentiment")
    at.number_input(key="bias_cap").set_value(10)
    at.number_input(key="bias_boot").set_value(20)
    at.number_input(key="bias_perm").set_value(19)
    at.run()
    at.button(key="bias_run").click().run()
    _ok(at)
    assert passes.calls, "the first compute must run the model"
    computed = passes.calls
    assert not at.dataframe
    at.checkbox(key="bias_show_table").check().run()
    _ok(at)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 2  # one row per target
    # the behavioural metric has its own button: choosing it runs nothing
    at.radio(key="bias_agg").set_value("mean").run()
    at.radio(key="bias_beh_mode").set_value("paper").run()
    _ok(at)
    assert any(t.startswith("Bias per layer") for t in _titles(at))
    assert passes.calls == computed, "a display control ran the model again"
    # The accuracy threshold and the layer rule change the test, so they need Compute; the activations
    # are cached, so recomputing runs no forward pass either.
    at.slider(key="bias_thr").set_value(0.6).run()
    at.button(key="bias_run").click().run()
    _ok(at)
    at.radio(key="bias_rule").set_value("layer").run()
    at.number_input(key="bias_layer").set_value(1).run()
    at.button(key="bias_run").click().run()
    _ok(at)
    assert any(t.startswith("Summary Bias") for t in _titles(at))
    assert passes.calls == computed, "recomputing the statistics ran the model again"


def test_steering_page_settings_run_no_forward_pass_until_a_button(page):
    at, passes = page("steering")
    at.selectbox(key="steer_set").set_value("sentiment").run()
    at.selectbox(key="steer_score").set_value("paper").run()  # the distributional score: the cheapest search
    at.button(key="steer_build").click().run()
    _ok(at)
    assert passes.calls, "building the vector must run the model"
    built = passes.calls
    settings = [("multiselect", "steer_layers", [1, 2]), ("number_input", "steer_alpha", 3.0),
                ("slider", "steer_n", 3), ("checkbox", "steer_sample", True), ("number_input", "steer_seed", 5),
                ("number_input", "steer_temp", 0.7), ("number_input", "steer_rep", 1.2),
                ("number_input", "steer_topk", 5), ("number_input", "steer_topp", 0.9),
                ("text_input", "steer_alphas", "-1, 0, 1"), ("text_area", "steer_prompt", "the cat is"),
                ("toggle", "steer_preset", True), ("toggle", "steer_preset", False)]
    for kind, key, value in settings:
        getattr(at, kind)(key=key).set_value(value).run()
        _ok(at)
    assert passes.calls == built, "a setting ran the model before its button was pressed"
    assert any(t.startswith("Contrastive layer search") for t in _titles(at))
    at.button(key="steer_generate").click().run()
    _ok(at)
    assert passes.calls > built
    generated = passes.calls
    shown = "**Steered** (α = 3, layer 1, 2)"
    at.number_input(key="steer_alpha").set_value(-2.0).run()
    at.slider(key="steer_n").set_value(5).run()
    _ok(at)
    assert shown in [m.value for m in at.markdown]  # the generation shown is the stored one
    assert passes.calls == generated, "changing a setting re-generated"


def test_likelihood_page_filters_and_tables_run_no_forward_pass(page):
    at, passes = page("likelihood")
    at.button(key="lik_run_rank").click().run()
    _ok(at)
    assert passes.calls, "scoring the pairs must run the model"
    scored = passes.calls
    for kind, key, value, title in [
        ("selectbox", "lik_mode", "window", "CHES per preference pair"),
        ("slider", "lik_q", 0.3, "CHES per"), ("number_input", "lik_win", 5, "CHES per"),
        ("selectbox", "lik_mode", "percentile", "CHES per"), ("slider", "lik_pct", 50, "CHES per"),
        ("selectbox", "lik_mode", "lowest", "Length-normalised CHES per"), ("slider", "lik_frac", 20, "Length-"),
    ]:
        getattr(at, kind)(key=key).set_value(value).run()
        _ok(at)
        assert _titles(at)[0].startswith(title), (key, _titles(at)[0])
    assert any("Download the 3 of 16 pairs kept" in b.label for b in at.get("download_button"))  # 20 % of 16
    at.radio(key="lik_sim").set_value("edit_distance").run()
    _ok(at)
    assert "edit" in _figure(at, "vs surface similarity")["layout"]["xaxis"]["title"]["text"].lower()
    assert passes.calls == scored, "a filter or display control ran the model again"

    at.radio(key="lik_preset").set_value("custom").run()
    at.number_input(key="lik_steps_custom").set_value(2)
    at.button(key="lik_run_dpo").click().run()
    _ok(at)
    assert passes.calls > scored
    trained = passes.calls
    at.slider(key="lik_disc_step").set_value(1).run()
    _ok(at)
    disc = [d.value for d in at.dataframe if {"step", "order"} <= set(d.value.columns)]  # the top-gainers table
    assert len(disc) == 1 and set(disc[0]["step"]) == {1} and len(disc[0])
    at.radio(key="lik_sim").set_value("token_jaccard").run()
    at.selectbox(key="lik_mode").set_value("window").run()
    _ok(at)
    assert any(t.startswith("DPO on a copy of the model") for t in _titles(at))
    assert passes.calls == trained, "a display control after DPO ran the model again"


def test_compare_page_layer_and_view_run_no_forward_pass(page):
    at, passes = page("compare")
    at.radio(key="cmp_view").set_value("concepts").run()
    at.number_input(key="cmp_max_texts").set_value(5).run()  # the fewest that 5-fold CV accepts
    at.button(key="cmp_run").click().run()
    _ok(at)
    assert passes.calls, "comparing must run the model"
    compared = passes.calls
    for layer in (0, 2):
        at.slider(key="cmp_layer").set_value(layer).run()
        _ok(at)
        assert any(t.startswith(f"Δ cosine between CAVs at layer {layer}") for t in _titles(at))
    at.radio(key="cmp_view").set_value("lens").run()  # another view has its own Compare
    _ok(at)
    assert not at.get("plotly_chart")
    at.radio(key="cmp_view").set_value("concepts").run()  # and coming back shows the stored result
    _ok(at)
    assert any(t.startswith("Concepts: B = base") for t in _titles(at))
    assert passes.calls == compared, "a display control ran the model again"


# ---------------------------------------------------------------- the fixes' pure parts, against oracles


def test_projection_extracting_more_layers_projects_the_same(tiny_lm):
    """``extract_layers`` (one pass for every layer the page can show) leaves the projection unchanged."""
    from types import SimpleNamespace

    from analysis.concepts.projection import ProjectionConfig, compute_projection

    words = ["the", "cat", "is", "very", "happy", "and", "the", "dog", "is", "sad"]
    sets = {c: SimpleNamespace(texts=tuple(" ".join(words[i:] + words[:i]) + f" {c}" for i in range(8)))
            for c in ("red", "blue")}
    background = tuple(" ".join(words[i: i + 4]) for i in range(6))
    cfg = ProjectionConfig(concepts=("red", "blue"), layer=1, max_texts=None, background="neutral")
    alone = compute_projection(tiny_lm, sets, background, cfg)
    shared = compute_projection(tiny_lm, sets, background, cfg, extract_layers=(0, 1, 2))
    assert shared.labels == alone.labels and shared.texts == alone.texts
    # float32 activations of magnitude ~1 through PCA in float64: the same pass up to layer 1, batched alike.
    np.testing.assert_allclose(np.abs(shared.coords), np.abs(alone.coords), atol=1e-5)
    passes = Passes(tiny_lm)
    try:  # another layer of the same extraction is read from the disk cache
        other = compute_projection(tiny_lm, sets, background, dataclasses.replace(cfg, layer=2),
                                   extract_layers=(0, 1, 2))
    finally:
        passes.remove()
    assert passes.calls == 0 and other.layer == 2


def test_token_codes_rows_match_encoding_the_texts_alone(tiny_lm, tmp_path):
    from analysis.saes.loading import load_sae
    from analysis.saes.probes import token_codes

    sae = load_sae(str(_tiny_sae(tmp_path / "sae")))
    texts = ["the cat is happy", "a dog", "she went to paris and he came", "yes", "red blue green big"]
    every = token_codes(tiny_lm, sae, texts)
    pick = [3, 0, 3, 2]
    alone = token_codes(tiny_lm, sae, [texts[i] for i in pick])
    got = every.rows(pick)
    np.testing.assert_array_equal(got.offsets, alone.offsets)
    np.testing.assert_array_equal(got.token_ids, alone.token_ids)
    # one float32 encoding of the same activations, padded to another length: 1e-5 on codes of size ~1
    np.testing.assert_allclose(got.codes, alone.codes, atol=1e-5)
    assert every.rows([]).codes.shape == (0, every.codes.shape[1])


def test_concept_files_are_parsed_once_and_again_when_changed(tmp_path, monkeypatch):
    """Pages list the sets on every rerun: an unchanged file is not parsed again, an edited one is."""
    import yaml

    from analysis.concepts import sets as sets_module

    parsed = []
    real = yaml.safe_load
    monkeypatch.setattr(sets_module.yaml, "safe_load", lambda text: parsed.append(1) or real(text))
    path = tmp_path / "my_topic.yaml"

    def write(texts):
        path.write_text(yaml.safe_dump({"name": "my_topic", "title": "t", "description": "d", "provenance": "p",
                                        "kind": "concept", "background": "background", "texts": texts}))

    texts = [f"text number {i}" for i in range(10)]
    write(texts)
    first = sets_module.parse_concept_file(path, "workspace")
    assert sets_module.parse_concept_file(path, "workspace") is first and len(parsed) == 1
    write([*texts, "three texts"])  # an edit: new size and mtime
    assert sets_module.parse_concept_file(path, "workspace").texts[-1] == "three texts" and len(parsed) == 2
    path.write_text(path.read_text().replace("three", "THREE"))  # in place, same size, maybe the same mtime
    assert sets_module.parse_concept_file(path, "workspace").texts[-1] == "THREE texts" and len(parsed) == 3
