"""The one escaping helper for user text shown by Streamlit or Plotly.

* :func:`md_escape` for anything Streamlit renders as markdown
  (``st.markdown``, ``st.caption``, ``st.error``/``warning``/``info``/
  ``success``, headers, widget labels): every ASCII punctuation character is
  backslash-escaped (CommonMark allows it for all of them), so no emphasis,
  code span, link, image, ``:material/...:`` directive, ``$`` maths or HTML
  survives; line breaks become spaces so no text starts a heading or list.
* :func:`plotly_escape` for hover texts and labels (``& < >`` as entities);
  ``app.figures.render_figure`` already passes every figure through
  :func:`analysis.figures.text.safe_figure`.
* :func:`show_error` / :func:`show_warning`: ``st.error(md_escape(message))``.
"""

from __future__ import annotations

import re
import string

import streamlit as st

from analysis.figures.text import plotly_escape  # noqa: F401  (re-exported: one place to import from)

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")


def md_escape(text: object) -> str:
    """``text`` as literal markdown: punctuation escaped, newlines flattened, no autolinks."""
    flat = " ".join(str(text).replace("\r", "\n").split("\n"))
    return _PUNCT.sub(r"\\\1", flat)


def show_error(message: object, **kwargs) -> None:
    """``st.error`` with the message (which may quote user input) shown literally."""
    st.error(md_escape(message), **kwargs)


def show_warning(message: object, **kwargs) -> None:
    st.warning(md_escape(message), **kwargs)
