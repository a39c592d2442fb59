"""Export figures to PNG/SVG/PDF through kaleido 1 and Debian's chromium, and tables to CSV.

The browser is found in this order: the ``BROWSER_PATH`` environment variable
(the override kaleido/choreographer also honour), ``/usr/bin/chromium``, then
``chromium`` / ``chromium-browser`` on ``PATH``. The path is always passed to
kaleido explicitly, so it never falls back to a Chrome it downloaded itself.

Footguns:
- One headless chromium is kept open in a private event-loop thread and every
  export holds `_LOCK`: kaleido's renderer is not thread-safe, and Streamlit
  serves each browser session from its own thread.
- We do not use ``kaleido.start_sync_server``: when chromium fails to launch,
  its worker thread dies and every later call blocks forever. Here each call
  has a timeout, and a failed renderer is closed and rebuilt on the next call.
- Heatmaps are drawn by plotly.js as raster images even in SVG/PDF; everything
  else (text, axes, markers, lines) stays vector.
- MathJax is disabled (no network to load it from): LaTeX titles export as text.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import threading
from pathlib import Path
from typing import Literal

import pandas as pd
import plotly.graph_objects as go

ExportFormat = Literal["png", "svg", "pdf"]
FORMATS: tuple[ExportFormat, ...] = ("png", "svg", "pdf")
MIME_TYPES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "csv": "text/csv"}

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_WIDTH = 900
DEFAULT_HEIGHT = 520
TIMEOUT_S = 60.0  # per browser start and per render

_INSTALL_HINT = (
    "install Debian's chromium: apt-get install chromium "
    "(or point the BROWSER_PATH environment variable at a chromium executable)"
)

# Serialises every export: the shared renderer handles one figure at a time.
_LOCK = threading.Lock()


class ExportError(RuntimeError):
    """A figure could not be exported; the message says how to fix it."""


def find_browser() -> str:
    """Return the chromium executable kaleido will use, or raise `ExportError`."""
    override = os.environ.get("BROWSER_PATH")
    if override:
        if _is_executable(override):
            return override
        raise ExportError(
            f"BROWSER_PATH={override!r} is not an executable file. Fix or unset it, or {_INSTALL_HINT}."
        )
    if _is_executable(DEBIAN_CHROMIUM):
        return str(DEBIAN_CHROMIUM)
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise ExportError(
        f"No chromium browser found (looked at BROWSER_PATH, {DEBIAN_CHROMIUM} and PATH); "
        f"PNG/SVG/PDF export needs one. To fix, {_INSTALL_HINT}."
    )


def _is_executable(path: str | Path) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


class _Renderer:
    """One kaleido (headless chromium) driven from a private event-loop thread."""

    def __init__(self, browser: str) -> None:
        import kaleido  # deferred: only exports need it

        self.browser = browser
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="repscope-kaleido", daemon=True)
        self._thread.start()
        self._kaleido = None

        async def open_kaleido():
            k = kaleido.Kaleido(path=browser, n=1, mathjax=False, timeout=TIMEOUT_S)
            await k.open()
            return k

        try:
            self._kaleido = self._run(open_kaleido(), TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def render(self, fig_dict: dict, opts: dict) -> bytes:
        return self._run(self._kaleido.calc_fig(fig_dict, opts=opts), TIMEOUT_S)

    def close(self) -> None:
        try:
            if self._kaleido is not None:
                self._run(self._kaleido.close(), 10.0)
        except Exception:  # noqa: BLE001 best effort: the browser may already be gone
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)


_renderer: _Renderer | None = None


def _get_renderer() -> _Renderer:
    """The shared renderer, (re)started if the browser changed. Call with `_LOCK` held."""
    global _renderer
    browser = find_browser()
    if _renderer is not None and _renderer.browser != browser:
        _close_renderer()
    if _renderer is None:
        try:
            _renderer = _Renderer(browser)
        except Exception as exc:
            raise ExportError(
                f"Could not start the browser at {browser} for export ({_reason(exc)}). "
                f"Check that it runs (`{browser} --headless --version`), or {_INSTALL_HINT}."
            ) from exc
    return _renderer


def _close_renderer() -> None:
    global _renderer
    if _renderer is not None:
        _renderer.close()
        _renderer = None


def shutdown() -> None:
    """Close the shared browser (tests, or before the process exits)."""
    # Bounded wait: at interpreter exit an export may still hold the lock.
    if _LOCK.acquire(timeout=TIMEOUT_S):
        try:
            _close_renderer()
        finally:
            _LOCK.release()


atexit.register(shutdown)


def export_figure(
    fig: go.Figure,
    fmt: ExportFormat,
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 2,
) -> bytes:
    """Render `fig` to PNG, SVG or PDF bytes.

    `width`/`height` are layout pixels (default: the figure's own size, else
    900x520). `scale` multiplies the PNG resolution only: SVG/PDF are exported
    at scale 1 (kaleido would otherwise just enlarge the page). The first call
    starts chromium (a few seconds); later calls take about half a second.
    Raises `ExportError` with a how-to-fix message.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}. Valid formats are {list(FORMATS)}.")
    from analysis.figures.text import safe_figure

    fig_dict = safe_figure(fig).to_dict()  # user texts stay literal in the SVG/PDF (no live links)
    layout = fig_dict.get("layout", {})
    opts = {
        "format": fmt,
        "width": width or layout.get("width") or DEFAULT_WIDTH,
        "height": height or layout.get("height") or DEFAULT_HEIGHT,
        "scale": scale if fmt == "png" else 1,
    }
    with _LOCK:
        # Two tries: on a loaded machine kaleido's tab can be asked to render before its page script has
        # loaded ("kaleido_scopes is not defined"); a fresh browser then renders fine.
        for attempt in range(2):
            renderer = _get_renderer()
            try:
                return renderer.render(fig_dict, opts)
            except Exception as exc:
                # A timed-out or crashed browser is unusable: rebuild it.
                _close_renderer()
                if attempt == 0 and not isinstance(exc, TimeoutError):
                    continue
                raise ExportError(
                    f"Exporting the figure as {fmt.upper()} failed ({_reason(exc)}). "
                    "Try again; if it keeps failing, check that chromium runs headless on this machine."
                ) from exc


def _reason(exc: BaseException) -> str:
    """One line for the user. Only the first arg: choreographer's later args tell
    people to download a Chrome, which this project never does."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {TIMEOUT_S:.0f} s"
    first = exc.args[0] if exc.args else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise_cell(value):
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula.

    Numbers stay numbers: -1.5 is data, "-1+cmd" (text) is not. Carriage returns
    in text become ``\n`` (which pandas quotes), so no cell can break its row.
    """
    if not isinstance(value, str):
        return value
    value = value.replace("\r\n", "\n").replace("\r", "\n")  # a bare CR is not quoted by pandas: it would split the row
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def frame_to_csv(df: pd.DataFrame) -> bytes:
    """UTF-8 CSV bytes of `df`, without the index unless it is named (then it is data).

    Text cells (and column/index names) that a spreadsheet would run as a
    formula (``= + - @``, tab, CR) get a leading ``'``; numeric columns are untouched.
    """
    keep_index = any(name is not None for name in df.index.names)
    safe = df.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column].dtype):
            safe[column] = safe[column].map(neutralise_cell)
    safe.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in safe.columns]
    if keep_index and not isinstance(safe.index, pd.MultiIndex) and (
            safe.index.dtype == object or pd.api.types.is_string_dtype(safe.index.dtype)):
        safe.index = safe.index.map(neutralise_cell).rename(safe.index.name)
    return safe.to_csv(index=keep_index).encode("utf-8")
