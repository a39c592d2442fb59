"""Bias benchmark: the review_sentiment preset (5 targets × 2 refs × every layer, 200 resamples).

* ``cold``: ``compute_bias`` with an empty activation cache (a temporary
  ``REPSCOPE_CACHE``): extraction + CAV fits + bootstrap + null;
* ``warm``: the same call with activations read from the disk cache, split into
  ``stages`` (cache read, CAV fits with 5-fold CV, bootstrap + null);
* ``rerender``: what the page does on a display-option change once the result is
  cached (``st.cache_data``): build the four figures and the tables (aim < 1 s);
* ``logistic_refit_ms``: one warm-started logistic refit (the alternative bootstrap).

``python -m bench.bench_bias`` runs it alone; ``REPSCOPE_BENCH_SKIP_COLD=1`` skips the
cold run (minutes on a busy CPU).
"""

from __future__ import annotations

import os
import tempfile
import time


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def run(report: dict) -> None:
    import numpy as np

    from analysis.bias.compute import compute_bias, layer_frame, preset_config, summary_frame
    from analysis.bias.behaviour import behaviour_data
    from analysis.concepts.cavs import stacked_activations
    from analysis.concepts.sets import background_texts, load_concepts
    from analysis.bias.figures import behaviour_figure, heatmap_figure, shared_latents_figure, summary_figure
    from analysis.models import load_model

    lm = load_model()
    cfg = preset_config("review_sentiment", n_bootstrap=200, n_permutations=200)
    sets = load_concepts()
    report["preset"] = {"targets": len(cfg.targets), "refs": 2, "layers": lm.n_layers, "n_bootstrap": 200,
                        "texts": sum(len(sets[c]) for c in cfg.concepts) + len(background_texts())}
    if os.environ.get("REPSCOPE_BENCH_SKIP_COLD") != "1":
        old = os.environ.get("REPSCOPE_CACHE")
        with tempfile.TemporaryDirectory(prefix="repscope-bench-bias-") as tmp:
            os.environ["REPSCOPE_CACHE"] = tmp
            try:
                _, report["cold_s"] = _timed(lambda: compute_bias(lm, cfg))
            finally:
                os.environ.pop("REPSCOPE_CACHE") if old is None else os.environ.__setitem__("REPSCOPE_CACHE", old)
    marks: dict[str, float] = {}

    def progress(f: float, msg: str) -> None:
        key = "fit" if msg.startswith("CAV") or msg.startswith("fitting") or msg.startswith("random") else \
            "resample" if msg.startswith("bootstrap") else "done" if msg == "done" else "extract"
        marks.setdefault(key, time.perf_counter())

    start = time.perf_counter()
    result, report["warm_s"] = _timed(lambda: compute_bias(lm, cfg, progress))
    report["stages"] = {
        "activations_s": round(marks["fit"] - start, 2),
        "cav_fit_s": round(marks["resample"] - marks["fit"], 2),
        "bootstrap_and_null_s": round(marks["done"] - marks["resample"], 2),
    }
    layers = list(range(lm.n_layers))
    neg = stacked_activations(lm, background_texts(), layers, "last")
    pos = {c: stacked_activations(lm, sets[c].texts, layers, "last") for c in cfg.concepts}

    def rerender():
        rows = [("review", t, result.refs, result.summary[i], result.ci_low[i], result.ci_high[i], float(i), 0.1)
                for i, t in enumerate(result.targets)]
        return (heatmap_figure(result), summary_figure(result), shared_latents_figure(result.shared),
                behaviour_figure(behaviour_data(rows)), layer_frame(result), summary_frame(result))

    rerender()
    times = [_timed(rerender)[1] for _ in range(3)]
    report["rerender_s"] = min(times)

    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([pos[cfg.targets[0]][6], neg[6][: len(pos[cfg.targets[0]][6])]])
    y = np.r_[np.ones(len(x) // 2, int), np.zeros(len(x) - len(x) // 2, int)]
    clf = LogisticRegression(max_iter=2000, warm_start=True).fit(x, y)
    rng = np.random.default_rng(0)
    per = [_timed(lambda: clf.fit(x[(i := rng.integers(0, len(x), len(x)))], y[i]))[1] for _ in range(5)]
    report["logistic_refit_ms"] = round(1000 * float(np.median(per)), 1)
    report["summary"] = {t: [round(float(v), 4) for v in (result.summary[i], result.ci_low[i], result.ci_high[i],
                                                          result.perm_low[i], result.perm_high[i])]
                         for i, t in enumerate(result.targets)}


if __name__ == "__main__":
    import json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {}
    run(out)
    print(json.dumps(out, indent=2))
