"""Time CAV fitting: 3 concepts × all layers × 100 texts on the default model, cold and warm.

Cold: a fresh, empty ``REPSCOPE_CACHE`` for activations (model weights are
reused from the user cache, and the model is loaded before timing). Warm: the
same call again, so every extraction is an activation-cache hit and only the
fits run. Run with ``python -m bench.bench_cavs``; prints one JSON object.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

CONCEPTS = ("positive_sentiment", "negative_sentiment", "food_aspect")


def run(report: dict) -> dict:
    from analysis import models
    from analysis.concepts.cavs import CavConfig, fit_cavs
    from analysis.concepts.sets import background_texts, load_concepts

    t0 = time.perf_counter()
    lm = models.load_model()  # weights come from the user cache, resolved before the override below
    report["model"] = lm.name
    report["load_s"] = round(time.perf_counter() - t0, 1)
    sets = load_concepts()
    background = background_texts()
    config = CavConfig(concepts=CONCEPTS, max_texts=100, n_folds=5, n_random=10, method="logistic")
    report.update(concepts=list(CONCEPTS), layers=lm.n_layers, texts_per_concept=100,
                  background_texts=len(background), background_extracted=min(len(background), 2 * 100),
                  n_random=config.n_random, n_folds=config.n_folds)
    old = os.environ.get("REPSCOPE_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["REPSCOPE_CACHE"] = cache
        try:
            for label in ("cold", "warm"):
                start = time.perf_counter()
                result = fit_cavs(lm, sets, background, config)
                report[f"{label}_s"] = round(time.perf_counter() - start, 1)
            # fits alone, for the split between extraction and fitting
            mean_cfg = CavConfig(concepts=CONCEPTS, max_texts=100, n_random=10, method="mean_diff")
            start = time.perf_counter()
            fit_cavs(lm, sets, background, mean_cfg)
            report["warm_mean_diff_s"] = round(time.perf_counter() - start, 1)
        finally:
            if old is None:
                os.environ.pop("REPSCOPE_CACHE", None)
            else:
                os.environ["REPSCOPE_CACHE"] = old
    report["best_layer_accuracy"] = {
        c: round(float(result.accuracy[i].max()), 3) for i, c in enumerate(result.concepts)
    }
    report["cpu_threads"] = os.cpu_count()
    return report


def main() -> None:
    print(json.dumps(run({}), indent=2))


if __name__ == "__main__":
    main()
