"""Figure recipes of live inspection: residual norms, logit lens, attention, next token."""

from __future__ import annotations

from typing import Any

from analysis.inspection import figures as figs
from analysis.inspection.lens import (
    InspectConfig,
    PromptInspection,
    attention_frame,
    inspect_prompt,
    logit_lens_frame,
    next_token_frame,
    residual_norms_frame,
)
from analysis.models import LoadedModel


def build_figure(kind: str, insp: PromptInspection, cfg: InspectConfig):
    """``(figure, frame)`` of one inspection figure kind from an already computed inspection."""

    if kind == "residual_norms":
        return figs.residual_norms_figure(insp, cfg.log_norms), residual_norms_frame(insp)
    if kind == "logit_lens":
        return figs.logit_lens_figure(insp, cfg.metric), logit_lens_frame(insp)
    if kind == "next_token":
        return figs.next_token_figure(insp), next_token_frame(insp)
    if kind == "attention":
        layer, head = cfg.layer or 0, cfg.head or 0
        return figs.attention_figure(insp, layer, head), attention_frame(insp, layer, head)
    raise ValueError(f"figure kind {kind!r}: valid kinds are {RECIPE_KINDS}")


def _recipe(kind: str):
    def build(lm: LoadedModel, config: dict[str, Any]):
        cfg = InspectConfig.from_dict(config)
        return build_figure(kind, inspect_prompt(lm, cfg.text, cfg.top_k), cfg)

    build.__name__ = f"recipe_{kind}"
    return build


RECIPE_KINDS = ("residual_norms", "logit_lens", "attention", "next_token")
RECIPES = {kind: _recipe(kind) for kind in RECIPE_KINDS}
