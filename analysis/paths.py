"""Where RepScope reads shipped assets and writes caches and the user's workspace.

* ``ASSETS``: the shipped concept sets, pair sets, preference sets and SAEs.
  Read-only for every command. In a checkout (or an editable install) it is
  the repository's ``assets/`` folder; in a wheel install it is the
  ``repscope_assets`` package that the wheel carries.
* ``cache_root()``: converted weights and activation caches
  (``REPSCOPE_CACHE``, default ``~/.cache/repscope``); never inside the repo.
  ``activation_cache_dir()`` can be moved on its own (``REPSCOPE_ACTIVATION_CACHE``).
* ``workspace_root()``: what the user saves (uploaded concepts, steering
  vectors, DPO checkpoints, trained SAEs): ``REPSCOPE_WORKSPACE``, default
  ``cache_root()/workspace``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def _assets_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "assets"
    if (checkout / "models.yaml").is_file():
        return checkout
    # The wheel's copy of assets/ (setup.py): a data-only namespace package, so no __file__.
    spec = importlib.util.find_spec("repscope_assets")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("RepScope's shipped assets are missing: neither ./assets nor the repscope_assets package")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


ASSETS = _assets_dir()


def cache_root() -> Path:
    """Converted weights and activation caches (``REPSCOPE_CACHE`` overrides ``~/.cache/repscope``)."""
    root = os.environ.get("REPSCOPE_CACHE") or str(Path.home() / ".cache" / "repscope")
    return Path(root).expanduser()


def activation_cache_dir() -> Path:
    """Disk cache of extracted activations (``REPSCOPE_ACTIVATION_CACHE`` overrides ``cache_root()/activations``).

    Separate from the converted weights so that a test (or a user) can start
    from a cold activation cache while keeping the expensive converted model.
    """
    root = os.environ.get("REPSCOPE_ACTIVATION_CACHE")
    return Path(root).expanduser() if root else cache_root() / "activations"


def workspace_root() -> Path:
    """The user's saved work (``REPSCOPE_WORKSPACE`` overrides ``cache_root()/workspace``)."""
    root = os.environ.get("REPSCOPE_WORKSPACE")
    return Path(root).expanduser() if root else cache_root() / "workspace"
