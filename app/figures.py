"""Show a figure with a row of download buttons: PNG, SVG, PDF, CSV (data) and recipe (JSON).

Exports are lazy: each image and CSV button gets a callable as ``data``, which
Streamlit (checked against 1.67) runs only when that button is clicked, on a
separate thread. Nothing goes through kaleido on a rerun.

Footguns:
- An exception inside the callable never reaches the page (Streamlit shows a
  generic "Failed to generate file for download" under the button), so the
  callable records the real message and the next rerun shows it with `st.error`.
  A missing browser is caught up front instead, and the image buttons disabled.
- The buttons use ``on_click="ignore"``: a rerun racing the deferred download
  re-registers the callable under a new id and the click in flight fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.figures.export import (
    FORMATS,
    MIME_TYPES,
    ExportError,
    export_figure,
    find_browser,
    frame_to_csv,
)
from analysis.figures.text import safe_figure
from app.text import show_error

# Plain dict kept in session state: the download callables run without a
# script context, so they cannot use st.session_state, but can fill this dict.
_ERRORS_KEY = "_repscope_export_errors"


def render_figure(
    fig: go.Figure,
    *,
    data: pd.DataFrame | None,
    recipe: dict | None,
    key: str,
    filename: str,
) -> None:
    """Show `fig` full width and, beneath it, its download buttons.

    `data` is the table behind the figure (CSV button, disabled when None);
    `recipe` is the config that reproduces it (JSON button, disabled when None);
    `key` must be unique on the page; `filename` is the download name without extension.
    """
    fig = safe_figure(fig)  # user texts (concepts, pairs, prompts, tokens) show literally, never as HTML
    st.plotly_chart(fig, theme=None, width="stretch", key=f"{key}-chart")
    stem = _safe_stem(filename)
    errors: dict[str, str] = st.session_state.setdefault(_ERRORS_KEY, {})
    failed = errors.pop(key, None)
    if failed:
        show_error(failed)
    try:
        find_browser()
        missing_browser = None
    except ExportError as exc:
        missing_browser = str(exc)

    # The export callables run after this script run ends. `fig` is already a private copy
    # (safe_figure builds a new figure), so nothing else can change it before they run.
    snapshot = fig
    columns = st.columns(5)
    for column, fmt in zip(columns[:3], FORMATS, strict=True):
        column.download_button(
            fmt.upper(),
            data=_deferred_export(snapshot, fmt, errors, key),
            file_name=f"{stem}.{fmt}",
            mime=MIME_TYPES[fmt],
            key=f"{key}-{fmt}",
            help=missing_browser or f"Download the figure as {fmt.upper()}",
            on_click="ignore",
            disabled=missing_browser is not None,
            icon=":material/download:",
            width="stretch",
        )
    columns[3].download_button(
        "CSV",
        data=(lambda: frame_to_csv(data)) if data is not None else b"",
        file_name=f"{stem}.csv",
        mime=MIME_TYPES["csv"],
        key=f"{key}-csv",
        help="Download the data behind the figure" if data is not None else "This figure has no data table",
        on_click="ignore",
        disabled=data is None,
        icon=":material/table:",
        width="stretch",
    )
    columns[4].download_button(
        "Recipe",
        data=json.dumps(recipe, indent=2, sort_keys=True, default=str) if recipe is not None else "",
        file_name=f"{stem}.recipe.json",
        mime="application/json",
        key=f"{key}-recipe",
        help="Download the settings that reproduce this figure"
        if recipe is not None
        else "No recipe for this figure",
        on_click="ignore",
        disabled=recipe is None,
        icon=":material/code:",
        width="stretch",
    )
    if missing_browser:
        st.error(missing_browser)  # our own message (no user text): keeps its formatting


def _deferred_export(fig: go.Figure, fmt: str, errors: dict[str, str], key: str) -> Callable[[], bytes]:
    def export() -> bytes:
        try:
            return export_figure(fig, fmt)
        except Exception as exc:
            errors[key] = str(exc)
            raise

    return export


def _safe_stem(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", filename).strip("._")
    return stem or "figure"
