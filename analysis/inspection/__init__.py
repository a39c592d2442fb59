"""Live inspection of one prompt: per-token loss, residual norms, logit lens, attention, next token.

Public API of ``analysis.inspection``; figure builders live in ``figures`` and
recipes in ``recipes`` (imported on demand, so importing the package stays light).
"""

from __future__ import annotations

from analysis.inspection.lens import (  # noqa: F401
    METRICS,
    MAX_TOP_K,
    pattern_hook,
    PromptInspection,
    display_token,
    InspectConfig,
    count_tokens,
    inspect_prompt,
    add_lens,
    fused_lens,
    lens_log_probs,
    check_prompts,
    score_prompts,
    residual_norms_frame,
    logit_lens_frame,
    attention_frame,
    next_token_frame,
    lens_top_k_frame,
    check_layer_head,
)

__all__ = [
    "InspectConfig",
    "MAX_TOP_K",
    "METRICS",
    "PromptInspection",
    "add_lens",
    "attention_frame",
    "check_layer_head",
    "check_prompts",
    "count_tokens",
    "display_token",
    "fused_lens",
    "inspect_prompt",
    "lens_log_probs",
    "lens_top_k_frame",
    "logit_lens_frame",
    "next_token_frame",
    "pattern_hook",
    "residual_norms_frame",
    "score_prompts",
]
