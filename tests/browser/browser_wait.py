"""Waiting for Streamlit without fixed sleeps.

Streamlit marks its root element with ``data-test-script-state``
(``initial``, ``running``, ``notRunning``, ...). A MutationObserver counts
the transitions into ``running``, so a test can wait for *the run its own
action caused* to finish, instead of sleeping and hoping the rerun started.

    with rerun(page):
        page.get_by_role("button", name="Compute").click()
    # here the rerun caused by the click has finished

``wait_idle(page)`` waits for the current run (e.g. the first load after
``page.goto``) to finish. ``set_number(page, key, value)`` types into the number
input with widget key ``key`` and waits for the rerun it causes. Footgun: a widget inside an ``st.form`` causes no
rerun until the form is submitted, so never wrap such a change in ``rerun``.
"""

from __future__ import annotations

import contextlib

APP = '[data-testid="stApp"]'
DEFAULT_MS = 180_000

_INSTALL = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app) return -1;
    if (window.__rsApp !== app) {
        window.__rsApp = app;
        window.__rsRuns = window.__rsRuns || 0;
        if (app.getAttribute('data-test-script-state') === 'running') window.__rsRuns += 1;
        new MutationObserver(() => {
            if (app.getAttribute('data-test-script-state') === 'running') window.__rsRuns += 1;
        }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
    }
    return window.__rsRuns;
}"""

# Done: a run started after the action and has finished; or the app has been idle for GRACE_MS
# since the action: a rerun that starts and ends within one batch of websocket messages never
# shows "running" in the DOM (React renders the two states as one), so there is nothing to count.
GRACE_MS = 5_000
_DONE = """([before, t0, grace]) => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (window.__rsRuns > before) return true;
    return performance.now() - t0 > grace &&
        !document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]');
}"""

_IDLE = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app) return false;
    const state = app.getAttribute('data-test-script-state');
    return state === 'notRunning' && !document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]');
}"""


def _install(page) -> int:
    page.wait_for_selector(APP, timeout=60_000)
    return int(page.evaluate(_INSTALL))


@contextlib.contextmanager
def rerun(page, timeout: int = DEFAULT_MS):
    """Wait, after the body, until a run started after entering the block has finished.

    The body starts from an idle app: an action taken while a run is in progress makes Streamlit
    restart that run in place (no new transition into ``running`` to count), and the wait below
    would then never end.
    """
    _install(page)
    page.wait_for_function(_IDLE, timeout=timeout, polling=100)
    before = _install(page)  # counted once idle: a run that ended while waiting is not the body's
    yield
    t0 = page.evaluate("() => performance.now()")
    page.wait_for_function(_DONE, arg=[before, t0, GRACE_MS], timeout=timeout, polling=100)


def wait_idle(page, timeout: int = DEFAULT_MS) -> None:
    """The app is up and no script run is in progress (the first run after a load included)."""
    page.wait_for_selector(APP, timeout=60_000)
    page.wait_for_function("""() => {
        const app = document.querySelector('[data-testid="stApp"]');
        return !!app && app.getAttribute('data-test-script-state') !== 'initial';
    }""", timeout=timeout, polling=100)
    _install(page)
    page.wait_for_function(_IDLE, timeout=timeout, polling=100)


def set_number(page, key: str, value: int, timeout: int = DEFAULT_MS) -> None:
    """Type ``value`` into the number input ``key`` (scrolled into view first: widgets below the fold load lazily)."""
    page.locator(f".st-key-{key}").scroll_into_view_if_needed()
    field = page.locator(f".st-key-{key} input")
    if field.input_value() == str(value):
        return
    with rerun(page, timeout):
        field.fill(str(value))
        field.press("Enter")
    assert field.input_value() == str(value)
