"""Bias benchmark: the review_sentiment preset (5 targets × 2 refs × every layer, 200 bootstrap
resamples, 1,000 permutations, the differential test of two targets).

* ``cold``: ``compute_bias`` with an empty activation cache (a temporary
  ``REPSCOPE_CACHE``): extraction + CAV accuracies + bootstrap + permutation tests;
* ``warm``: the same call with activations read from the disk cache (target ≤ 5 s on
  2 cores), split into ``stages`` (cache read, CAV accuracies, bootstrap + tests);
* ``permutations_1000_s``: the closed-form mean-difference permutations alone (per-target
  null for all 5 targets + the differential), from arrays in memory;
* ``logistic_refit_ms`` × the 36,000 refits that 1,000 logistic permutations need
  (2 references × 18 layers each): ``logistic_permutations_projected_s``, the reason the
  default estimator is mean_diff (the null must use the point estimate's estimator);
* ``rerender``: what the page does on a display-option change once the result is
  cached (``st.cache_data``): build the four figures and the tables (aim < 1 s);
* ``logistic_refit_ms``: one logistic refit, alone (what each permutation cost before batching);
* ``logistic_preset_warm_s``: the whole preset with ``cav_method="logistic"`` (logistic bootstrap
  and logistic permutation null, batched), warm, with the time at which each stage began.

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
    from analysis.bias import compute_bias, preset_config
    from analysis.concepts import background_texts, load_concepts
    from analysis.models import load_model

    lm = load_model()
    cfg = preset_config("review_sentiment", n_bootstrap=200, n_permutations=1000,
                        differential=("food_aspect", "service_aspect"))
    sets = load_concepts()
    report["preset"] = {"targets": len(cfg.targets), "refs": 2, "layers": lm.n_layers, "n_bootstrap": 200,
                        "n_permutations": 1000, "differential": list(cfg.differential),
                        "texts": sum(len(sets[c]) for c in cfg.concepts) + len(background_texts())}
    if os.environ.get("REPSCOPE_BENCH_SKIP_COLD") == "1":  # warm from the user's own activation cache
        _measure(report, lm, cfg, sets)
        return
    old = os.environ.get("REPSCOPE_CACHE")
    with tempfile.TemporaryDirectory(prefix="repscope-bench-bias-") as tmp:
        os.environ["REPSCOPE_CACHE"] = tmp  # cold fills it; every warm figure below reads it
        try:
            _, report["cold_s"] = _timed(lambda: compute_bias(lm, cfg))
            _measure(report, lm, cfg, sets)
        finally:
            os.environ.pop("REPSCOPE_CACHE") if old is None else os.environ.__setitem__("REPSCOPE_CACHE", old)


def _measure(report: dict, lm, cfg, sets) -> None:
    """The warm figures: the preset again, its stages, the logistic preset, re-rendering, the nulls."""
    import numpy as np

    from analysis.bias import (
        behaviour_data,
        compute_bias,
        layer_frame,
        preset_config,
        summary_frame,
    )
    from analysis.bias.figures import (
        behaviour_figure,
        differential_figure,
        heatmap_figure,
        shared_latents_figure,
        summary_figure,
    )
    from analysis.concepts import background_texts, stacked_activations

    marks: dict[str, float] = {}

    def progress(f: float, msg: str) -> None:
        key = "fit" if msg.startswith("CAV") or msg.startswith("fitting") or msg.startswith("random") else \
            "resample" if msg.startswith("bootstrap") else "done" if msg == "done" else \
            "tests" if msg.startswith("permutation") or msg.startswith("differential") else "extract"
        marks.setdefault(key, time.perf_counter())

    start = time.perf_counter()
    result, report["warm_s"] = _timed(lambda: compute_bias(lm, cfg, progress))
    report["stages"] = {
        "activations_s": round(marks["fit"] - start, 2),
        "cav_accuracy_s": round(marks["resample"] - marks["fit"], 2),
        "bootstrap_s": round(marks["tests"] - marks["resample"], 2),
        "permutation_tests_s": round(marks["done"] - marks["tests"], 2),
    }
    # the same preset with logistic CAVs: its bootstrap (200 × 7 concepts × 18 layers) and its
    # null (1,000 × 2 references × 18 layers) are batched logistic fits: affordable, not interactive
    lcfg = preset_config("review_sentiment", n_bootstrap=200, n_permutations=1000, cav_method="logistic")
    lmarks: dict[str, float] = {}
    lstart = time.perf_counter()
    lres, report["logistic_preset_warm_s"] = _timed(
        lambda: compute_bias(lm, lcfg, lambda f, msg: lmarks.setdefault(msg.split()[0], time.perf_counter())))
    report["logistic_preset_stages"] = {k: round(v - lstart, 2) for k, v in lmarks.items()}
    report["logistic_summary"] = {t: [round(float(v), 4) for v in (lres.summary[i], lres.ci_low[i], lres.ci_high[i],
                                                                   lres.p_value[i])]
                                  for i, t in enumerate(lres.targets)}
    layers = list(range(lm.n_layers))
    neg = stacked_activations(lm, background_texts(), layers, "last")
    pos = {c: stacked_activations(lm, sets[c].texts, layers, "last") for c in cfg.concepts}

    def rerender():
        rows = [("review", t, result.refs, result.summary[i], result.ci_low[i], result.ci_high[i], float(i), 0.1)
                for i, t in enumerate(result.targets)]
        return (heatmap_figure(result), summary_figure(result), differential_figure(result),
                shared_latents_figure(result.shared),
                behaviour_figure(behaviour_data(rows)), layer_frame(result), summary_frame(result))

    rerender()
    times = [_timed(rerender)[1] for _ in range(3)]
    report["rerender_s"] = min(times)

    from analysis.bias import differential_null, make_space, reference_null
    from analysis.concepts import fit_logistic

    space = make_space(pos, neg)
    start = time.perf_counter()
    reference_null(space, cfg.targets, cfg.ref1, cfg.ref2, 1000, 0)
    differential_null(space, *cfg.differential, cfg.ref1, cfg.ref2, 1000, 0)
    report["permutations_1000_s"] = round(time.perf_counter() - start, 2)
    r1 = pos[cfg.ref1]
    x = np.concatenate([r1[6], neg[6][: r1.shape[1]]])
    y = np.r_[np.ones(r1.shape[1], int), np.zeros(r1.shape[1], int)]
    rng = np.random.default_rng(0)
    per = [_timed(lambda: fit_logistic(x[(i := rng.permutation(len(x)))], y[i]))[1] for _ in range(5)]
    report["logistic_refit_ms"] = round(1000 * float(np.median(per)), 1)
    report["logistic_permutations_projected_s"] = round(36000 * float(np.median(per)), 0)
    report["summary"] = {t: [round(float(v), 4) for v in (result.summary[i], result.ci_low[i], result.ci_high[i],
                                                          result.p_value[i], result.p_holm[i])]
                         for i, t in enumerate(result.targets)}
    d = result.differential
    report["differential"] = {"effect": round(d.effect, 4), "d": round(d.effect_size_d, 3), "p": d.p_value}


if __name__ == "__main__":
    import json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {}
    run(out)
    print(json.dumps(out, indent=2))
