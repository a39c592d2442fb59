"""RepScope: the Streamlit entry. Run with ``repscope app`` or ``make app``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` from a checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.paths import PAGES_DIR  # noqa: E402

st.set_page_config(page_title="RepScope", page_icon=":material/biotech:", layout="wide")

from app.serving import guard_server  # noqa: E402

guard_server()  # loopback only and no tracebacks, however the server was started

# (file, title, icon); a page appears once its file exists.
PAGES = [
    ("home.py", "Home", ":material/home:"),
    ("live_inspection.py", "Live inspection", ":material/visibility:"),
    ("concepts.py", "Concepts", ":material/category:"),
    ("bias.py", "Bias", ":material/balance:"),
    ("steering.py", "Steering", ":material/navigation:"),
    ("likelihood.py", "Likelihood", ":material/trending_down:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("methods.py", "Methods", ":material/menu_book:"),
]

pages = [
    st.Page(str(PAGES_DIR / file), title=title, icon=icon, default=(file == "home.py"))
    for file, title, icon in PAGES
    if (PAGES_DIR / file).exists()
]
page = st.navigation(pages)
# Every page shows the current model and, for Gemma models, the terms notice.
from app.widgets import gemma_notice, model_badge  # noqa: E402

model_badge()
gemma_notice()
page.run()
