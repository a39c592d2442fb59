"""Figure recipes of the SAE views (concept latents, sparse probes, latent cards)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from analysis.concepts import background_texts, load_concepts
from analysis.recipes import check_config_keys
from analysis.saes.figures import (
    concept_latents_figure,
    latent_histogram_figure,
    probe_accuracy_figure,
    promoted_tokens_figure,
)
from analysis.saes.loading import load_sae
from analysis.saes.probes import (
    POOLINGS,
    LatentCard,
    TokenCodes,
    compute_concept_latents,
    compute_latent_card,
    compute_sparse_probe,
    latent_top_tokens,
    token_codes,
)


@dataclass(frozen=True)
class ConceptLatentsConfig:
    """A concept's SAE latents and sparse probe: which SAE, which concept, how tokens are pooled."""

    sae: str
    concept: str
    pooling: str = "max"
    top: int = 20

    def __post_init__(self) -> None:
        if not self.sae or not self.concept:
            raise ValueError("an SAE recipe needs 'sae' (a shipped name, folder or release:id) and 'concept'")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: valid poolings are {POOLINGS}")
        if not 1 <= int(self.top) <= 500:
            raise ValueError(f"top {self.top}: show between 1 and 500 latents")

    @classmethod
    def from_dict(cls, config: dict) -> "ConceptLatentsConfig":
        check_config_keys(cls, config, "SAE concept-latents")
        return cls(**config)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatentCardConfig:
    """One latent's card: where it fires (over the named concepts' texts and the background)."""

    sae: str
    latent: int
    concepts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("a latent-card recipe needs 'sae'")
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise ValueError(f"latent {self.latent!r}: give a non-negative integer latent id")
        object.__setattr__(self, "concepts", tuple(self.concepts))

    @classmethod
    def from_dict(cls, config: dict) -> "LatentCardConfig":
        check_config_keys(cls, config, "SAE latent-card")
        return cls(**config)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d


def _concept_codes(lm, cfg: ConceptLatentsConfig) -> tuple[TokenCodes, np.ndarray, np.ndarray]:
    """The concept's per-token codes, and the pooled codes of the concept and its background."""
    concepts = load_concepts()
    if cfg.concept not in concepts:
        raise ValueError(f"unknown concept {cfg.concept!r}; valid: {sorted(concepts)}")
    cs = concepts[cfg.concept]
    loaded = load_sae(cfg.sae)
    codes = token_codes(lm, loaded, list(cs.texts))
    neg = token_codes(lm, loaded, list(background_texts(cs.background))).pooled(cfg.pooling)
    return codes, codes.pooled(cfg.pooling), neg


def concept_latents_recipe(lm, config: dict):
    cfg = ConceptLatentsConfig.from_dict(config)
    codes, pos, neg = _concept_codes(lm, cfg)
    data = compute_concept_latents(pos, neg, cfg.concept, cfg.pooling)
    tokens = latent_top_tokens(codes, data.top(cfg.top), lambda i: lm.tokenizer.decode([i]))
    return concept_latents_figure(data, cfg.top, tokens), data.frame(cfg.top, tokens)


def probe_recipe(lm, config: dict):
    cfg = ConceptLatentsConfig.from_dict(config)
    _, pos, neg = _concept_codes(lm, cfg)
    curve = compute_sparse_probe(pos, neg, concept=cfg.concept)
    return probe_accuracy_figure(curve), curve.frame()


def _card(lm, cfg: LatentCardConfig) -> LatentCard:
    concepts = load_concepts()
    unknown = [n for n in cfg.concepts if n not in concepts]
    if unknown:
        raise ValueError(f"unknown concepts {unknown}; valid: {sorted(concepts)}")
    texts = [t for n in cfg.concepts for t in concepts[n].texts] + list(background_texts())
    return compute_latent_card(lm, load_sae(cfg.sae), cfg.latent, list(dict.fromkeys(texts)))


def latent_histogram_recipe(lm, config: dict):
    card = _card(lm, LatentCardConfig.from_dict(config))
    return latent_histogram_figure(card), card.top_texts


def promoted_tokens_recipe(lm, config: dict):
    card = _card(lm, LatentCardConfig.from_dict(config))
    return promoted_tokens_figure(card), pd.DataFrame({"token": card.promoted_tokens,
                                                       "logit": card.promoted_logits})


RECIPES = {
    "sae_concept_latents": concept_latents_recipe,
    "sae_probe_accuracy": probe_recipe,
    "sae_latent_histogram": latent_histogram_recipe,
    "sae_promoted_tokens": promoted_tokens_recipe,
}
