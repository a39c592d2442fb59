"""Bias asymmetry (BiasLens): where do target concepts sit between two reference concepts?"""

from __future__ import annotations

import streamlit as st

from analysis.bias import (BiasConfig, behaviour_data, behaviour_rows, compute_bias, differential_verdict, layer_frame,
                           load_presets, load_templates, sae_view, summary_frame)
from analysis.concepts import load_concepts
from analysis.bias.figures import (behaviour_figure, differential_figure, heatmap_figure, shared_latents_figure,
                                   summary_figure)
from analysis.progress import Stopped
from analysis.recipes import make_recipe
from app import jobs, state
from app.figures import render_figure
from app.text import md_escape, show_error

CUSTOM = "Custom ..."
REPRESENTATIONS = {"dense": "Dense CAV", "sae-diff": "SAE code difference", "sae-proj": "CAV → SAE decoder projection"}


def _bias(cfg: BiasConfig, model: str, lm):
    """The bias result for ``cfg``: computed in a worker thread with a bar and Stop (app/jobs.py), then cached."""
    return jobs.run(("bias", model, cfg), lambda progress: compute_bias(lm, cfg, progress), "Computing bias",
                    stop_key="bias_stop")


@st.cache_data(show_spinner=False, max_entries=16)
def _behaviour(cfg: BiasConfig, template_set: str, aggregate: str, mode: str, model: str, _lm, _result):
    # _result is the bias result of cfg (computed outside any cache); cfg keys the cache entry.
    return behaviour_data(behaviour_rows(_lm, _result, "this run", load_templates(template_set), aggregate,
                                         mode), mode)


@st.cache_resource(show_spinner=False)
def _has_sae(model: str, _lm) -> bool:
    return sae_view(_lm) is not None


lm = state.require_model()
st.title("Bias asymmetry")
st.markdown(
    "**Bias(t; r1, r2) = Align(t, r1) − Align(t, r2)**, Align being the cosine of two concept "
    "representations (BiasLens). Positive: the target sits nearer r1. Per layer, then summarised over the "
    "layers where all three CAVs classify well. Bars show a bootstrap CI; each target's p-value comes from "
    "re-partitioning the texts of r1 ∪ r2 (the same estimator refitted), Holm-corrected over targets; on the "
    "heatmap, open diamonds mark cells that survive a max-|T| correction over every layer and target. "
    "**Compare two targets** runs WEAT's differential test, Bias(X) − Bias(Y), with effect size d."
)

presets = load_presets()
concepts = sorted(load_concepts())
names = list(presets) + [CUSTOM]
choice = st.selectbox("Preset", names, key="bias_preset", format_func=lambda n: presets[n].title if n in presets else n)
if choice == CUSTOM:
    c1, c2, c3 = st.columns([2, 1, 1])
    targets = c1.multiselect("Targets", concepts, default=["food_aspect"], key="bias_targets")
    ref1 = c2.selectbox("r1", concepts, index=concepts.index("positive_sentiment"), key="bias_ref1")
    ref2 = c3.selectbox("r2", concepts, index=concepts.index("negative_sentiment"), key="bias_ref2")
    template_set = "evaluative"
else:
    p = presets[choice]
    targets, ref1, ref2, template_set = list(p.targets), p.ref1, p.ref2, p.templates
    st.caption(f"{p.description} Targets: {', '.join(targets)}; r1 = {ref1}, r2 = {ref2}.")

c1, c2, c3 = st.columns(3)
has_sae = _has_sae(lm.name, lm)
rep = c1.radio("Representation", list(REPRESENTATIONS), format_func=REPRESENTATIONS.get, key="bias_rep")
rule = c2.radio("Layer rule", ["threshold", "layer"], key="bias_rule",
                format_func={"threshold": "Accuracy threshold", "layer": "One layer"}.get)
if rule == "threshold":
    threshold, layer = c3.slider("Minimum CAV accuracy", 0.5, 1.0, 0.9, 0.01, key="bias_thr"), None
else:
    threshold, layer = 0.9, int(c3.number_input("Layer", 0, lm.n_layers - 1, min(6, lm.n_layers - 1), key="bias_layer"))
with st.expander("Estimation"):
    e1, e2, e3, e4 = st.columns(4)
    n_boot = int(e1.number_input("Bootstrap resamples", 20, 2000, 200, step=50, key="bias_boot"))
    n_perm = int(e2.number_input("Permutations", 19, 5000, 1000, step=100, key="bias_perm"))
    cav_method = e3.selectbox("Concept vector", ["mean_diff", "logistic"], key="bias_cav",
                              help="mean_diff makes every permutation closed-form; logistic refits each one (slow)")
    top_k = int(e4.number_input("SAE top-k", 1, 4096, 32, key="bias_topk"))
    baseline = st.radio("Negatives", ["background", "contrast"], horizontal=True, key="bias_baseline",
                        format_func={"background": "Background set", "contrast": "Pooled other concepts"}.get)
    standardise = st.checkbox("Standardise dimensions (z-scores from the background)", key="bias_std")
    signed = not st.checkbox("Magnitude |Bias| instead of signed", key="bias_abs")
    cap = int(st.number_input("Texts per concept (0 = all; fewer is faster; the background gets 3× as many, "
                              "at least 40)", 0, 500, 0, key="bias_cap"))

if rep != "dense" and not has_sae:
    st.warning(f"No SAE is shipped for {lm.name}: choose the dense representation.")
    st.stop()
compare = None
if len(targets) >= 2 and st.checkbox("Compare two targets (differential test)", value=len(targets) == 2,
                                    key="bias_compare"):
    pair = st.multiselect("The two targets X, Y", list(targets), default=list(targets)[:2], max_selections=2,
                          key="bias_pair")
    compare = tuple(pair) if len(pair) == 2 else None
try:
    cfg = BiasConfig(targets=tuple(targets), ref1=ref1, ref2=ref2, representation=rep, top_k=top_k, signed=signed,
                     layer_rule=rule, acc_threshold=float(threshold), layer=layer, n_bootstrap=n_boot,
                     n_permutations=n_perm, cav_method=cav_method, baseline=baseline if cav_method == "mean_diff" else "background",
                     standardise=standardise and cav_method == "mean_diff", differential=compare, max_texts=cap or None,
                     max_background=max(40, 3 * cap) if cap else None)
except ValueError as err:
    show_error(err)
    st.stop()

if st.button("Compute bias", type="primary", key="bias_run"):
    state.put("bias_cfg", cfg)
if state.get("bias_cfg") != cfg:
    sets = load_concepts()  # once, not twice per concept
    n_texts = sum(min(len(sets[c]), cfg.max_texts or len(sets[c])) for c in cfg.concepts)
    st.info(f"Press **Compute bias**: {n_texts} concept texts plus the background through {lm.n_layers} layers "
            "(cached on disk afterwards), CAVs, then the bootstrap.")
    st.stop()

try:
    result = _bias(cfg, lm.name, lm)
except Stopped:
    state.put("bias_cfg", None)
    st.info("Stopped before the analysis finished; press Compute bias to start again.")
    st.stop()
except ValueError as err:
    show_error(err)
    st.stop()
for msg in result.messages.values():
    st.warning(msg)

recipe = cfg.to_dict()
stem = "_".join([choice if choice in presets else "custom", rep])
tab_heat, tab_sum, tab_diff, tab_sae, tab_beh = st.tabs(["Layers", "Summary", "Differential", "Shared SAE latents",
                                                         "Behavioural check"])
with tab_heat:
    render_figure(heatmap_figure(result), data=layer_frame(result), recipe=make_recipe("bias_heatmap", lm.name, recipe),
                  key="bias_heatmap", filename=f"{stem}_heatmap")
with tab_sum:
    frame = summary_frame(result)
    render_figure(summary_figure(result), data=frame, recipe=make_recipe("bias_summary", lm.name, recipe),
                  key="bias_summary", filename=f"{stem}_summary")
    # The test's conclusion per target in words (the bars' labels say it in short).
    st.markdown("\n".join(f"- **{md_escape(t)}**: {md_escape(result.verdict(i))}"
                           for i, t in enumerate(result.targets)))
    if result.differential is not None:
        st.markdown(f"- {md_escape(differential_verdict(result.differential, result.alpha))}")
    st.caption(f"Two-sided permutation tests: {result.n_permutations} re-partitions of the texts of "
               f"{md_escape(result.refs[0])} ∪ {md_escape(result.refs[1])}"
               + (f"; Holm-corrected over {len(result.targets)} targets" if len(result.targets) > 1 else "")
               + f"; significant means a corrected p below α = {result.alpha:g} (Methods §2).")
    if st.checkbox("Show the table", key="bias_show_table"):
        st.dataframe(frame, hide_index=True)
with tab_diff:
    if result.differential is None:
        st.info("Tick **Compare two targets** above to run the differential test Bias(X) − Bias(Y).")
    else:
        render_figure(differential_figure(result), data=None, recipe=make_recipe("bias_differential", lm.name, recipe),
                      key="bias_differential", filename=f"{stem}_differential")
with tab_sae:
    if result.shared is None:
        st.info("No SAE is available for this model, so no latents can be listed.")
    else:
        st.caption("Dense representation: latents ranked by |cosine| of the CAV with each decoder row (sae-proj)."
                   if rep == "dense" else "")
        render_figure(shared_latents_figure(result.shared), data=result.shared.to_frame(),
                      recipe=make_recipe("bias_summary", lm.name, recipe), key="bias_shared", filename=f"{stem}_latents")
with tab_beh:
    st.markdown(
        "Behavioural bias: mean over templates × the target's mentions of log p(r1 words) − log p(r2 words), "
        f"each word scored whole (sum of its tokens' log-probs; template set **{template_set}**). "
        "*Paper-style*: log p(target mentions) after r1's texts versus after r2's. Spearman ρ (with n and a "
        "bootstrap CI) compares it with the conceptual Bias."
    )
    aggregate = st.radio("Aggregate words by", ["logmeanexp", "mean"], horizontal=True, key="bias_agg")
    mode = st.radio("Metric", ["templates", "paper"], horizontal=True, key="bias_beh_mode",
                    format_func={"templates": "Reference words after target templates",
                                 "paper": "Target words after reference contexts (paper-style)"}.get)
    if st.button("Run the behavioural check", key="bias_run_beh"):
        state.put("bias_beh", (cfg, aggregate, mode))
    if state.get("bias_beh") == (cfg, aggregate, mode):
        with st.spinner("Scoring every prompt × word ..."):
            data = _behaviour(cfg, template_set, aggregate, mode, lm.name, lm, result)
        render_figure(behaviour_figure(data), data=data.to_frame(), recipe=None, key="bias_behaviour",
                      filename=f"{stem}_behaviour")
        st.caption("Across every preset: `repscope bias` per preset, or the bench (bench/bench_bias.py).")
