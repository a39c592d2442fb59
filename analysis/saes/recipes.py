"""Figure recipes of the SAE views (concept latents, sparse probes, latent cards)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.concepts import background_texts, load_concepts
from analysis.saes.figures import (
    concept_latents_figure, latent_histogram_figure, probe_accuracy_figure, promoted_tokens_figure,
)
from analysis.saes.loading import LoadedSAE, load_sae
from analysis.saes.probes import LatentCard, compute_concept_latents, compute_latent_card, compute_sparse_probe, token_codes


def _concept_codes(lm, config) -> tuple[LoadedSAE, np.ndarray, np.ndarray]:

    concepts = load_concepts()
    if config["concept"] not in concepts:
        raise ValueError(f"unknown concept {config['concept']!r}; valid: {sorted(concepts)}")
    cs = concepts[config["concept"]]
    loaded = load_sae(config["sae"])
    pooling = config.get("pooling", "max")
    pos = token_codes(lm, loaded, list(cs.texts)).pooled(pooling)
    neg = token_codes(lm, loaded, list(background_texts(cs.background))).pooled(pooling)
    return loaded, pos, neg


def concept_latents_recipe(lm, config):

    _, pos, neg = _concept_codes(lm, config)
    data = compute_concept_latents(pos, neg, config["concept"], config.get("pooling", "max"))
    top = int(config.get("top", 20))
    return concept_latents_figure(data, top), data.frame(top)


def probe_recipe(lm, config):

    _, pos, neg = _concept_codes(lm, config)
    curve = compute_sparse_probe(pos, neg, concept=config["concept"])
    return probe_accuracy_figure(curve), curve.frame()


def _card(lm, config) -> LatentCard:

    concepts = load_concepts()
    texts = [t for n in config.get("concepts", []) for t in concepts[n].texts] + list(background_texts())
    return compute_latent_card(lm, load_sae(config["sae"]), int(config["latent"]), texts)


def latent_histogram_recipe(lm, config):

    card = _card(lm, config)
    return latent_histogram_figure(card), card.top_texts


def promoted_tokens_recipe(lm, config):

    card = _card(lm, config)
    return promoted_tokens_figure(card), pd.DataFrame({"token": card.promoted_tokens,
                                                       "logit": card.promoted_logits})


RECIPES = {
    "sae_concept_latents": concept_latents_recipe,
    "sae_probe_accuracy": probe_recipe,
    "sae_latent_histogram": latent_histogram_recipe,
    "sae_promoted_tokens": promoted_tokens_recipe,
}
