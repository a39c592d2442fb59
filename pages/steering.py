"""Steering: build a contrastive steering vector, pick its layer, steer generations, sweep α."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from analysis.steering.figures import alpha_sweep_figure, cav_links_figure, layer_search_figure, sae_links_figure
from analysis.steering.generation import MAX_NEW_TOKENS, GenerationConfig, Steering, generate_side_by_side
from analysis.steering.pairs import load_pair_set, parse_pair_upload, shipped_sets
from analysis.recipes import make_recipe
from analysis.steering.vector import POSITIONS, SCORES, SteeringConfig, build_steering_vector
from analysis.steering.evaluation import compute_alpha_sweep, compute_cav_links, compute_sae_links
from analysis.uploads import UploadError
from app.figures import render_figure
from app.text import show_error
from app.state import get, put, require_model

UPLOAD = "upload a file ..."


@st.cache_data(show_spinner=False, max_entries=8)
def _build(_lm, model_name: str, pairs_key: tuple, config: SteeringConfig, _pair_set, _progress=None):
    vec, search, _ = build_steering_vector(_lm, _pair_set, config, progress=_progress)
    return vec, search


@st.cache_data(show_spinner=False, max_entries=8)
def _sweep(_lm, model_name: str, pairs_key: tuple, config: SteeringConfig, layers: tuple, alphas: tuple,
           _vec, _pairs, _progress=None):
    return compute_alpha_sweep(_lm, _vec, _pairs, alphas, layers=layers, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=4)
def _cav_links(_lm, model_name: str, pairs_key: tuple, config: SteeringConfig, _vec):
    return compute_cav_links(_lm, _vec)


def _pick_pairs():
    sets = shipped_sets()
    left, right = st.columns(2)
    choice = left.selectbox("Pair set", [*sets, UPLOAD], format_func=lambda n: sets[n]["title"] if n in sets else n,
                            key="steer_set")
    if choice != UPLOAD:
        right.caption(sets[choice].get("description", ""))
        return ("shipped", choice), load_pair_set(choice)
    right.caption("A .jsonl/.csv with `prompt, positive, negative` (completions) or `positive_prompt, "
                  "negative_prompt`; an optional `split` (train/test) column, else 20 % is held out.")
    upload = right.file_uploader("Pairs file", type=["jsonl", "csv"], key="steer_upload")
    if upload is None:
        st.info("Upload a pairs file to continue.")
        st.stop()
    data = upload.getvalue()
    try:
        return ("upload", upload.name, hashlib.sha256(data).hexdigest()), parse_pair_upload(upload.name, data)
    except (UploadError, ValueError) as err:
        show_error(err)
        st.stop()


def main() -> None:
    st.title("Steering")
    st.caption("Contrastive activation addition (METHODS §3): v_l = mean over pairs of resid_post[l](positive) − "
               "resid_post[l](negative); the contrastive layer search scores the first half of the layers; "
               "α·v_l is added at every position, generated tokens included.")
    lm = require_model()
    key, pair_set = _pick_pairs()
    st.caption(f"{len(pair_set.train)} training pairs, {len(pair_set.test)} held out.")
    c1, c2 = st.columns(2)
    position = c1.selectbox("Position", list(POSITIONS), key="steer_position",
                            help="minus2: token −2 of prompt+completion (the paper's)")
    score = c2.selectbox("Layer-search score", list(SCORES), key="steer_score",
                         help="paper: the authors' code (probabilities where log-probabilities belong); exact: JS")
    config = SteeringConfig(position=position, score=score)
    if st.button("Build vector", type="primary", key="steer_build"):
        bar = st.progress(0.0, text="Reading activations of every layer ...")
        try:
            _build(lm, lm.name, key, config, pair_set, _progress=lambda f: bar.progress(min(f, 1.0)))
        except ValueError as err:
            show_error(err)
            st.stop()
        bar.empty()
        put("steer_built", (key, config))
    if get("steer_built") != (key, config):
        st.info("Choose a pair set and press Build vector.")
        return
    vec, search = _build(lm, lm.name, key, config, pair_set)
    recipe_cfg = {"pairs": key[1] if key[0] == "shipped" else "uploaded", "position": position, "score": score}
    render_figure(layer_search_figure(search), data=pd.DataFrame({"layer": search.layers, "score": search.scores}),
                  recipe=make_recipe("steering_layer_search", lm.name, recipe_cfg) if key[0] == "shipped" else None,
                  key="steer_search", filename="steering_layer_search")
    if search.degenerate:
        st.warning("Most layers tie in the layer search: softmax over the hidden dimension saturates on this "
                   "model's few huge residual dimensions, so the score cannot tell those layers apart. "
                   "Pick the layer by hand and compare with the α sweep.")
    st.download_button("Download vector (.safetensors)", data=lambda: _vector_bytes(vec),
                       file_name=f"steering_{pair_set.name}.safetensors", on_click="ignore", key="steer_dl")

    c1, c2 = st.columns(2)
    layers = c1.multiselect("Steer at layer(s)", list(range(lm.n_layers)), default=[search.best], key="steer_layers")
    alpha = c2.number_input("α", -50.0, 50.0, 1.0, step=0.5, key="steer_alpha")
    if not layers:
        st.info("Pick at least one layer.")
        return
    _generation_section(lm, vec, tuple(layers), float(alpha))
    _sweep_section(lm, key, config, vec, tuple(layers), pair_set, recipe_cfg)
    _links_section(lm, key, config, vec, search.best)


def _vector_bytes(vec) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return vec.save(Path(tmp) / "v.safetensors").read_bytes()


def _generation_section(lm, vec, layers: tuple, alpha: float) -> None:
    st.subheader("Generations")
    prompt = st.text_area("Prompt", "I went to the new restaurant downtown and", key="steer_prompt")
    c1, c2, c3, c4 = st.columns(4)
    n = c1.slider("Max new tokens", 1, MAX_NEW_TOKENS, 40, key="steer_n")
    sample = c2.checkbox("Sample", value=False, key="steer_sample", help="Off: greedy decoding")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed", disabled=not sample)
    temp = c4.number_input("Temperature", 0.05, 5.0, 1.0, key="steer_temp", disabled=not sample)
    if st.button("Generate", key="steer_generate", disabled=not prompt.strip()):
        cfg = GenerationConfig(max_new_tokens=n, do_sample=sample, seed=int(seed), temperature=float(temp))
        bar = st.progress(0.0, text="Generating ...")
        plain, steered = generate_side_by_side(lm, prompt, cfg, Steering(vec, alpha, layers),
                                               progress=lambda d, t: bar.progress(min(d / t, 1.0)))
        bar.empty()
        put("steer_generations", (prompt, alpha, layers, plain, steered))
    gens = get("steer_generations")
    if gens:
        prompt, a, ls, plain, steered = gens
        left, right = st.columns(2)
        left.markdown("**Unsteered**")
        left.text(prompt + plain.text)
        right.markdown(f"**Steered** (α = {a:g}, layer {', '.join(map(str, ls))})")
        right.text(prompt + steered.text)
        st.caption(f"{plain.tokens_per_second:.1f} / {steered.tokens_per_second:.1f} tokens/s ({plain.path} path)")


def _sweep_section(lm, key, config, vec, layers, pair_set, recipe_cfg) -> None:
    st.subheader("α sweep on held-out pairs")
    text = st.text_input("α values", "-4, -2, -1, 0, 1, 2, 4", key="steer_alphas")
    try:
        alphas = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        show_error(f"α values {text!r}: give comma-separated numbers, e.g. -2, -1, 0, 1, 2")
        return
    if st.button("Run sweep", key="steer_sweep"):
        bar = st.progress(0.0, text="Scoring held-out pairs at each α ...")
        _sweep(lm, lm.name, key, config, layers, alphas, vec, pair_set.test or pair_set.pairs,
               _progress=lambda f: bar.progress(min(f, 1.0)))
        bar.empty()
        put("steer_swept", (key, config, layers, alphas))
    if get("steer_swept") == (key, config, layers, alphas):
        sweep = _sweep(lm, lm.name, key, config, layers, alphas, vec, pair_set.test or pair_set.pairs)
        recipe = (make_recipe("steering_alpha_sweep", lm.name, {**recipe_cfg, "alphas": list(alphas),
                                                                  "layer": layers[0]})
                  if key[0] == "shipped" and len(layers) == 1 else None)
        render_figure(alpha_sweep_figure(sweep), data=sweep.frame(), recipe=recipe,
                      key="steer_sweep_fig", filename="steering_alpha_sweep")


def _links_section(lm, key, config, vec, layer) -> None:
    st.subheader("What the vector aligns with")
    if not st.toggle("Compute links (fits the shipped concepts' CAVs; about a minute the first time)",
                     key="steer_links"):
        return
    try:
        with st.spinner("Fitting CAVs ..."):
            links = _cav_links(lm, lm.name, key, config, vec)
        render_figure(cav_links_figure(links, layer=layer), data=pd.DataFrame(links.cosine, index=list(links.concepts),
                      columns=list(links.layers)).reset_index(names="concept"), recipe=None,
                      key="steer_cav_links", filename=f"steering_cav_links_L{layer}")
    except (ImportError, ValueError) as err:
        st.info(f"CAV links unavailable: {err}")
    try:
        sae = compute_sae_links(lm, vec)
        render_figure(sae_links_figure(sae), data=pd.DataFrame({"latent": sae.latents, "cosine": sae.cosine}),
                      recipe=None, key="steer_sae_links", filename="steering_sae_links")
    except (ImportError, ValueError) as err:
        st.info(f"SAE links unavailable: {err}")


main()
