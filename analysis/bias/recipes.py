"""Figure recipes of the bias view: ``kind -> fn(lm, config) -> (figure, frame)``."""

from __future__ import annotations

from analysis.bias.behaviour import BehaviourConfig, compute_behaviour
from analysis.bias.compute import BiasConfig, compute_bias
from analysis.bias.figures import (
    behaviour_figure,
    differential_figure,
    heatmap_figure,
    summary_figure,
)
from analysis.bias.frames import layer_frame, summary_frame


def _heatmap_recipe(lm, config: dict):

    result = compute_bias(lm, BiasConfig.from_dict(config))
    return heatmap_figure(result), layer_frame(result)


def _summary_recipe(lm, config: dict):

    result = compute_bias(lm, BiasConfig.from_dict(config))
    return summary_figure(result), summary_frame(result)


def _differential_recipe(lm, config: dict):
    import pandas as pd

    result = compute_bias(lm, BiasConfig.from_dict(config))
    d = result.differential
    frame = None if d is None else pd.DataFrame({"layer": list(result.layers), "effect": d.layer_effect,
                                                 "p_value": d.layer_p, "p_adjusted": d.layer_p_adjusted})
    return differential_figure(result), frame


def _behaviour_recipe(lm, config: dict):

    data = compute_behaviour(lm, BehaviourConfig.from_dict(config))
    return behaviour_figure(data), data.to_frame()


RECIPES = {"bias_heatmap": _heatmap_recipe, "bias_summary": _summary_recipe, "bias_differential": _differential_recipe,
           "bias_behaviour": _behaviour_recipe}
