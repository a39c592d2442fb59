"""Keep user text inert in Plotly figures: no links, styles or images from uploads.

Plotly renders a subset of HTML in every text it draws (``<a href>``,
``<span style>``, ``<b>``, ``<br>`` ... in hover labels, tick labels, legend
names and titles). Texts that come from users (concept and pair texts,
prompts, tokens, file names) must show literally.

* :func:`plotly_escape` escapes ``& < >`` in one string (for builders).
* :func:`safe_figure` returns a copy of a figure in which every data text
  (``text``, ``hovertext``, ``customdata``, category ``x``/``y``/``labels``,
  ``name``, tick texts) is escaped except for ``<br>`` line breaks, and layout
  texts (titles, annotations) keep only harmless formatting tags (``<br> <b>
  <i> <em> <sub> <sup>``). ``app.figures.render_figure`` and
  ``analysis.figures.export.export_figure`` apply it to every figure.
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go

_ESCAPED_TAG = re.compile(r"&lt;(/?)([a-zA-Z]+)\s*(/?)&gt;")
_LAYOUT_TAGS = {"br", "b", "i", "em", "sub", "sup"}
_DATA_KEYS = ("text", "hovertext", "customdata", "x", "y", "z", "labels", "ids", "name", "legendgroup",
              "ticktext", "header", "cells", "values")


def plotly_escape(text: str) -> str:
    """``text`` with ``& < >`` as entities: Plotly then draws it literally."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _keep_tags(text: str, allowed: set[str]) -> str:
    """Escape ``text``, then turn back the allowed attribute-free tags (``&lt;br&gt;`` -> ``<br>``)."""
    return _ESCAPED_TAG.sub(lambda m: f"<{m.group(1)}{m.group(2)}{m.group(3)}>" if m.group(2).lower() in allowed
                            else m.group(0), plotly_escape(text))


def _data_text(value):
    if isinstance(value, str):
        return _keep_tags(value, {"br"})
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS":
            return np.vectorize(_data_text, otypes=[object])(value) if value.size else value
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_data_text(v) for v in value)
    if isinstance(value, dict):
        return {k: _data_text(v) for k, v in value.items()}
    return value


def _layout_text(obj, is_text: bool = False):
    """Walk layout JSON; strings under ``text``/``title``/``ticktext`` keep only harmless tags."""
    if isinstance(obj, str):
        return _keep_tags(obj, _LAYOUT_TAGS) if is_text else obj
    if isinstance(obj, list):
        return [_layout_text(v, is_text) for v in obj]
    if isinstance(obj, dict):
        return {k: _layout_text(v, is_text or k in ("text", "title", "ticktext")) for k, v in obj.items()}
    return obj


def safe_figure(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` whose user-visible texts cannot carry links, styles or images."""
    spec = fig.to_plotly_json()
    for trace in spec.get("data", []):
        for key in _DATA_KEYS:
            if key in trace:
                trace[key] = _data_text(trace[key])
        for key in ("hovertemplate", "texttemplate"):
            if isinstance(trace.get(key), str):
                trace[key] = _keep_tags(trace[key], _LAYOUT_TAGS | {"extra"})
            elif isinstance(trace.get(key), (list, tuple)):
                trace[key] = [_keep_tags(t, _LAYOUT_TAGS | {"extra"}) if isinstance(t, str) else t
                              for t in trace[key]]
    spec["layout"] = _layout_text(spec.get("layout", {}))
    return go.Figure(spec, skip_invalid=True)
