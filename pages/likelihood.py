"""Likelihood displacement: CHES ranking of preference pairs, a live DPO run on a copy, indicators."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.likelihood.dpo import DPOConfig, DPOMemoryError, compare_indicators, config_dict, run_dpo
from analysis.likelihood.figures import (
    ches_histogram_figure, ches_similarity_figure, dpo_curves_figure, dpo_indicators_figure,
    indicator_comparison_figure,
)
from analysis.likelihood.ches import LikelihoodConfig, filter_by_percentile, lm_logits_fn, percentile_cut, rank_pairs
from analysis.likelihood.preferences import DEFAULT_SET, PreferenceData, export_jsonl, parse_preferences, shipped_sets
from analysis.recipes import make_recipe
from analysis.uploads import UploadError
from app import state
from app.figures import render_figure
from app.text import show_error

UPLOAD = "Upload a file ..."
SCORE_LABELS = {"ches": "CHES", "ches_length_normalised": "Length-normalised CHES"}


@st.cache_data(show_spinner=False, max_entries=8)
def _parse(filename: str, data: bytes, model: str, _tokenizer) -> PreferenceData:
    return parse_preferences(filename, data, _tokenizer)


@st.cache_data(show_spinner=False, max_entries=8)
def _rank(filename: str, data: bytes, model: str, cfg: LikelihoodConfig, _lm) -> pd.DataFrame:
    # ``model`` is the fingerprint (name, backend, dtype): the cache key of the weights.
    return rank_pairs(_lm, parse_preferences(filename, data, _lm.tokenizer), cfg)


lm = state.require_model()
st.title("Likelihood displacement")
st.markdown(
    "Preference training can *lower* the probability of the preferred response when the two responses "
    "have similar hidden representations (Razin et al., *Unintentional Unalignment*). **CHES** "
    "(centered hidden embedding similarity, ⟨S+,S−⟩ − ‖S+‖², S = sum of final hidden states over the "
    "positions that predict the response) flags such pairs. Single-token pairs share their only "
    "predicting position, so their CHES is exactly 0."
)

sets = shipped_sets()
names = list(sets) + [UPLOAD]
choice = st.selectbox("Preference pairs", names, index=names.index(DEFAULT_SET), key="lik_source",
                      format_func=lambda n: sets[n]["title"] if n in sets else n)
if choice == UPLOAD:
    upload = st.file_uploader("Preference .jsonl (prompt/chosen/rejected strings or message lists) or .csv",
                              type=["jsonl", "csv"], key="lik_upload")
    if upload is None:
        st.info("Upload a file to continue.")
        st.stop()
    filename, raw = upload.name, upload.getvalue()
else:
    filename, raw = sets[choice]["path"].name, sets[choice]["path"].read_bytes()
    st.caption(sets[choice]["description"])
try:
    data = _parse(filename, raw, lm.name, lm.tokenizer)
except UploadError as err:
    show_error(err)
    st.stop()
st.caption(f"{len(data)} pairs, {data.layout} layout" + (f", rendered with the {data.rendering} format" if data.layout == "conversational" else ""))
source = choice if choice != UPLOAD else filename

tab_rank, tab_dpo, tab_ind = st.tabs(["CHES ranking", "DPO run", "Indicators"])

# ---------------------------------------------------------------- 1. ranking
with tab_rank:
    c1, c2, c3 = st.columns(3)
    top_k = c1.number_input("k for top-k indicators", 1, 1000, 10, key="lik_topk")
    score = c2.radio("Score", list(SCORE_LABELS), format_func=SCORE_LABELS.get, key="lik_score", horizontal=True)
    pct = c3.slider("Keep pairs at or below this percentile", 1, 100, 90, key="lik_pct")
    cfg = LikelihoodConfig(top_k=int(top_k))
    ranked_key = ("rank", filename, len(raw), lm.name, cfg)
    if st.button("Score pairs", key="lik_run_rank", type="primary"):
        state.put("lik_ranked", ranked_key)
    if state.get("lik_ranked") != ranked_key:
        st.info(f"Press **Score pairs** to run the model over the {2 * len(data)} responses.")
    else:
        with st.spinner("Scoring pairs ..."):
            frame = _rank(filename, raw, lm.fingerprint, cfg, lm)
        st.dataframe(frame, hide_index=True, key="lik_table")
        by_input = frame.sort_values("pair")[score].to_numpy()
        kept = filter_by_percentile(data, by_input, pct)
        cut = percentile_cut(by_input, pct)
        recipe = {"source": source, "top_k": int(top_k), "score": score}
        render_figure(ches_histogram_figure(frame, score=score, cut=cut), data=frame,
                      recipe=make_recipe("ches_histogram", lm.name, recipe), key="lik_hist", filename=f"{source}_ches_hist")
        similarity = st.radio("Surface similarity", ["token_jaccard", "edit_distance"], key="lik_sim", horizontal=True)
        render_figure(ches_similarity_figure(frame, score=score, similarity=similarity), data=frame,
                      recipe=make_recipe("ches_vs_similarity", lm.name, {**recipe, "similarity": similarity}),
                      key="lik_scatter", filename=f"{source}_ches_scatter")
        st.download_button(
            f"Download the {len(kept)} of {len(data)} pairs with {SCORE_LABELS[score]} ≤ {cut:.4g} (.jsonl, input layout)",
            export_jsonl(kept), file_name=f"{source.rsplit('.', 1)[0]}_ches_p{pct}.jsonl",
            mime="application/jsonl", key="lik_export", on_click="ignore",
        )

# ---------------------------------------------------------------- 2. DPO
with tab_dpo:
    st.markdown(
        "Trains a **copy** of the model (the shared one is never changed) with DPO on the pairs chosen "
        "below; the reference is the shared model. The paper's demonstration: preferring \" No\" over "
        "\" Never\" can raise the probability of \" Yes\". Whether it does on this small model is "
        "shown, not assumed. On a CPU a step takes seconds to minutes."
    )
    labels = [f"{i}: {p.prompt[-50:]!r} +{p.chosen[:25]!r} −{p.rejected[:25]!r}" for i, p in enumerate(data.pairs)]
    demo = [i for i, p in enumerate(data.pairs) if p.chosen.strip() == "No" and p.rejected.strip() == "Never"] or [0]
    picked = st.multiselect("Pairs to train on", range(len(data)), default=demo, format_func=labels.__getitem__, key="lik_pairs")
    c1, c2, c3, c4 = st.columns(4)
    beta = c1.number_input("β", 0.001, 10.0, 0.1, step=0.05, format="%.3f", key="lik_beta")
    lr = c2.select_slider("Learning rate", [1e-7, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3], value=1e-5, key="lik_lr")
    steps = c3.number_input("Steps", 1, 200, 10, key="lik_steps")
    watch = c4.text_input("Watch tokens (separate with |; a leading space counts)", " Yes| No", key="lik_watch")
    keep = st.checkbox("Keep the trained copy for the Indicators tab (about 1× the model's memory per session)",
                       key="lik_keep")
    run_col, stop_col = st.columns(2)
    start = run_col.button("Run DPO", type="primary", key="lik_run_dpo", disabled=not picked)
    # A click on Stop reruns the page, which interrupts the run at its next step;
    # the rows already computed live in session state and are kept.
    stop_col.button("Stop", key="lik_stop_dpo")
    live = st.empty()
    if start:
        try:
            dcfg = DPOConfig(beta=float(beta), lr=float(lr), steps=int(steps), top_k=int(top_k),
                             watch_tokens=tuple(t for t in watch.split("|") if t.strip()))
        except ValueError as err:
            show_error(err)
            st.stop()
        rows: list[dict] = []
        state.put("lik_dpo", {"rows": rows, "config": config_dict(dcfg), "status": "running", "pairs": list(picked)})
        state.put("lik_policy", None)

        def on_step(row: dict) -> None:
            rows.append(row)
            live.plotly_chart(dpo_curves_figure(pd.DataFrame(rows)), theme=None, key=f"lik_live_{row['step']}")

        try:
            result = run_dpo(lm, data.subset(picked), dcfg, callback=on_step, keep_model=keep)
            state.get("lik_dpo")["status"] = "finished"
            state.put("lik_policy", result.policy)
        except (ValueError, DPOMemoryError) as err:
            state.get("lik_dpo")["status"] = f"failed: {err}"
        live.empty()
    run = state.get("lik_dpo")
    if run:
        if run["status"] == "running":  # a rerun (Stop) interrupted it
            run["status"] = (f"interrupted after step {len(run['rows']) - 1} (Stop, or another widget changed); "
                             "the rows computed are kept, the trained copy was discarded")
        if run["status"].startswith("failed"):
            show_error(run["status"])
        else:
            st.caption(f"Run {run['status']}: {len(run['rows'])} rows (row t = after t updates), pairs {run['pairs']}.")
        if run["rows"]:
            hist = pd.DataFrame(run["rows"])
            dpo_recipe = {"source": source, **run["config"]}
            render_figure(dpo_curves_figure(hist), data=hist, recipe=make_recipe("dpo_curves", lm.name, dpo_recipe),
                          key="lik_dpo_curves", filename=f"{source}_dpo_curves")
            st.dataframe(hist, hide_index=True, key="lik_dpo_table")

# ---------------------------------------------------------------- 3. indicators
with tab_ind:
    st.markdown(
        "Over-optimisation indicators per response position: top-k probability mass M_k (sum of the k "
        "largest next-token probabilities) and top-k entropy H_k (entropy of those k, renormalised); "
        "means per response, across DPO steps and between models sharing a tokenizer."
    )
    run = state.get("lik_dpo")
    if run and run["rows"]:
        hist = pd.DataFrame(run["rows"])
        render_figure(dpo_indicators_figure(hist), data=hist,
                      recipe=make_recipe("dpo_indicators", lm.name, {"source": source, **run["config"]}),
                      key="lik_ind_steps", filename=f"{source}_dpo_indicators")
    else:
        st.info("Run DPO in the previous tab to see the indicators per step.")
    policy = state.get("lik_policy")
    if policy is not None and run:
        if st.button("Compare the shared model with the trained copy", key="lik_compare"):
            comp = compare_indicators({"before": lm_logits_fn(lm), "after DPO": policy}, lm.tokenizer,
                                      data.subset(run["pairs"]), top_k=int(top_k), device=lm.device)
            render_figure(indicator_comparison_figure(comp), data=comp, recipe=None, key="lik_ind_cmp",
                          filename=f"{source}_indicators_before_after")
    elif run:
        st.caption("Tick “Keep the trained copy” before running DPO to compare before and after here.")
