"""Sparse autoencoders: loading (shipped, local, uploaded, sae-lens), concept probes, quality and training.

Public API of ``analysis.saes``; figure builders live in ``figures`` and
recipes in ``recipes`` (imported on demand, so importing the package stays light).
"""

from __future__ import annotations

from analysis.saes.loading import (  # noqa: F401
    SAES_DIR,
    MAX_UPLOAD_BYTES,
    SAELoadError,
    LoadedSAE,
    shipped_saes,
    shipped_for,
    validate_cfg,
    safetensors_header,
    check_shapes,
    load_sae,
    load_sae_upload,
    encode,
    decode,
)
from analysis.saes.probes import (  # noqa: F401
    POOLINGS,
    PROBE_KS,
    check_compatible,
    TokenCodes,
    token_codes,
    ConceptLatents,
    compute_concept_latents,
    ProbeCurve,
    compute_sparse_probe,
    LatentCard,
    promoted_tokens,
    compute_latent_card,
)
from analysis.saes.quality import (  # noqa: F401
    measure_quality,
)
from analysis.saes.training import (  # noqa: F401
    CHECK_TEXTS,
    SEED_PROMPTS,
    SAETrainConfig,
    Corpus,
    shipped_texts,
    generate_texts,
    split,
    build_corpus,
    token_activations,
    TrainReport,
    train_topk_sae,
    build_sae,
    train_and_save,
    readme,
)

__all__ = [
    "CHECK_TEXTS",
    "ConceptLatents",
    "Corpus",
    "LatentCard",
    "LoadedSAE",
    "MAX_UPLOAD_BYTES",
    "POOLINGS",
    "PROBE_KS",
    "ProbeCurve",
    "SAELoadError",
    "SAES_DIR",
    "SAETrainConfig",
    "SEED_PROMPTS",
    "TokenCodes",
    "TrainReport",
    "build_corpus",
    "build_sae",
    "check_compatible",
    "check_shapes",
    "compute_concept_latents",
    "compute_latent_card",
    "compute_sparse_probe",
    "decode",
    "encode",
    "generate_texts",
    "load_sae",
    "load_sae_upload",
    "measure_quality",
    "promoted_tokens",
    "readme",
    "safetensors_header",
    "shipped_for",
    "shipped_saes",
    "shipped_texts",
    "split",
    "token_activations",
    "token_codes",
    "train_and_save",
    "train_topk_sae",
    "validate_cfg",
]
