"""Small UI pieces shared by pages: the sidebar model badge, the Gemma notice,
links to the registered pages, process memory, and switching models safely.

Nothing here loads a model except :func:`switch_model` (through ``app.state``).
"""

from __future__ import annotations

import ast

import streamlit as st
from streamlit.errors import StreamlitAPIException

from analysis.gguf_convert import GEMMA_NOTICE, gemma_terms_path
from analysis.models import CATALOGUE, LoadedModel, ModelSpec
from app import state
from app.text import md_escape, show_warning
from app.paths import MAIN_SCRIPT, PAGES_DIR



# ---------------------------------------------------------------- pages

def registered_pages() -> list[tuple[str, str, str]]:
    """``(file, title, icon)`` for every page in ``app/main.py``'s ``PAGES`` whose file exists.

    Read from the source with ``ast`` (importing main.py would run the app).
    """
    tree = ast.parse(MAIN_SCRIPT.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PAGES" for t in node.targets
        ):
            entries = ast.literal_eval(node.value)
            return [tuple(e) for e in entries if (PAGES_DIR / e[0]).is_file()]
    raise RuntimeError(f"{MAIN_SCRIPT} has no PAGES list; the page registry moved?")


def page_links(exclude: str = "") -> None:
    """One ``st.page_link`` per existing page except ``exclude`` (a file name)."""
    for file, title, icon in registered_pages():
        if file == exclude:
            continue
        try:
            st.page_link(str(PAGES_DIR / file), label=title, icon=icon)
        except StreamlitAPIException:
            # The file appeared after main.py registered this run's pages;
            # the next rerun registers and links it.
            continue


# ---------------------------------------------------------------- model facts

def spec_for(name: str) -> ModelSpec | None:
    """The catalogue entry for a catalogue key or a catalogued hub id, else None."""
    name = (name or "").strip()
    if name in CATALOGUE:
        return CATALOGUE[name]
    return next((s for s in CATALOGUE.values() if s.hf_id == name), None)


def is_gemma(name: str) -> bool:
    spec = spec_for(name)
    return spec is not None and spec.license == "gemma"


def process_memory(device: str) -> dict[str, float]:
    """Resident memory of this server process (MiB), plus CUDA memory when on a GPU.

    The app is one process shared by every browser session, so this is the
    whole server's footprint, not one user's.
    """
    out: dict[str, float] = {}
    try:
        import psutil

        out["process RSS (MiB)"] = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    if device.startswith("cuda"):
        import torch

        out["CUDA allocated (MiB)"] = torch.cuda.memory_allocated(device) / 2**20
        out["CUDA reserved (MiB)"] = torch.cuda.memory_reserved(device) / 2**20
    return out


# ---------------------------------------------------------------- sidebar

def model_badge() -> None:
    """The session's current model and device choice, in the sidebar (loads nothing)."""
    name, device = state.model_name(), state.device_choice()
    st.sidebar.badge(md_escape(f"{name} · {device}"), icon=":material/memory:", color="blue")


def gemma_notice(name: str | None = None) -> None:
    """A small sidebar caption with the Gemma terms notice when the model is a Gemma model."""
    if is_gemma(name or state.model_name()):
        st.sidebar.caption(GEMMA_NOTICE)


def gemma_terms(key: str) -> None:
    """The notice in the main area, with the terms page shipped in the PyPI package."""
    st.info(GEMMA_NOTICE, icon=":material/gavel:")
    path = gemma_terms_path()
    if path is None:
        st.caption("The terms are at https://ai.google.dev/gemma/terms.")
        return
    st.download_button(
        "Gemma Terms of Use (HTML)",
        data=path.read_bytes,  # read only when clicked
        file_name="GEMMA_TERMS.html",
        mime="text/html",
        key=key,
        on_click="ignore",
        icon=":material/description:",
    )


# ---------------------------------------------------------------- switching

def switch_model(name: str, device: str) -> LoadedModel | None:
    """Make ``(name, device)`` the session's model; on failure keep the previous one.

    The load error is shown by ``state.get_model``; this adds which model is
    still active. Returns the new model, or None when it could not be loaded.
    """
    name = name.strip()
    if not name:
        st.error("Model name is empty: pick a catalogue model or type a hub name or local folder.")
        return None
    previous = (state.model_name(), state.device_choice())
    state.set_model_name(name)
    state.set_device_choice(device)
    lm = state.get_model()
    if lm is None:
        state.set_model_name(previous[0])
        state.set_device_choice(previous[1])
        show_warning(f"Kept the previous model: {previous[0]} ({previous[1]}).")
    return lm
