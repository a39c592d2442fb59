"""Figure recipes of the comparison views: ``kind -> fn(lm, config) -> (figure, frame)``.

``lm`` is the base model; the states A and B are spec strings in the config.
"""

from __future__ import annotations

from analysis.compare.drift import DriftConfig, compute_audit, compute_drift
from analysis.compare.figures import (
    audit_figure,
    delta_bias_figure,
    delta_concepts_figure,
    delta_cosine_figure,
    drift_figure,
    lens_kl_figure,
    likelihood_figure,
)
from analysis.compare.views import CompareConfig, compare
from analysis.recipes import check_config_keys


def _view(kind: str):
    def recipe(lm, config: dict):
        config = dict(config)
        layer = config.pop("layer", None)
        cfg = CompareConfig.from_dict(config)
        if cfg.view != kind.removeprefix("compare_").removesuffix("_cosine"):
            raise ValueError(f"a {kind} recipe needs view {kind.removeprefix('compare_')!r}, got {cfg.view!r}")
        result = compare(lm, cfg)
        if kind == "compare_bias":
            return delta_bias_figure(result, cfg.a, cfg.b), result.frame()
        if kind == "compare_concepts":
            return delta_concepts_figure(result, cfg.a, cfg.b), result.layer_frame()
        if kind == "compare_concepts_cosine":
            if layer is None:
                raise ValueError("a compare_concepts_cosine recipe needs a 'layer'")
            return delta_cosine_figure(result, int(layer), cfg.a, cfg.b), result.frame()
        if kind == "compare_lens":
            return lens_kl_figure(result, cfg.a, cfg.b), result.frame()
        return likelihood_figure(result, cfg.a, cfg.b), result
    return recipe


def _drift_recipe(lm, config: dict):
    result = compute_drift(lm, DriftConfig.from_dict(config))
    return drift_figure(result), result.frame()


def _audit_recipe(lm, config: dict):
    config = dict(config)
    check_config_keys(CompareConfig, {k: v for k, v in config.items() if k not in ("state", "n_random")},
                      "compare_audit recipe")
    spec, n_random = config.pop("state", None), int(config.pop("n_random", 19))
    if not spec:
        raise ValueError("a compare_audit recipe needs a 'state' (steer:PATH@alpha=A)")
    result = compute_audit(lm, spec, CompareConfig.from_dict(config), n_random=n_random)
    return audit_figure(result, spec), result.frame()


RECIPES = {
    **{k: _view(k) for k in ("compare_bias", "compare_concepts", "compare_concepts_cosine", "compare_lens",
                             "compare_likelihood")},
    "compare_drift": _drift_recipe,
    "compare_audit": _audit_recipe,
}
