"""Likelihood displacement: CHES ranking and filters, single-token geometry, DPO runs as the paper ran them."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from analysis.likelihood import (
    DEFAULT_SET, PRESETS, DPOConfig, DPOMemoryError, FilterConfig, LikelihoodConfig, PreferenceData,
    compare_indicators, discovery_frame, export_jsonl, filter_pairs, gainers_frame, lm_logits_fn,
    parse_preferences, percentile_cut, rank_pairs, run_dpo, save_checkpoint, check_name_free,
    shipped_sets, single_token_geometry, summary_frame,
)
from analysis.likelihood.figures import (
    ches_histogram_figure, ches_similarity_figure, indicator_comparison_figure, token_geometry_figure,
)
from analysis.likelihood.recipes import dpo_figures, dpo_recipe_config
from analysis.progress import Stopped
from analysis.recipes import make_recipe
from analysis.uploads import UploadError
from app import jobs, state
from app.figures import render_figure
from app.text import show_error

UPLOAD = "Upload a file ..."
SCORE_LABELS = {"ches": "CHES", "ches_length_normalised": "Length-normalised CHES"}
MODES = {"lowest": "Lowest p % by length-normalised CHES (paper §6)", "window": "Quantile window of raw CHES (paper §5)",
         "percentile": "Raw CHES at or below a percentile"}
OPT_LABELS = {"rmsprop": "RMSprop (paper)", "adam": "Adam", "sgd": "SGD"}
FIGURE_TEXT = {
    "dpo_curves": "Left: change since step 0 of log p(y+) and log p(y−) (whole responses). Right: probability of "
                  "the first response token of y+ and y−, and of the watched tokens, right after the prompt.",
    "dpo_gainers": "The tokens whose probability right after the prompt rose most (mean over runs): found, not named in advance.",
    "dpo_rank": "Rank of y+ among all tokens by probability gain (1 = gained most) and the first-token log-probabilities.",
    "dpo_indicators": "Top-k mass M_k and top-k entropy H_k over the response positions.",
}


@st.cache_data(show_spinner=False, max_entries=8)
def _parse(filename: str, data: bytes, model: str, _tokenizer) -> PreferenceData:
    return parse_preferences(filename, data, _tokenizer)


@st.cache_data(show_spinner=False, max_entries=8)
def _geometry(filename: str, data: bytes, model: str, _lm) -> pd.DataFrame:
    return single_token_geometry(_lm, list(parse_preferences(filename, data, _lm.tokenizer).pairs))


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
    "positions that predict the response) flags such pairs."
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
digest = hashlib.sha256(raw).hexdigest()[:16]

tab_rank, tab_dpo, tab_ind = st.tabs(["CHES ranking", "DPO run", "Indicators"])

# ---------------------------------------------------------------- 1. ranking, filters, geometry
with tab_rank:
    c1, c2 = st.columns(2)
    top_k = c1.number_input("k for top-k indicators", 1, 1000, 10, key="lik_topk")
    append_eos = c2.checkbox("Include the EOS position", key="lik_eos",
                             help="Also sum the position that predicts EOS, as the authors' code does (TRL appends "
                                  "EOS). Off: the paper's Definition 2.")
    # The filter's names are long: a row to itself, so the chosen one reads in full at any width.
    c1, _ = st.columns([3, 1])
    mode = c1.selectbox("Filter", list(MODES), format_func=MODES.get, key="lik_mode")
    c2, c3 = st.columns(2)
    if mode == "lowest":
        fcfg = FilterConfig(mode="lowest", fraction=c2.slider("Keep the lowest %", 1, 100, 5, key="lik_frac") / 100)
    elif mode == "window":
        fcfg = FilterConfig(mode="window", quantile=c2.slider("Quantile of the window centre", 0.0, 1.0, 0.5, key="lik_q"),
                            window=int(c3.number_input("Pairs in the window", 1, 100000, 19, key="lik_win")))
    else:
        fcfg = FilterConfig(mode="percentile", percentile=c2.slider("Keep at or below this percentile", 1, 100, 90, key="lik_pct"))
    score = fcfg.score_name
    cfg = LikelihoodConfig(top_k=int(top_k), append_eos=bool(append_eos))
    ranked_key = ("rank", filename, digest, lm.fingerprint, cfg)
    if st.button("Score pairs", key="lik_run_rank", type="primary"):
        state.put("lik_ranked", ranked_key)
    if state.get("lik_ranked") != ranked_key:
        st.info(f"Press **Score pairs** to run the model over the {2 * len(data)} responses.")
    else:
        with st.spinner("Scoring pairs ..."):
            frame = _rank(filename, raw, lm.fingerprint, cfg, lm)
        st.dataframe(frame, hide_index=True, key="lik_table")
        single = (frame["len_chosen"] == 1) & (frame["len_rejected"] == 1)
        if single.all():
            st.info("Every pair here has one-token responses. Both tokens are predicted from the same position "
                    "(the last prompt token), so S+ = S− and CHES is 0 for every pair: the histogram is one bar. "
                    "What predicts displacement for such pairs is the geometry of the two output embeddings, below.")
        by_input = frame.sort_values("pair")[score].to_numpy()
        kept = filter_pairs(data, by_input, fcfg)
        cut = percentile_cut(by_input, fcfg.percentile) if mode == "percentile" else None
        recipe = {"source": source, "top_k": int(top_k), "score": score, "append_eos": bool(append_eos)}
        render_figure(ches_histogram_figure(frame, score=score, cut=cut), data=frame,
                      recipe=make_recipe("ches_histogram", lm.name, recipe), key="lik_hist", filename=f"{source}_ches_hist")
        similarity = st.radio("Surface similarity", ["token_jaccard", "edit_distance"], key="lik_sim", horizontal=True)
        render_figure(ches_similarity_figure(frame, score=score, similarity=similarity), data=frame,
                      recipe=make_recipe("ches_vs_similarity", lm.name, {**recipe, "similarity": similarity}),
                      key="lik_scatter", filename=f"{source}_ches_scatter")
        st.download_button(
            f"Download the {len(kept)} of {len(data)} pairs kept: {fcfg.describe()} (.jsonl, input layout)",
            export_jsonl(kept), file_name=f"{source.rsplit('.', 1)[0]}_ches_{mode}.jsonl",
            mime="application/jsonl", key="lik_export", on_click="ignore",
        )
    st.subheader("Single-token geometry")
    st.markdown(
        "For one-token responses CHES is 0, so the paper looks at the output embeddings W+ and W− of the two "
        "tokens instead. DPO pushes the shared hidden state along W+ − W−; that raises log p(y+) by "
        "‖W+‖² − ⟨W+, W−⟩ (minus what the rest of the vocabulary gains), so **p(y+) can fall when ⟨W+, W−⟩ > ‖W+‖²**, "
        "i.e. when W−'s projection coefficient on W+ exceeds ‖W+‖. The tokens pushed up most are those with a "
        "large ⟨W_z, W+ − W−⟩. Computed for the first token of each response."
    )
    geo = _geometry(filename, raw, lm.fingerprint, lm)
    st.dataframe(geo, hide_index=True, key="lik_geo_table")
    render_figure(token_geometry_figure(geo), data=geo, recipe=make_recipe("token_geometry", lm.name, {"source": source}),
                  key="lik_geo", filename=f"{source}_token_geometry")

# ---------------------------------------------------------------- 2. DPO
with tab_dpo:
    st.markdown(
        "Trains **copies** of the model (the shared one is never changed) with DPO on the pairs chosen below, "
        "one run per seed; the reference is the run's model before its first update. The paper's demonstration: "
        "preferring \"No\" over \"Never\" can raise the probability of \"Yes\". Each step records the tokens whose "
        "probability right after the prompt rose most, so such a token is found without naming it."
    )
    labels = [f"{i}: {p.prompt[-50:]!r} +{p.chosen[:25]!r} −{p.rejected[:25]!r}" for i, p in enumerate(data.pairs)]
    demo = [i for i, p in enumerate(data.pairs) if p.chosen.strip() == "No" and p.rejected.strip() == "Never"] or [0]
    picked = st.multiselect("Pairs to train on", range(len(data)), default=demo, format_func=labels.__getitem__, key="lik_pairs")
    preset = st.radio("Settings", ["paper", "paper_sft", "custom"], horizontal=True, key="lik_preset",
                      format_func={"paper": "Paper preset (RMSprop, lr 1e-7, 101 full-batch steps, β 0.1)",
                                   "paper_sft": "Paper preset after one SFT epoch", "custom": "Custom"}.get)
    base = DPOConfig.preset(preset) if preset != "custom" else DPOConfig()
    custom = preset == "custom"
    c1, c2, c3, c4 = st.columns(4)
    optimizer = c1.selectbox("Optimizer", list(OPT_LABELS), index=list(OPT_LABELS).index(base.optimizer),
                             format_func=OPT_LABELS.get, key=f"lik_opt_{preset}", disabled=not custom)
    lr = c2.select_slider("Learning rate", [1e-7, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3], value=base.lr, key=f"lik_lr_{preset}",
                          disabled=not custom)
    steps = c3.number_input("Steps (updates)", 0, 1000, base.steps, key=f"lik_steps_{preset}", disabled=not custom)
    beta = c4.number_input("β", 0.001, 10.0, base.beta, step=0.05, format="%.3f", key=f"lik_beta_{preset}", disabled=not custom)
    c1, c2, c3, c4 = st.columns(4)
    minibatch = c1.number_input("Pairs per update (0 = full batch)", 0, 10000, base.minibatch, key=f"lik_mb_{preset}",
                                disabled=not custom)
    seeds_text = c2.text_input("Seeds (one run each)", ",".join(map(str, base.seeds)), key=f"lik_seeds_{preset}")
    per_run = c3.number_input("Pairs per run (0 = all picked)", 0, 10000, base.pairs_per_run, key=f"lik_ppr_{preset}")
    sft = c4.number_input("SFT epochs on y+ first", 0, 10, base.sft_epochs, key=f"lik_sft_{preset}", disabled=not custom)
    watch = st.text_input("Watch tokens (optional; separate with |; a leading space counts)", "Yes| Yes", key="lik_watch")
    ckpt = st.text_input("Save the last run's trained copy as checkpoint (name; empty: do not keep it)", "", key="lik_ckpt")
    try:
        seeds = tuple(int(s) for s in seeds_text.replace(" ", "").split(",") if s)
        dcfg = base.with_(optimizer=optimizer, lr=float(lr), steps=int(steps), beta=float(beta), minibatch=int(minibatch),
                          seeds=seeds, pairs_per_run=int(per_run), sft_epochs=int(sft),
                          watch_tokens=tuple(t for t in watch.split("|") if t.strip()))
        if ckpt:
            check_name_free(ckpt)
        problem = None
    except (ValueError, FileExistsError) as err:
        dcfg, problem = None, str(err)
    if problem:
        st.error(problem)
    key = ("dpo", lm.fingerprint, filename, digest, tuple(picked), dcfg, ckpt)
    if st.button("Run DPO", type="primary", key="lik_run_dpo", disabled=not picked or dcfg is None):
        state.put("lik_dpo_pending", key)
    if state.get("lik_dpo_pending") == key and dcfg is not None:
        sub = list(picked)

        def work(progress):
            return run_dpo(lm, data, dcfg, pairs=sub, progress=progress, keep_model=bool(ckpt))

        try:
            result = jobs.run(key, work, f"DPO, {len(dcfg.seeds)} run(s) x {dcfg.steps} steps", stop_key="lik_stop_dpo")
        except (ValueError, DPOMemoryError, Stopped) as err:
            state.put("lik_dpo_pending", None)
            show_error(f"DPO failed: {err}")
            st.stop()
        state.put("lik_dpo_pending", None)
        if result.module is not None:
            last = result.runs[-1]
            path = save_checkpoint(result.module, {"model": lm.name, "backend": lm.backend, "source": source,
                                                   "pairs": last.pairs, "seed": last.seed,
                                                   "steps_done": len(last.history) - 1, "dpo": dcfg.to_dict()}, ckpt)
            st.success(f"Saved checkpoint {ckpt!r} to {path}")
            state.put("lik_policy", result.policy)
            result.module = result.policy = None  # the result may sit in the jobs cache; the copy lives in this session
        state.put("lik_dpo", {"result": result, "config": dcfg, "pairs": sub, "source": source})
    run = state.get("lik_dpo")
    if run and run["result"].runs and run["source"] == source:
        result = run["result"]
        rows = sum(len(r.history) for r in result.runs)
        st.caption(f"{len(result.runs)} run(s), {rows} rows (row t = after t updates), pairs {run['pairs']}, "
                   f"{result.seconds_per_step:.2f} s per update" + (" — stopped early; finished steps kept" if result.stopped_early else ""))
        recipe = dpo_recipe_config(run["source"], run["pairs"], run["config"])
        figs = dpo_figures(result)
        for kind in ("dpo_curves", "dpo_gainers", "dpo_rank"):
            st.caption(FIGURE_TEXT[kind])
            fig, frame = figs[kind]
            render_figure(fig, data=frame, recipe=make_recipe(kind, lm.name, recipe), key=f"lik_{kind}",
                          filename=f"{source}_{kind}")
        st.markdown("**Tokens whose probability rose most** (last recorded step, mean over runs)")
        st.dataframe(gainers_frame(result), hide_index=True, key="lik_gainers")
        disc = discovery_frame(result)
        if not disc.empty:
            last_step = int(disc["step"].max())
            step = (st.slider("Top gainers at step", 1, last_step, last_step, key="lik_disc_step")
                    if last_step > 1 else last_step)
            st.dataframe(disc[(disc["step"] == step) & (disc["order"] == "p")], hide_index=True, key="lik_disc")
        st.dataframe(summary_frame(result), hide_index=True, key="lik_dpo_table")

# ---------------------------------------------------------------- 3. indicators
with tab_ind:
    st.markdown(
        "Over-optimisation indicators per response position: top-k probability mass M_k (sum of the k "
        "largest next-token probabilities) and top-k entropy H_k (entropy of those k, renormalised); "
        "means per response, across DPO steps and between models sharing a tokenizer."
    )
    run = state.get("lik_dpo")
    if run and run["result"].runs:
        fig, frame = dpo_figures(run["result"])["dpo_indicators"]
        st.caption(FIGURE_TEXT["dpo_indicators"])
        render_figure(fig, data=frame, recipe=make_recipe("dpo_indicators", lm.name,
                                                          dpo_recipe_config(run["source"], run["pairs"], run["config"])),
                      key="lik_ind_steps", filename=f"{source}_dpo_indicators")
    else:
        st.info("Run DPO in the previous tab to see the indicators per step.")
    policy = state.get("lik_policy")
    if policy is not None and run:
        if st.button("Compare the shared model with the trained copy", key="lik_compare"):
            comp = compare_indicators({"before": lm_logits_fn(lm), "after DPO": policy}, lm.tokenizer,
                                      data.subset(run["pairs"]), top_k=10, device=lm.device)
            render_figure(indicator_comparison_figure(comp), data=comp, recipe=None, key="lik_ind_cmp",
                          filename=f"{source}_indicators_before_after")
    elif run:
        st.caption("Give a checkpoint name before running DPO to keep the trained copy and compare it here.")
