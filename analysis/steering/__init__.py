"""Steering vectors: contrastive pairs, vector building and layer search, steered generation and evaluation.

Public API of ``analysis.steering``; figure builders live in ``figures`` and
recipes in ``recipes`` (imported on demand, so importing the package stays light).
"""

from __future__ import annotations

from analysis.steering.pairs import (  # noqa: F401
    STEERING_DIR,
    PAIR_FIELDS,
    SPLITS,
    Pair,
    PairSet,
    shipped_sets,
    load_pair_set,
    parse_pair_upload,
)
from analysis.steering.twin import (  # noqa: F401
    existing_twin,
    hf_twin,
)
from analysis.steering.vector import (  # noqa: F401
    POSITIONS,
    js_exact,
    js_paper,
    SCORES,
    SteeringConfig,
    PairActivations,
    compute_pair_activations,
    LayerSearch,
    layer_search,
    SteeringVector,
    build_steering_vector,
    apply,
)
from analysis.steering.generation import (  # noqa: F401
    MAX_NEW_TOKENS,
    PATHS,
    GenerationConfig,
    Steering,
    Generation,
    resolve_path,
    generate,
    generate_side_by_side,
)
from analysis.steering.evaluation import (  # noqa: F401
    DEFAULT_ALPHAS,
    completion_logprobs,
    mean_token_loss,
    AlphaSweep,
    compute_alpha_sweep,
    CavLinks,
    cosine_rows,
    compute_cav_links,
    SaeLinks,
    compute_sae_links,
)

__all__ = [
    "AlphaSweep",
    "CavLinks",
    "DEFAULT_ALPHAS",
    "Generation",
    "GenerationConfig",
    "LayerSearch",
    "MAX_NEW_TOKENS",
    "PAIR_FIELDS",
    "PATHS",
    "POSITIONS",
    "Pair",
    "PairActivations",
    "PairSet",
    "SCORES",
    "SPLITS",
    "STEERING_DIR",
    "SaeLinks",
    "Steering",
    "SteeringConfig",
    "SteeringVector",
    "apply",
    "build_steering_vector",
    "completion_logprobs",
    "compute_alpha_sweep",
    "compute_cav_links",
    "compute_pair_activations",
    "compute_sae_links",
    "cosine_rows",
    "existing_twin",
    "generate",
    "generate_side_by_side",
    "hf_twin",
    "js_exact",
    "js_paper",
    "layer_search",
    "load_pair_set",
    "mean_token_loss",
    "parse_pair_upload",
    "resolve_path",
    "shipped_sets",
]
