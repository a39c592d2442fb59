"""Methods: the project's own reference for every formula (assets/METHODS.md), shown in the app."""

from __future__ import annotations

import streamlit as st

from analysis.paths import ASSETS

st.title("Methods")
st.caption("What each view computes, the paper and section it follows, and where RepScope deviates and why. "
           "The same text ships as assets/METHODS.md.")
# Our own shipped document, not user text: rendered as markdown on purpose.
st.markdown((ASSETS / "METHODS.md").read_text(encoding="utf-8"))
