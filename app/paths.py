"""Where the app's entry script and page files are, in a checkout and in an installed wheel.

A checkout (or editable install) has ``pages/`` beside ``app/``; a wheel
carries the same files as the data package ``repscope_pages`` (see setup.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
MAIN_SCRIPT = APP_DIR / "main.py"


def _pages_dir() -> Path:
    checkout = APP_DIR.parent / "pages"
    if (checkout / "home.py").is_file():
        return checkout
    spec = importlib.util.find_spec("repscope_pages")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("RepScope's page files are missing: neither ./pages nor the repscope_pages package")
    return Path(list(spec.submodule_search_locations)[0])


PAGES_DIR = _pages_dir()
