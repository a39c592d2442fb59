"""Compare: two model states (A, B) in one view; concept drift during DPO; steering audit."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis.bias import load_presets
from analysis.compare import (
    CompareConfig,
    DriftConfig,
    check_state,
    compare,
    compute_audit,
    compute_drift,
    short_spec,
)
from analysis.compare import figures as F
from analysis.paths import workspace_root
from analysis.progress import Stopped
from analysis.recipes import make_recipe
from app import state
from app.figures import render_figure
from app.text import show_error

VIEW_LABELS = {"bias": "Bias", "concepts": "Concepts", "lens": "Live inspection", "likelihood": "Likelihood"}
STOP_KEY = "cmp_stop_requested"


def _state_options() -> list[str]:
    """Spec strings the user can pick: base, saved steering vectors, DPO checkpoints."""
    options = ["base"]
    for path in sorted((workspace_root() / "steering").glob("*.safetensors")):
        options.append(f"steer:{path.name}@alpha=-1.6")  # a bare name resolves in the workspace's steering folder
    try:
        from analysis.likelihood import list_checkpoints

        options += [f"ckpt:{c.name}" for c in list_checkpoints()]
    except Exception as err:  # noqa: BLE001 - a broken checkpoint store must not hide the page
        st.caption(f"DPO checkpoints unavailable: {err}")
    return options


def _pick_state(label: str, key: str, default: int) -> str:
    options = _state_options() + ["custom ..."]
    # the picker and its spec each on a row of their own: in a third of the width at 1000 px even a
    # vector's file name was cut off
    choice = st.selectbox(label, options, index=min(default, len(options) - 2), key=f"{key}_choice",
                          format_func=short_spec)
    spec = st.text_input(f"{label} spec", value=choice if choice != "custom ..." else "base", key=f"{key}_{choice}",
                         help="base · steer:PATH.safetensors@alpha=-1.6[@layers=6] · ckpt:NAME · model:NAME")
    return spec.strip()


def _progress_bar():
    bar = st.progress(0.0, text="starting ...")

    def progress(fraction: float, stage: str) -> None:
        if st.session_state.get(STOP_KEY):
            raise Stopped(stage)
        bar.progress(min(1.0, fraction), text=stage)

    return bar, progress


lm = state.require_model()
st.title("Compare two model states")
st.markdown(
    "Pick a state **A** and a state **B** (the base model, a steered state, a saved DPO checkpoint, or another "
    "model with the same tokenizer) and see **B − A** in each view, with bootstrap intervals over texts. "
    "A checkpoint is loaded into a copy; the shared model is never changed."
)
a = _pick_state("State A", "cmp_a", 0)
b = _pick_state("State B", "cmp_b", 1)
try:  # two statements: a bare tuple expression is drawn on the page by Streamlit's magic
    check_state(a)
    check_state(b)
except ValueError as err:
    show_error(err)
    st.stop()

presets = load_presets()
tab_view, tab_drift, tab_audit = st.tabs(["A vs B", "Concept drift during DPO", "Steering audit"])

with tab_view:
    c1, c2, c3 = st.columns(3)
    view = c1.radio("View", list(VIEW_LABELS), format_func=VIEW_LABELS.get, key="cmp_view", horizontal=True)
    preset = c2.selectbox("Bias preset (bias and concepts views)", list(presets), key="cmp_preset")
    max_texts = int(c3.number_input("Texts per concept", 4, 200, 32, key="cmp_max_texts"))
    prompt = st.text_input("Prompt (live inspection)", "The nurse said that", key="cmp_prompt") if view == "lens" else "The nurse said that"
    try:
        cfg = CompareConfig(a=a, b=b, view=view, preset=preset, max_texts=max_texts, max_background=2 * max_texts,
                            prompt=prompt, n_bootstrap=200, n_permutations=200)
    except ValueError as err:
        show_error(err)
        st.stop()
    key = ("cmp", lm.fingerprint, cfg)
    if st.button("Compare", key="cmp_run", type="primary"):
        st.session_state[STOP_KEY] = False
        bar, progress = _progress_bar()
        try:
            state.put("cmp_result", (key, compare(lm, cfg, progress)))
        except Stopped:
            st.warning("Stopped.")
        except ValueError as err:
            show_error(err)
        bar.empty()
    saved = state.get("cmp_result")
    if not saved or saved[0] != key:
        st.info("Press **Compare** to run both states.")
    else:
        result = saved[1]
        recipe = make_recipe(f"compare_{view}", lm.name, cfg.to_dict())
        if view == "bias":
            st.caption("ΔBias over the layers that pass the accuracy rule in both states; p: A/B swapped text by text.")
            render_figure(F.delta_bias_figure(result, a, b), data=result.frame(), recipe=recipe, key="cmp_bias",
                          filename="compare_bias")
            for msg in result.messages.values():
                st.warning(msg)
        elif view == "concepts":
            render_figure(F.delta_concepts_figure(result, a, b), data=result.layer_frame(), recipe=recipe,
                          key="cmp_concepts", filename="compare_concepts")
            layer = st.slider("Layer for Δ cosine", 0, len(result.layers) - 1, len(result.layers) // 2, key="cmp_layer")
            render_figure(F.delta_cosine_figure(result, layer, a, b), data=result.frame(),
                          recipe=make_recipe("compare_concepts_cosine", lm.name, {**cfg.to_dict(), "layer": layer}),
                          key="cmp_cosine", filename=f"compare_cosine_L{layer}")
            moved = [c for c, m in zip(result.concepts, result.moved) if m]
            st.markdown(f"**Concepts that moved along their own CAV:** {', '.join(moved) or 'none'}")
        elif view == "lens":
            render_figure(F.lens_kl_figure(result, a, b), data=result.frame(), recipe=recipe, key="cmp_lens",
                          filename="compare_lens")
            st.dataframe(result.changed, hide_index=True)
        else:
            render_figure(F.likelihood_figure(result, a, b), data=result, recipe=recipe, key="cmp_likelihood",
                          filename="compare_likelihood")

with tab_drift:
    st.markdown("A short DPO run on a copy of the model; at each chosen step the change in mean activation of each "
                "concept's texts (minus the background's) is projected onto its CAV and the preset's bias axes.")
    c1, c2, c3 = st.columns(3)
    steps_text = c1.text_input("Steps", "0,1,2", key="cmp_drift_steps")
    lr = c2.number_input("Learning rate", 1e-7, 1e-2, 1e-5, format="%.0e", key="cmp_drift_lr")
    pairs = int(c3.number_input("Preference pairs (displacement demo)", 1, 16, 4, key="cmp_drift_pairs"))
    try:
        steps = tuple(int(s) for s in steps_text.split(",") if s.strip())
        dcfg = DriftConfig(preset=preset, steps=steps, lr=float(lr), max_pairs=pairs, max_texts=max_texts,
                           max_background=2 * max_texts)
    except ValueError as err:
        show_error(f"Drift settings: {err}")
        dcfg = None
    if dcfg is not None:
        run_col, stop_col = st.columns(2)
        stop_col.button("Stop", key="cmp_drift_stop", on_click=lambda: st.session_state.update({STOP_KEY: True}))
        if run_col.button("Run drift", key="cmp_drift_run", type="primary"):
            st.session_state[STOP_KEY] = False
            bar, progress = _progress_bar()
            try:
                state.put("cmp_drift", (dcfg, compute_drift(lm, dcfg, progress)))
            except ValueError as err:
                show_error(err)
            bar.empty()
        saved = state.get("cmp_drift")
        if saved and saved[0] == dcfg:
            result = saved[1]
            if result.stopped:
                st.warning(f"Stopped: steps {result.steps} are kept.")
            render_figure(F.drift_figure(result), data=result.frame(),
                          recipe=make_recipe("compare_drift", lm.name, dcfg.to_dict()), key="cmp_drift_fig",
                          filename="compare_drift")
            for msg in result.messages:
                st.caption(msg)

with tab_audit:
    if not b.startswith("steer:"):
        st.info("Pick a steered state as **B** (steer:PATH@alpha=A) to audit it against random directions.")
    else:
        n_random = int(st.number_input("Random directions", 1, 99, 9, key="cmp_audit_n"))
        acfg = CompareConfig(a="base", b=b, view="concepts", max_texts=min(max_texts, 16), max_background=32)
        akey = (b, n_random, acfg)
        if st.button("Run audit", key="cmp_audit_run", type="primary"):
            st.session_state[STOP_KEY] = False
            bar, progress = _progress_bar()
            try:
                state.put("cmp_audit", (akey, compute_audit(lm, b, acfg, progress, n_random=n_random)))
            except (ValueError, Stopped) as err:
                show_error(err)
            bar.empty()
        saved = state.get("cmp_audit")
        if saved and saved[0] == akey:
            result = saved[1]
            render_figure(F.audit_figure(result, b), data=result.frame(),
                          recipe=make_recipe("compare_audit", lm.name, {**acfg.to_dict(), "state": b, "n_random": n_random}),
                          key="cmp_audit_fig", filename="compare_audit")
            st.caption(f"{Path(b.split(':', 1)[1].split('@')[0]).name}: concepts with p ≤ 0.05 shift more than "
                       "random directions of the same norm do.")
