"""Steering: build a contrastive steering vector, pick its layer, steer generations, sweep α.

Long work (building + layer search, the α sweep, CAV links) runs through ``app.jobs``:
a worker thread with a plain progress callback, the bar and a Stop button drawn
here, results kept under a key of frozen configs. Nothing is computed inside
``st.cache_data``, so no element can be replayed from a cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from analysis.progress import Stopped
from analysis.recipes import make_recipe
from analysis.steering import (
    MAX_NEW_TOKENS,
    POSITIONS,
    PRESETS,
    SCORE_TEXT,
    SEARCHES,
    GenerationConfig,
    SearchConfig,
    Steering,
    SteeringConfig,
    build_steering_vector,
    compute_alpha_sweep,
    compute_cav_links,
    compute_sae_links,
    generate_side_by_side,
    load_pair_set,
    parse_pair_upload,
    shipped_sets,
)
from analysis.steering.figures import (
    alpha_sweep_figure,
    cav_links_figure,
    sae_links_figure,
    search_figure,
)
from analysis.uploads import UploadError
from app import jobs
from app.figures import render_figure
from app.state import get, put, require_model
from app.text import show_error

UPLOAD = "upload a file ..."


@dataclass(frozen=True)
class _Result:
    """A job's result; ``partial`` ones (stopped) are shown but never cached by ``app.jobs``."""

    value: Any
    partial: bool = False


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


def _run(key, fn, label: str, stop_key: str):
    """``app.jobs.run`` with Stop: a stopped job with nothing to keep shows a message and returns None."""
    try:
        return jobs.run(key, fn, label, stop_key=stop_key)
    except Stopped as err:
        st.info(f"Stopped: {err}")
    except ValueError as err:
        show_error(err)
    return None


def main() -> None:
    st.title("Steering")
    st.caption("Contrastive activation addition (Methods §3): v_l = mean over pairs of (positive − negative) "
               "residual stream after layer l, at token −2; α·v_l is added at every position, generated tokens "
               "included. "
               "The layer is chosen by steering each candidate layer on validation pairs (behavioural search).")
    lm = require_model()
    key, pair_set = _pick_pairs()
    st.caption(f"{len(pair_set.train)} training pairs, {len(pair_set.test)} held out.")
    c1, c2, c3 = st.columns(3)
    position = c1.selectbox("Position", list(POSITIONS), key="steer_position",
                            help="minus2: token −2 of prompt+completion (the paper's)")
    score = c2.selectbox("Layer search", list(SEARCHES), key="steer_score",
                         format_func=lambda s: s if s == "auto" else f"{s}",
                         help="; ".join(f"{k}: {v}" for k, v in SCORE_TEXT.items())
                         + "; auto: behavioural when the paper score is degenerate")
    budget = c3.number_input("Loss budget (nats/token)", 0.01, 5.0, 0.25, step=0.05, key="steer_budget",
                             help="behavioural search: the largest held-out gain whose background-loss increase "
                                  "stays within this budget")
    if score == "paper":
        st.caption("The paper score is the authors' heuristic: it measures how concentrated M = (p+n)/2 is, "
                   "not a divergence.")
    config = SteeringConfig(position=position, score=score, search=SearchConfig(loss_budget=float(budget)))
    build_key = ("steer-build", lm.fingerprint, key, config)
    if st.button("Build vector", type="primary", key="steer_build"):
        res = _run(build_key, lambda progress: _build(lm, pair_set, config, progress),
                   "Building the vector and searching layers", "steer_build_stop")
        if res is not None:
            put("steer_built", (build_key, res))
    built = get("steer_built")
    if not built or built[0] != build_key:
        st.info("Choose a pair set and press Build vector.")
        return
    vec, search = built[1].value
    if built[1].partial:
        st.warning("The layer search was stopped: only the layers finished are scored.")
    recipe_cfg = {"pairs": key[1] if key[0] == "shipped" else "uploaded", "position": position, "score": score}
    frame = (pd.DataFrame({"layer": search.layers, "score": search.scores}))
    render_figure(search_figure(search), data=frame,
                  recipe=make_recipe("steering_layer_search", lm.name, recipe_cfg) if key[0] == "shipped" else None,
                  key="steer_search", filename="steering_layer_search")
    if vec.meta.get("degenerate"):
        st.warning("The distributional (paper) score is degenerate here: most layers tie, because softmax over the "
                   "hidden dimension saturates on this model's few huge residual dimensions.")
    st.download_button("Download vector (.safetensors)", data=lambda: _vector_bytes(vec),
                       file_name=f"steering_{pair_set.name}.safetensors", on_click="ignore", key="steer_dl")

    c1, c2 = st.columns(2)
    layers = c1.multiselect("Steer at layer(s)", list(range(lm.n_layers)), default=[vec.layers[0]], key="steer_layers")
    alpha = c2.number_input("α", -50.0, 50.0, 1.0, step=0.5, key="steer_alpha")
    if not layers:
        st.info("Pick at least one layer.")
        return
    _generation_section(lm, vec, tuple(layers), float(alpha))
    _sweep_section(lm, key, config, vec, tuple(layers), pair_set, recipe_cfg)
    _links_section(lm, key, config, vec, vec.layers[0])


def _build(lm, pair_set, config, progress) -> _Result:
    vec, search, _ = build_steering_vector(lm, pair_set, config, progress=progress)
    return _Result((vec, search), partial=bool(getattr(search, "stopped", False)))


def _vector_bytes(vec) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return vec.save(Path(tmp) / "v.safetensors").read_bytes()


def _generation_section(lm, vec, layers: tuple, alpha: float) -> None:
    st.subheader("Generations")
    prompt = st.text_area("Prompt", "I went to the new restaurant downtown and", key="steer_prompt")
    preset = st.toggle(f"Paper preset ({PRESETS['paper'].description})", key="steer_preset")
    c1, c2, c3, c4 = st.columns(4)
    n = c1.slider("Max new tokens", 1, MAX_NEW_TOKENS, 40, key="steer_n", disabled=preset)
    sample = c2.checkbox("Sample", value=False, key="steer_sample", help="Off: greedy decoding", disabled=preset)
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed", disabled=not sample or preset)
    temp = c4.number_input("Temperature", 0.05, 5.0, 1.0, key="steer_temp", disabled=not sample or preset)
    c1, c2, c3 = st.columns(3)
    rep = c1.number_input("Repetition penalty", 1.0, 3.0, 1.0, step=0.1, key="steer_rep", disabled=preset)
    top_k = c2.number_input("Top-k (0: off)", 0, 1000, 0, key="steer_topk", disabled=not sample or preset)
    top_p = c3.number_input("Top-p (1: off)", 0.01, 1.0, 1.0, step=0.05, key="steer_topp", disabled=not sample or preset)
    if st.button("Generate", key="steer_generate", disabled=not prompt.strip()):
        if preset:
            cfg, a = PRESETS["paper"].config, PRESETS["paper"].alpha
        else:
            cfg = GenerationConfig(max_new_tokens=n, do_sample=sample, seed=int(seed), temperature=float(temp),
                                   repetition_penalty=float(rep), top_k=int(top_k), top_p=float(top_p))
            a = alpha
        bar = st.progress(0.0, text="Generating ...")  # plain callback in the script thread, no cache involved
        plain, steered = generate_side_by_side(
            lm, prompt, cfg, Steering(vec, a, layers),
            progress=lambda f, stage: bar.progress(f, text=f"Generating (unsteered, then steered): {stage}"))
        bar.empty()
        put("steer_generations", (prompt, a, layers, plain, steered))
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
    text = st.text_input("α values", "-2, -1, 0, 1, 2", key="steer_alphas")
    try:
        alphas = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        show_error(f"α values {text!r}: give comma-separated numbers, e.g. -2, -1, 0, 1, 2")
        return
    sweep_key = ("steer-sweep", lm.fingerprint, key, config, layers, alphas)
    pairs = pair_set.test or pair_set.pairs
    if st.button("Run sweep", key="steer_sweep"):
        def work(progress):
            sweep = compute_alpha_sweep(lm, vec, pairs, alphas, layers=layers, progress=progress)
            return _Result(sweep, partial=sweep.stopped)

        res = _run(sweep_key, work, "α sweep (with random-direction null and side effects)", "steer_sweep_stop")
        if res is not None:
            put("steer_swept", (sweep_key, res))
    swept = get("steer_swept")
    if swept and swept[0] == sweep_key:
        sweep = swept[1].value
        if swept[1].partial:
            st.warning(f"The sweep was stopped: α = {', '.join(f'{a:g}' for a in sweep.alphas)} finished.")
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
    links = _run(("steer-links", lm.fingerprint, key, config),
                 lambda progress: compute_cav_links(lm, vec, progress=progress), "Fitting CAVs", "steer_links_stop")
    if links is not None:
        render_figure(cav_links_figure(links, layer=layer), data=pd.DataFrame(
            links.cosine, index=list(links.concepts), columns=list(links.layers)).reset_index(names="concept"),
            recipe=None, key="steer_cav_links", filename=f"steering_cav_links_L{layer}")
    try:
        sae = compute_sae_links(lm, vec)
        render_figure(sae_links_figure(sae), data=pd.DataFrame({"latent": sae.latents, "cosine": sae.cosine}),
                      recipe=None, key="steer_sae_links", filename="steering_sae_links")
    except (ImportError, ValueError) as err:
        st.info(f"SAE links unavailable: {err}")


main()
