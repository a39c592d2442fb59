"""Concepts: fit concept activation vectors per layer, check them against random splits, compare them."""

from __future__ import annotations

import hashlib

import streamlit as st

from analysis.concepts.cavs import FITTERS, CavConfig, accuracy_frame, fit_from_config, similarity_frame
from analysis.concepts.sets import (
    background_texts,
    delete_workspace_concept,
    load_all_sets,
    save_uploaded_concepts,
    workspace_dir,
    workspace_problems,
)
from analysis.concepts.figures import accuracy_figure, projection_figure, similarity_figure
from analysis.concepts.projection import METHODS as PROJECTIONS
from analysis.concepts.projection import ProjectionConfig, compute_projection, projection_frame
from analysis.progress import Stopped
from analysis.recipes import make_recipe
from analysis.uploads import UploadError, parse_concept_upload
from app import jobs
from app.figures import render_figure
from app.state import get, put, require_model
from app.text import md_escape, show_error, show_warning

DEFAULT_CONCEPTS = ("positive_sentiment", "negative_sentiment")


def _sets_key(sets: dict, names) -> tuple:
    """Content fingerprint of the chosen sets, so an edited workspace set refits."""
    return tuple((n, hashlib.sha256("\n".join(sets[n].texts).encode()).hexdigest()) for n in names)


def _fit(lm, config: CavConfig, sets_key: tuple):
    # A worker thread computes; this script draws the bar (app/jobs.py: nothing replays from a cache).
    return jobs.run(("cavs", lm.name, config, sets_key), lambda progress: fit_from_config(lm, config, progress),
                    "Fitting CAVs", stop_key="concepts_stop")


@st.cache_data(show_spinner=False, max_entries=16)
def _project(_lm, model_name: str, config: ProjectionConfig, sets_key: tuple, layers: tuple[int, ...]):
    from analysis.concepts.sets import load_concepts

    # Every fitted layer in one extraction: switching the layer shown then reads the disk cache, no forward pass.
    return compute_projection(_lm, load_concepts(), background_texts(config.background), config, extract_layers=layers)


def _upload_section() -> None:
    with st.expander("Upload or remove your own concept sets"):
        st.caption("A .txt file is one concept (one example per line, named after the file); a .csv/.jsonl "
                   "needs a `text` column and may have a `concept` column. Saved sets persist across restarts.")
        upload = st.file_uploader("Concept file", type=["txt", "csv", "jsonl"], key="concepts_upload")
        rename = st.text_input("Name (single-concept files; snake_case)", key="concepts_upload_name")
        if st.button("Save to workspace", disabled=upload is None, key="concepts_save"):
            try:
                parsed = parse_concept_upload(upload.name, upload.getvalue())
                if rename.strip():
                    if len(parsed) != 1:
                        raise UploadError(f"{upload.name} holds {len(parsed)} concepts; a name only applies to one")
                    parsed = {rename.strip(): next(iter(parsed.values()))}
                saved = save_uploaded_concepts(parsed)
                st.success(md_escape("Saved " + ", ".join(f"{s.name} ({len(s.texts)} texts)" for s in saved)))
            except (UploadError, ValueError, OSError) as err:
                show_error(err)
        for problem in workspace_problems():
            show_warning(problem)
        folder = workspace_dir()
        own = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []  # broken files too
        if own:
            gone = st.selectbox("Workspace concept", own, key="concepts_delete_pick")
            if st.button("Delete", key="concepts_delete"):
                try:
                    delete_workspace_concept(gone)
                except (ValueError, OSError) as err:
                    show_error(err)
                else:
                    st.rerun()


def main() -> None:
    st.title("Concepts")
    st.caption("Concept activation vectors (TCAV): per layer, a linear probe separates a concept's texts from "
               "neutral background texts; shaded bands show accuracies of probes trained on random background "
               "splits, and hollow markers are CAVs that do not beat them (Methods §1).")
    lm = require_model()
    _upload_section()
    try:
        sets = load_all_sets()
    except ValueError as err:
        show_error(f"Could not read the concept sets: {err}")
        st.stop()
    concepts = {n: s for n, s in sets.items() if s.kind == "concept"}
    backgrounds = [n for n, s in sets.items() if s.kind == "background"]

    # A row to itself: in half the width the chosen concepts' names were cut off.
    chosen = st.multiselect(
        "Concepts", list(concepts), default=[c for c in DEFAULT_CONCEPTS if c in concepts],
        format_func=lambda n: f"{n} ({len(concepts[n].texts)}{', yours' if concepts[n].source == 'workspace' else ''})",
        key="concepts_pick",
    )
    left, right = st.columns(2)
    background = right.selectbox("Background (negatives)", backgrounds, key="concepts_background")
    top = lm.n_layers - 1
    lo, hi = left.slider("Layers", 0, top, (0, top), key="concepts_layers")
    method = right.selectbox("Method", list(FITTERS), key="concepts_method")
    pooling = left.selectbox("Pooling", ["last", "mean"], key="concepts_pooling")
    n_random = right.number_input("Random-split runs (TCAV null)", 1, 50, 10, key="concepts_random")
    max_texts = left.number_input("Max texts per concept (0 = all)", 0, 1000, 0, step=10, key="concepts_max")
    if st.button("Run", type="primary", disabled=not chosen, key="concepts_run"):
        folds = CavConfig.__dataclass_fields__["n_folds"].default
        if 0 < max_texts < folds:  # the config would say "or None": the widget's word for all is 0
            show_error(f"Max texts per concept: {max_texts} is fewer than the {folds} cross-validation folds; "
                       f"use at least {folds}, or 0 for all texts")
            st.stop()
        try:
            config = CavConfig(
                concepts=tuple(chosen), layers=tuple(range(lo, hi + 1)), pooling=pooling, method=method,
                n_random=int(n_random), max_texts=int(max_texts) or None, background=background,
            )
        except ValueError as err:
            show_error(err)
            st.stop()
        put("cav_config", config)
        try:
            _fit(lm, config, _sets_key(sets, (*chosen, background)))
        except Stopped:
            put("cav_config", None)
            st.info("Stopped before the fit finished; press Run to start again.")
            st.stop()
        except ValueError as err:
            put("cav_config", None)
            show_error(err)
            st.stop()

    config: CavConfig | None = get("cav_config")
    if config is None or any(n not in sets for n in (*config.concepts, config.background)):
        st.info("Pick concepts and press Run.")
        return
    try:
        result = _fit(lm, config, _sets_key(sets, (*config.concepts, config.background)))
    except Stopped:
        put("cav_config", None)
        st.info("Stopped before the fit finished; press Run to start again.")
        return
    recipe = make_recipe("cav_accuracy", lm.name, config.to_dict())
    render_figure(accuracy_figure(result), data=accuracy_frame(result), recipe=recipe,
                  key="cav_accuracy", filename="cav_accuracy")

    layer = st.select_slider("Layer for the similarity matrix, projection and SAE probes", list(result.layers),
                             value=result.best_layer(config.concepts[0]), key="concepts_layer")
    if len(config.concepts) > 1:
        sim = similarity_frame(result, layer)
        render_figure(similarity_figure(sim.to_numpy(), config.concepts, layer), data=sim.reset_index(names="concept"),
                      recipe=make_recipe("cav_similarity", lm.name, {**config.to_dict(), "layer": layer}),
                      key="cav_similarity", filename=f"cav_similarity_L{layer}")

    how = st.radio("Projection", PROJECTIONS, horizontal=True, format_func=str.upper, key="concepts_proj")
    if how == "umap":
        st.caption("UMAP compiles its kernels on first use in a process (about a minute).")
    pconfig = ProjectionConfig(concepts=config.concepts, layer=layer, method=how, pooling=config.pooling,
                               seed=config.seed, background=config.background,
                               max_texts=min(config.max_texts or 100, 100))
    with st.spinner(f"Projecting activations at layer {layer} ..."):
        data = _project(lm, lm.name, pconfig, _sets_key(sets, (*config.concepts, config.background)), result.layers)
    render_figure(projection_figure(data.coords, data.labels, method=how, layer=layer, texts=data.texts,
                                    background_label=config.background),
                  data=projection_frame(data), recipe=make_recipe("concept_projection", lm.name, pconfig.to_dict()),
                  key="concept_projection", filename=f"concept_projection_{how}_L{layer}")

    try:
        from app.sae_panel import render_sae_panel
    except ImportError:
        st.info("SAE probes are not available in this installation.")
        return
    render_sae_panel(lm, list(config.concepts), layer)


main()
