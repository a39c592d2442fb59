"""Re-render benchmark: a display-only control answers from cached results (issue 16 item 3, target ≤ 0.2 s).

Every page that computes with the model is driven under Streamlit's AppTest on the
default model: one compute with the cheapest settings (``compute_s``, not the
target), then each display-only control is switched back and forth and the
script rerun is timed (``rerender_s``: per control, the median of ``REPEATS``
reruns; ``worst_s``: the slowest control of the page). The forward passes the
reruns ran are counted with pre-hooks on the model and its blocks
(``forward_passes``, must be 0; tests/test_no_recompute.py asserts the same on
the tiny model). The timing is of the script rerun (widgets, cache look-ups,
figure building and serialisation), not of the browser drawing the figures.

``python -m bench rerender``; ``REPSCOPE_BENCH_RERENDER_PAGES=likelihood,bias``
runs a subset.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

PAGES = Path(__file__).resolve().parent.parent / "pages"
TARGET_S = 0.2
REPEATS = 4

# page -> (the compute: widget settings then the button, as (kind, key, value); "click" presses a button),
#         the display-only controls: (kind, key, two values to alternate between)
PLANS: dict[str, tuple[list, list]] = {
    "live_inspection": (
        [("text_area", None, "The food at the new restaurant was very good"), ("click", None, None)],
        [("checkbox", "inspect_log_norms", (False, True)), ("radio", "inspect_metric", ("rank", "probability")),
         ("selectbox", "inspect_layer", (1, 0)), ("selectbox", "inspect_head", (1, 0))],
    ),
    "concepts": (
        [("selectbox", "concepts_method", "mean_diff"), ("number_input", "concepts_random", 2),
         ("number_input", "concepts_max", 20), ("click", "concepts_run", None)],
        [("select_slider", "concepts_layer", ("2", "6")), ("selectbox", "sae-pool", ("mean", "max")),
         ("number_input", "sae-top", (10, 20))],
    ),
    "bias": (
        [("selectbox", "bias_preset", "insurance_sentiment"), ("number_input", "bias_cap", 10),
         ("number_input", "bias_boot", 20), ("number_input", "bias_perm", 19), ("click", "bias_run", None)],
        [("checkbox", "bias_show_table", (True, False)), ("radio", "bias_agg", ("mean", "logmeanexp"))],
    ),
    "steering": (
        [("selectbox", "steer_set", "sentiment"), ("selectbox", "steer_score", "paper"), ("click", "steer_build", None)],
        [("number_input", "steer_alpha", (2.0, 1.0)), ("slider", "steer_n", (8, 40))],
    ),
    "likelihood": (
        [("click", "lik_run_rank", None)],
        [("selectbox", "lik_mode", ("window", "lowest")), ("radio", "lik_sim", ("edit_distance", "token_jaccard"))],
    ),
    "compare": (
        [("radio", "cmp_view", "concepts"), ("number_input", "cmp_max_texts", 5), ("click", "cmp_run", None)],
        [("slider", "cmp_layer", (2, 6))],
    ),
}


def _widget(at, kind: str, key: str | None):
    if key is None:  # the Live inspection form: its only text area and submit button
        return (at.button if kind == "click" else getattr(at, kind))[0]
    return at.button(key=key) if kind == "click" else getattr(at, kind)(key=key)


def _check(at, page: str) -> None:
    problems = [str(e) for e in at.exception] + [e.value for e in at.error]
    if problems:
        raise RuntimeError(f"{page}: {problems[:3]}")


def _page(name: str, lm, passes: list) -> dict:
    from streamlit.testing.v1 import AppTest

    compute, controls = PLANS[name]
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=1800).run()
    start = time.perf_counter()
    for kind, key, value in compute:
        w = _widget(at, kind, key)
        (w.click() if kind == "click" else w.set_value(value)).run()
    _check(at, name)
    out: dict = {"compute_s": round(time.perf_counter() - start, 2), "rerender_s": {}}
    before = len(passes)
    for kind, key, values in controls:
        try:
            _widget(at, kind, key)
        except KeyError:  # e.g. no SAE shipped for this model: the panel is not there
            out["rerender_s"][key] = "absent"
            continue
        times = []
        for value in values * (REPEATS // 2):
            w = _widget(at, kind, key)
            t = time.perf_counter()
            w.set_value(value).run()
            times.append(time.perf_counter() - t)
            _check(at, name)
        out["rerender_s"][key] = round(statistics.median(times), 3)
    timed = [v for v in out["rerender_s"].values() if isinstance(v, float)]
    out["worst_s"] = max(timed) if timed else None
    out["forward_passes"] = len(passes) - before
    return out


def run(report: dict) -> None:
    import streamlit as st

    import app.state
    from analysis.models import load_model
    from app import jobs

    lm = load_model(device=os.environ.get("REPSCOPE_BENCH_DEVICE"))
    chosen = [p for p in os.environ.get("REPSCOPE_BENCH_RERENDER_PAGES", ",".join(PLANS)).split(",") if p]
    passes: list = []
    handles = [m.register_forward_pre_hook(lambda *_: passes.append(1)) for m in [lm.model, *lm.model.blocks]]
    original = app.state.require_model
    app.state.require_model = lambda: lm
    report.update(model=lm.name, target_s=TARGET_S, repeats=REPEATS, pages={})
    try:
        for name in chosen:
            st.cache_data.clear()
            jobs.clear()
            try:
                report["pages"][name] = _page(name, lm, passes)
            except Exception as err:  # noqa: BLE001 - one page failing must not hide the others
                report["pages"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    finally:
        app.state.require_model = original
        for h in handles:
            h.remove()
    worst = [p["worst_s"] for p in report["pages"].values() if p.get("worst_s") is not None]
    report["worst_s"] = max(worst) if worst else None
    report["within_target"] = bool(worst) and max(worst) <= TARGET_S
    report["forward_passes"] = sum(p.get("forward_passes", 0) for p in report["pages"].values())


if __name__ == "__main__":
    import json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {}
    run(out)
    print(json.dumps(out, indent=2))
