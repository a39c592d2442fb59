"""Can the Hugging Face hub be reached? One probe for models and SAEs alike.

Offline (``HF_HUB_OFFLINE`` set, or no route to the hub) a load by hub name
must fail within seconds with a message that says so, instead of hanging in
transformers' or sae-lens' retry loops.
"""

from __future__ import annotations

import os
import socket

PROBE_TIMEOUT_S = 3.0


def offline_flag() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_host() -> str:
    """The hub's host name (``HF_ENDPOINT`` overrides huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]


def connect_error(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout``, else the error (one line)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return str(err) or type(err).__name__
    return None


def unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers a TCP connect on port 443 within ``timeout``, else why not."""
    if offline_flag():
        return "HF_HUB_OFFLINE is set"
    host = hub_host()
    err = connect_error(host, 443, timeout)
    return None if err is None else f"the hub ({host}) is unreachable: {err}"


def is_cached(repo_id: str, filename: str) -> bool:
    """True when ``filename`` of hub repo ``repo_id`` is in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - a malformed id or broken cache means "not cached"
        return False
