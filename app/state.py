"""The one place the app caches models and SAEs, plus typed session-state accessors.

``st.cache_resource`` shares one model per (name, device) across every browser
session and thread: analysis code must take ``lm.lock`` (``lm.hooked`` /
``lm.locked``) around forward passes, and never leaves a hook on the model.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from analysis.models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model

from app.text import md_escape, show_error

_MODEL_KEY = "repscope_model_name"
_DEVICE_KEY = "repscope_device"


@st.cache_resource(show_spinner=False, max_entries=3)
def _cached_model(name: str, device: str) -> LoadedModel:
    return load_model(name, device=device)


def model_name() -> str:
    return st.session_state.get(_MODEL_KEY) or os.environ.get("REPSCOPE_MODEL") or DEFAULT_MODEL


def set_model_name(name: str) -> None:
    st.session_state[_MODEL_KEY] = name.strip()


def device_choice() -> str:
    return st.session_state.get(_DEVICE_KEY, "auto")


def set_device_choice(device: str) -> None:
    st.session_state[_DEVICE_KEY] = device


def get_model() -> LoadedModel | None:
    """The session's model, loading it (once per process) with a spinner.

    Returns None after showing an error when it cannot be loaded; pages then stop.
    """
    name, device = model_name(), device_choice()
    try:
        with st.spinner(f"Loading {md_escape(name)} (the first run converts the default model once, ~2 min) ..."):
            return _cached_model(name, device)
    except (ModelLoadError, ValueError) as err:
        show_error(err)
    except Exception as err:  # noqa: BLE001 - any load failure must leave the app usable
        show_error(f"Could not load model {name!r}: {type(err).__name__}: {err}")
    return None


def require_model() -> LoadedModel:
    """Like ``get_model`` but stops the page (with the error shown) when loading fails."""
    lm = get_model()
    if lm is None:
        st.info("Pick another model on the Home page.")
        st.stop()
    return lm


def get(key: str, default: Any = None) -> Any:
    return st.session_state.get(f"repscope_{key}", default)


def put(key: str, value: Any) -> None:
    st.session_state[f"repscope_{key}"] = value


@st.cache_resource(show_spinner=False, max_entries=4)
def get_sae(source: str, upload_digest: str = "", _upload: tuple[bytes, bytes] | None = None):
    """An SAE (analysis.saes.LoadedSAE), loaded once per process.

    ``source``: a shipped name, a local folder or ``release:sae_id``; for an
    uploaded pair pass ``_upload=(cfg_bytes, weights_bytes)`` with their
    ``upload_digest`` as the cache key (arguments starting with ``_`` are not
    hashed). Raises ``analysis.saes.SAELoadError``; callers show it.
    """
    from analysis.saes.loading import load_sae, load_sae_upload

    if _upload is not None:
        return load_sae_upload(*_upload, name=source)
    return load_sae(source)
