"""How the served page protects itself, whatever command started it.

``streamlit run app/main.py`` reads ``.streamlit/config.toml`` only from the
current folder, so started elsewhere the server binds every interface and
shows full tracebacks. :func:`guard_server` (first thing in ``app/main.py``)
turns error details off unless ``REPSCOPE_DEV=1``, and refuses to serve a
page when the server listens on a non-loopback address unless
``REPSCOPE_ALLOW_REMOTE=1`` (``repscope app --allow-remote`` sets it).
"""

from __future__ import annotations

import os

import streamlit as st

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind_problem(address: str | None, allow_remote: bool) -> str | None:
    """Why serving on ``address`` is refused, or None. An empty address means every interface."""
    address = (address or "").strip()
    if address in LOOPBACK or allow_remote:
        return None
    where = f"address {address}" if address else "every network interface (no server.address set)"
    return (f"RepScope refuses to serve on {where}: the app has no login, so anyone who can reach this machine "
            "could use it. Start it with `repscope app` (binds 127.0.0.1), or `streamlit run app/main.py "
            "--server.address 127.0.0.1`; to serve remotely on purpose, set REPSCOPE_ALLOW_REMOTE=1 "
            "(or run `repscope app --allow-remote`).")


def guard_server(get_option=None) -> None:
    """Error details off outside development; stop the page on a non-loopback bind (see module doc).

    ``get_option`` defaults to ``st.get_option`` (tests pass a fake to play a server's settings).
    """
    get_option = get_option or st.get_option
    if os.environ.get("REPSCOPE_DEV") != "1":
        st.set_option("client.showErrorDetails", "none")
    if get_option("global.appTest"):  # streamlit.testing's AppTest: no server, no socket
        return
    problem = bind_problem(get_option("server.address"), os.environ.get("REPSCOPE_ALLOW_REMOTE") == "1")
    if problem:
        st.error(problem)
        st.stop()
