"""Home: what RepScope is, the model picker, and facts about the loaded model."""

from __future__ import annotations

import streamlit as st

from analysis.gguf_convert import converted_folder, is_converted
from analysis.models import CATALOGUE, DEFAULT_MODEL, describe
from analysis.scale import InsufficientMemory, check_fits
from app import state
from app.text import md_escape, show_error
from app.widgets import (
    gemma_terms, is_gemma, page_links, process_memory, registered_pages, switch_model,
)

DEVICES = ("auto", "cpu", "cuda", "mps", "split:auto", "split:balanced")
DEVICE_LABELS = {"split:auto": "split over GPUs (auto)", "split:balanced": "split over GPUs (balanced)"}
# The default first, then the catalogue in file order.
CHOICES = [DEFAULT_MODEL] + [k for k in CATALOGUE if k != DEFAULT_MODEL]


def _sync_widgets() -> None:
    """Point the picker at the session's model (first visit, or after a failed load)."""
    name = state.model_name()
    st.session_state["home_pick"] = name if name in CATALOGUE else DEFAULT_MODEL
    st.session_state["home_custom"] = "" if name in CATALOGUE else name
    st.session_state["home_device"] = state.device_choice() if state.device_choice() in DEVICES else "auto"


def _queue_load() -> None:
    typed = st.session_state["home_custom"].strip()
    st.session_state["home_pending"] = (typed or st.session_state["home_pick"], st.session_state["home_device"])


st.title("RepScope")
st.markdown(
    "A research dashboard for inspecting what language models represent: residual "
    "streams and the logit lens, concept activation vectors, sparse-autoencoder "
    "latents, bias asymmetry, steering vectors and likelihood displacement. "
    "Pick a model here; every page works on it."
)

picker, status = st.container(), st.container()

# Load before drawing the picker, so a failed load can reset the picker's widgets.
with status:
    pending = st.session_state.pop("home_pending", None)
    if pending is not None:
        try:  # the memory estimate refuses before any weights load, naming what would fit
            check_fits(pending[0], device=pending[1])
        except InsufficientMemory as err:
            show_error(err)
            pending = None
        if pending is None or switch_model(*pending) is None:
            _sync_widgets()
    elif "home_pick" not in st.session_state:
        _sync_widgets()
    lm = state.get_model()

with picker:
    st.subheader("Model")
    # The catalogue names are long: a row to themselves, or the chosen one is cut off at 1000 px.
    st.selectbox(
        "Catalogue model",
        CHOICES,
        format_func=lambda key: f"{CATALOGUE[key].title} — {key}",
        key="home_pick",
        help="Models RepScope knows; only the offline ones load without internet.",
    )
    left, right = st.columns([3, 1])
    left.text_input(
        "…or any TransformerLens / Hugging Face name, or a local model folder",
        key="home_custom",
        placeholder="e.g. gpt2, EleutherAI/pythia-70m, /data/my-model",
        help="When filled, this is loaded instead of the catalogue choice.",
    )
    right.selectbox(
        "Device", DEVICES, key="home_device", format_func=lambda d: DEVICE_LABELS.get(d, d),
        help="'split' places the layers over every GPU (accelerate device map) for models larger than one GPU.",
    )
    right.button("Load", type="primary", on_click=_queue_load, icon=":material/download:", width="stretch")
    selected = st.session_state["home_custom"].strip() or st.session_state["home_pick"]
    if is_gemma(selected) or is_gemma(state.model_name()):
        gemma_terms(key="home_terms")

with status:
    if lm is not None:
        st.success(f"Loaded **{md_escape(lm.name)}**", icon=":material/check_circle:")
        facts = describe(lm)
        cols = st.columns(4)
        cols[0].metric("Layers", facts["layers"])
        cols[1].metric("d_model", facts["d_model"])
        cols[2].metric("Parameters", f"{facts['parameters_millions']:g} M")
        cols[3].metric("Load time", f"{facts['load_seconds']:g} s")
        cols = st.columns(4)
        cols[0].metric("Device", facts["device"])
        cols[1].metric("dtype", facts["dtype"])
        cols[2].metric("Backend", facts["backend"])
        cols[3].metric("Context (tokens)", f"{facts['context']:,}")
        memory = process_memory(lm.device)
        if memory:
            st.caption(" · ".join(f"{k}: {v:,.0f}" for k, v in memory.items()))
    if is_converted():
        st.caption(md_escape(f"Default model converted to safetensors: yes ({converted_folder()})."))
    else:
        st.caption("Default model not converted yet: its first load converts it once (about 2 minutes).")

if len(registered_pages()) > 1:
    st.subheader("Pages")
    page_links(exclude="home.py")

