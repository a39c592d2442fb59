"""A reusable page section: pick an SAE, see its quality, the latents of concepts, probes and a latent card.

``render_sae_panel(lm, concept_names, layer)`` is called by the Concepts page
(and may be by the Bias page). All numbers come from ``analysis.saes.probes``;
every figure goes through ``render_figure``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from analysis.models import LoadedModel
from analysis.recipes import make_recipe
from analysis.saes.recipes import ConceptLatentsConfig, LatentCardConfig
from app.figures import render_figure
from app.state import get_sae
from app.text import md_escape, show_error

_CHOICES = ("Shipped", "Local folder or release:id", "Upload")


def _pick_sae(lm: LoadedModel, layer: int, key: str):
    from analysis.saes.loading import SAELoadError, shipped_for, shipped_saes

    how = st.radio("SAE source", _CHOICES, horizontal=True, key=f"{key}-how")
    try:
        if how == _CHOICES[0]:
            names = shipped_for(lm.name, layer) or shipped_for(lm.name)
            if not names:
                st.info(f"No shipped SAE for {lm.name}. Shipped: {', '.join(shipped_saes()) or 'none'}; "
                        "use a local folder, a sae-lens release:id or an upload.")
                return None, None
            name = st.selectbox("Shipped SAE", names, key=f"{key}-shipped")
            return get_sae(name), name
        if how == _CHOICES[1]:
            source = st.text_input("Folder with cfg.json + sae_weights.safetensors, or sae-lens release:sae_id",
                                   key=f"{key}-path").strip()
            if not source:
                return None, None
            return get_sae(source), source
        cols = st.columns(2)
        cfg = cols[0].file_uploader("cfg.json", type=["json"], key=f"{key}-cfg")
        weights = cols[1].file_uploader("sae_weights.safetensors", type=["safetensors"], key=f"{key}-w")
        if cfg is None or weights is None:
            st.caption("Upload both files a sae-lens `save_model` writes. Pickled (.pt/.pth) weights are refused.")
            return None, None
        c, w = cfg.getvalue(), weights.getvalue()
        digest = hashlib.sha256(c + w).hexdigest()
        return get_sae(f"upload:{weights.name}", upload_digest=digest, _upload=(c, w)), None
    except SAELoadError as err:
        show_error(err)
    except Exception as err:  # noqa: BLE001 - a bad SAE must not break the page
        show_error(f"Could not load the SAE: {type(err).__name__}: {err}")
    return None, None


def _show_quality(loaded) -> None:
    q = loaded.quality
    st.caption(md_escape(f"{loaded.name}: {loaded.sae.cfg.architecture()} SAE, {loaded.d_sae} latents, "
                         f"reads {loaded.hook_name}"))
    if not q:
        st.caption("No quality.json next to this SAE: reconstruction quality unknown.")
        return
    # Two rows of metrics: five in one row were cut off ("FVU (held…") on a page 1000 px wide.
    cols = st.columns(2)
    cols[0].metric("FVU (held out)", f"{q['fvu']:.3f}", help="fraction of variance unexplained")
    cols[1].metric("mean L0", f"{q['mean_l0']:.1f}", help="active latents per token")
    cols = st.columns(3)
    cols[0].metric("LM loss clean", f"{q['ce_clean']:.3f}")
    cols[1].metric("with SAE spliced", f"{q['ce_spliced']:.3f}",
                   delta=f"{q['ce_spliced'] - q['ce_clean']:+.3f}", delta_color="inverse")
    cols[2].metric("resid zeroed", f"{q['ce_zero_ablated']:.3f}")
    st.caption(f"Measured on {q['n_texts']} held-out texts ({q['n_tokens']} tokens); "
               f"loss recovered {100 * q['loss_recovered']:.1f}%.")


# cache_resource, not cache_data: the codes and cards are read-only, and a rerun then takes the
# cached object as it is instead of unpickling a copy (~30 ms for the codes of ~900 texts)
@st.cache_resource(show_spinner=False, max_entries=64)
def _codes(_lm, _loaded, model_key: str, sae_key: str, corpus_key: str, _texts: tuple[str, ...]):
    from analysis.saes.probes import token_codes

    return token_codes(_lm, _loaded, list(_texts))


@st.cache_resource(show_spinner=False, max_entries=64)
def _concept_codes(_codes_, model_key: str, sae_key: str, corpus_key: str, concept: str, pooling: str,
                   _corpus: tuple[str, ...], _pos_texts: tuple[str, ...], _neg_texts: tuple[str, ...]):
    # One concept's and its background's token codes, sliced out of the corpus codes, and their pooled
    # codes: the slices copy tens of MB of dense codes, so a display control must not redo them.
    row = {t: i for i, t in enumerate(_corpus)}
    pos, neg = _codes_.rows([row[t] for t in _pos_texts]), _codes_.rows([row[t] for t in _neg_texts])
    return pos, neg, pos.pooled(pooling), neg.pooled(pooling)


@st.cache_resource(show_spinner=False, max_entries=256)
def _card(_lm, _loaded, _codes_, model_key: str, sae_key: str, corpus_key: str, latent: int, _corpus: tuple[str, ...]):
    # The latent card (where it fires in the corpus; its decoder row's promoted tokens): computed once
    # per latent, so another display control does not redo the 262k-wide W_dec·W_U product.
    from analysis.saes.probes import compute_latent_card

    return compute_latent_card(_lm, _loaded, latent, list(_corpus), codes=_codes_)


@st.cache_data(show_spinner=False, max_entries=64)
def _probe(model_key: str, sae_key: str, corpus_key: str, concept: str, pooling: str, _pos, _neg):
    # The cross-validated probe curve of one concept (keyed by what its codes come from): not refitted
    # on every rerun of the page.
    from analysis.saes.probes import compute_sparse_probe

    return compute_sparse_probe(_pos.pooled(pooling), _neg.pooled(pooling), concept=concept)


def render_sae_panel(lm: LoadedModel, concept_names: list[str], layer: int, key: str = "sae") -> None:
    """The SAE section; ``layer`` preselects SAEs that read ``resid_post[layer]``."""
    from analysis.concepts.sets import background_texts, load_concepts
    from analysis.saes.figures import (
        concept_latents_figure, latent_histogram_figure, probe_accuracy_figure, promoted_tokens_figure,
    )
    from analysis.saes.probes import POOLINGS, compute_concept_latents, latent_top_tokens

    st.subheader("Sparse autoencoder latents")
    loaded, source = _pick_sae(lm, layer, key)
    if loaded is None:
        return
    _show_quality(loaded)
    if loaded.d_in != lm.d_model or loaded.hook_name not in lm.model.hook_dict:
        show_error(f"{loaded.name} reads {loaded.hook_name!r} with d_in={loaded.d_in}; {lm.name} has "
                 f"d_model={lm.d_model}. Pick an SAE trained on this model.")
        return
    if loaded.layer is not None and loaded.layer != layer:
        st.warning(f"This SAE reads layer {loaded.layer}, not layer {layer}; its latents are at layer {loaded.layer}.")
    concepts = load_concepts()
    names = [n for n in concept_names if n in concepts]
    if not names:
        st.info("Choose at least one concept set to see its SAE latents.")
        return
    cols = st.columns(3)
    concept = cols[0].selectbox("Concept", names, key=f"{key}-concept")
    pooling = cols[1].selectbox("Pool tokens by", POOLINGS, key=f"{key}-pool",
                                help="max: a latent firing on one word keeps its value; mean: averaged over tokens")
    top = int(cols[2].number_input("Latents shown", 5, 50, 20, key=f"{key}-top"))
    cs = concepts[concept]
    sae_key = source or loaded.name
    neg_texts = tuple(background_texts(cs.background))
    # One encoding of every chosen concept's texts and their backgrounds: picking another concept, pooling
    # or latent slices it and never runs the model again (issue 16: no hidden recomputation).
    corpus = tuple(dict.fromkeys([t for n in names for t in concepts[n].texts]
                                 + [t for b in dict.fromkeys(concepts[n].background for n in names)
                                    for t in background_texts(b)]))
    # The corpus by its content hash: Streamlit's own hashing of ~900 strings per cached call cost
    # ~10 ms each, several times per rerun.
    corpus_key = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
    with st.spinner("Encoding texts with the SAE ..."):
        codes = _codes(lm, loaded, lm.fingerprint, sae_key, corpus_key, corpus)
    pos_codes, neg_codes, pos_pooled, neg_pooled = _concept_codes(codes, lm.fingerprint, sae_key, corpus_key, concept,
                                                                  pooling, corpus, tuple(cs.texts), neg_texts)
    data = compute_concept_latents(pos_pooled, neg_pooled, concept, pooling)
    tokens = latent_top_tokens(pos_codes, data.top(top), lambda i: lm.tokenizer.decode([i]))
    config = ConceptLatentsConfig(sae=source, concept=concept, pooling=pooling, top=top).to_dict() if source else None
    recipe = (lambda kind: make_recipe(kind, lm.name, config)) if source else (lambda kind: None)
    render_figure(concept_latents_figure(data, top, tokens), data=data.frame(top, tokens),
                  recipe=recipe("sae_concept_latents"), key=f"{key}-latents", filename=f"sae-latents-{concept}")
    with st.spinner("Cross-validating sparse probes ..."):
        curve = _probe(lm.fingerprint, sae_key, corpus_key, concept, pooling, pos_codes, neg_codes)
    render_figure(probe_accuracy_figure(curve), data=curve.frame(), recipe=recipe("sae_probe_accuracy"),
                  key=f"{key}-probe", filename=f"sae-probe-{concept}")

    st.markdown("**Latent card**")
    latent = int(st.number_input("Latent", 0, loaded.d_sae - 1, int(data.top(1)[0]), key=f"{key}-latent",
                                 help="defaults to the concept's strongest latent"))
    with st.spinner("Finding where the latent fires ..."):
        card = _card(lm, loaded, codes, lm.fingerprint, sae_key, corpus_key, latent, corpus)
    st.caption(f"Corpus: the texts of {', '.join(names)} and the background ({len(corpus)} texts).")
    # Token and value first, in narrow columns: after the text they scrolled out of view at 1000 px.
    st.dataframe(card.top_texts[["token", "max_activation", "text"]], hide_index=True, width="stretch",
                 column_config={"token": st.column_config.TextColumn("token", width="small"),
                                "max_activation": st.column_config.NumberColumn(
                                    "peak", width="small", format="%.3f",
                                    help="the latent's largest activation on a token of the text")})
    card_config = LatentCardConfig(sae=source, latent=latent, concepts=tuple(names)).to_dict() if source else None
    card_recipe = (lambda kind: make_recipe(kind, lm.name, card_config)) if source else (lambda kind: None)
    # One figure per row: side by side, their titles, axis titles and buttons were cut off at 1000 px.
    render_figure(latent_histogram_figure(card), data=card.top_texts, recipe=card_recipe("sae_latent_histogram"),
                  key=f"{key}-hist", filename=f"sae-latent-{latent}-histogram")
    import pandas as pd

    frame = pd.DataFrame({"token": card.promoted_tokens, "logit": np.asarray(card.promoted_logits)})
    render_figure(promoted_tokens_figure(card), data=frame, recipe=card_recipe("sae_promoted_tokens"),
                  key=f"{key}-promoted", filename=f"sae-latent-{latent}-tokens")
    st.caption("Direct effect of the decoder row on the logits (W_dec[i] @ W_U, final norm skipped); "
               "for middle-layer latents it is often noisy: read the top texts first.")
