"""Figure recipes of the likelihood view (CHES ranking, DPO runs)."""

from __future__ import annotations

from pathlib import Path

from analysis.likelihood.ches import LikelihoodConfig, rank_pairs
from analysis.likelihood.dpo import DPOConfig, history_frame, run_dpo
from analysis.likelihood.figures import (
    ches_histogram_figure, ches_similarity_figure, dpo_curves_figure, dpo_indicators_figure,
)
from analysis.likelihood.preferences import PreferenceData, load_preferences, load_shipped, shipped_sets


def _recipe_data(lm, config: dict) -> PreferenceData:


    source = config.get("source", "displacement_demo")
    if source in shipped_sets():
        return load_shipped(source, lm.tokenizer)
    return load_preferences(Path(source), lm.tokenizer)


def _ches_recipe(kind: str):
    def build(lm, config: dict):

        data = _recipe_data(lm, config)
        frame = rank_pairs(lm, data, LikelihoodConfig(top_k=int(config.get("top_k", 10))))
        score = config.get("score", "ches")
        if kind == "ches_histogram":
            return ches_histogram_figure(frame, score=score), frame
        return ches_similarity_figure(frame, score=score, similarity=config.get("similarity", "token_jaccard")), frame
    return build


def _dpo_recipe(kind: str):
    def build(lm, config: dict):

        data = _recipe_data(lm, config)
        fields = {k: v for k, v in config.items() if k in DPOConfig.__dataclass_fields__}
        if "watch_tokens" in fields:
            fields["watch_tokens"] = tuple(fields["watch_tokens"])
        result = run_dpo(lm, data, DPOConfig(**fields))
        frame = history_frame(result)
        fig = dpo_curves_figure(frame) if kind == "dpo_curves" else dpo_indicators_figure(frame)
        return fig, frame
    return build


RECIPES = {
    "ches_histogram": _ches_recipe("ches_histogram"),
    "ches_vs_similarity": _ches_recipe("ches_vs_similarity"),
    "dpo_curves": _dpo_recipe("dpo_curves"),
    "dpo_indicators": _dpo_recipe("dpo_indicators"),
}
