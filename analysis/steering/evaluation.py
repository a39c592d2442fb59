"""Evaluating a steering vector (METHODS §3 "Show"): α sweep, background loss, links.

* :func:`compute_alpha_sweep`: on held-out pairs, gap(α) = log p(positive
  completion | prompt) − log p(negative completion | prompt) (summed over the
  completion's tokens, mean over pairs), with α·v added at every position;
  plus the model's mean next-token loss on neutral background text at each α
  (how much steering damages ordinary language modelling).
* :func:`compute_cav_links`: cosine of each layer's vector with the shipped
  concepts' CAVs (``analysis.concepts.cavs``).
* :func:`compute_sae_links`: cosine of the vector with each decoder row of a
  shipped SAE at its layer (``analysis.saes.loading``); the top latents.

Footgun: the completion's tokens are those after ``len(tokenize(prompt))``;
a completion that merges with the prompt's last token across the boundary
would be mis-split (completions here start with a space, which avoids it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float

from analysis.models import LoadedModel
from analysis.steering.pairs import Pair
from analysis.steering.vector import SteeringVector, apply

DEFAULT_ALPHAS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


@torch.inference_mode()
def completion_logprobs(
    lm: LoadedModel, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 8,
) -> Float[np.ndarray, "n"]:
    """Σ log p(completion tokens | prompt) per text, under whatever hooks are active (caller holds the lock)."""
    out = np.zeros(len(prompts), dtype=np.float64)
    for start in range(0, len(prompts), batch_size):
        ps, cs = prompts[start:start + batch_size], completions[start:start + batch_size]
        ids, mask = lm.tokenize([p + c for p, c in zip(ps, cs)])
        n_prompt = [len(lm.tokenizer(p)["input_ids"]) for p in ps]
        logits = lm.model(ids, attention_mask=mask)
        for j in range(ids.shape[0]):
            end = int(mask[j].sum())
            if end <= n_prompt[j]:
                raise ValueError(f"completion {cs[j]!r} adds no tokens to prompt {ps[j]!r}")
            rows = logits[j, n_prompt[j] - 1:end - 1].float().log_softmax(-1)
            tgt = ids[j, n_prompt[j]:end]
            out[start + j] = float(rows.gather(-1, tgt[:, None]).sum())
    return out


@torch.inference_mode()
def mean_token_loss(lm: LoadedModel, texts: Sequence[str], *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every real token of ``texts`` (BOS excluded as a target)."""
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids, mask = lm.tokenize(list(texts[start:start + batch_size]))
        logits = lm.model(ids, attention_mask=mask).float()
        lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].to(lp.dtype)
        total += float(-(lp * m).sum())
        count += int(m.sum())
    return total / max(count, 1)


@dataclass(frozen=True)
class AlphaSweep:
    alphas: np.ndarray  # (n_alpha,)
    gaps: np.ndarray  # (n_alpha, n_pairs)
    background_loss: np.ndarray  # (n_alpha,)
    layers: tuple[int, ...]

    @property
    def gap_mean(self) -> np.ndarray:
        return self.gaps.mean(1)

    @property
    def gap_sem(self) -> np.ndarray:
        n = self.gaps.shape[1]
        return self.gaps.std(1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(self.alphas))

    def frame(self):
        import pandas as pd

        return pd.DataFrame({"alpha": self.alphas, "gap_mean": self.gap_mean, "gap_sem": self.gap_sem,
                             "background_loss": self.background_loss})


def compute_alpha_sweep(
    lm: LoadedModel, vector: SteeringVector, pairs: Sequence[Pair], alphas: Sequence[float] = DEFAULT_ALPHAS, *,
    layers: Sequence[int] | None = None, background: Sequence[str] | None = None, progress=None,
) -> AlphaSweep:
    """gap(α) on ``pairs`` and background loss at each α (α = 0 always included as the baseline)."""
    if not pairs:
        raise ValueError("no held-out pairs: the α sweep needs pairs with split 'test'")
    alphas = np.array(sorted(set(float(a) for a in alphas) | {0.0}), dtype=np.float64)
    if background is None:
        from analysis.concepts import background_texts

        background = background_texts()
    prompts = [p.prompt for p in pairs]
    gaps, losses = [], []
    for i, a in enumerate(alphas):
        with apply(lm, vector, a, layers):
            pos = completion_logprobs(lm, prompts, [p.positive for p in pairs])
            neg = completion_logprobs(lm, prompts, [p.negative for p in pairs])
            losses.append(mean_token_loss(lm, list(background)) if len(background) else float("nan"))
        gaps.append(pos - neg)
        if progress:
            progress((i + 1) / len(alphas))
    return AlphaSweep(alphas, np.stack(gaps), np.array(losses), tuple(vector.layers if layers is None else layers))


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class CavLinks:
    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    cosine: np.ndarray  # (n_concepts, n_layers)


def cosine_rows(v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """cos(v, rows[i]) for each row; zero rows give 0."""
    v = v.astype(np.float64)
    rows = rows.astype(np.float64)
    denom = np.linalg.norm(rows, axis=-1) * np.linalg.norm(v)
    return np.where(denom > 0, rows @ v / np.where(denom > 0, denom, 1.0), 0.0)


def compute_cav_links(lm: LoadedModel, vector: SteeringVector, *, concepts: Sequence[str] | None = None,
                      method: str = "mean_diff", progress=None) -> CavLinks:
    """Cosine of v_l with each shipped concept's CAV at every layer (CAVs from ``analysis.concepts.cavs``)."""
    from analysis.concepts import CavConfig, fit_cavs
    from analysis.concepts import background_texts, load_concepts

    sets = load_concepts()
    names = tuple(concepts) if concepts else tuple(
        n for n, s in sets.items() if s.source == "shipped" and s.kind == "concept")
    result = fit_cavs(lm, sets, background_texts(), CavConfig(concepts=names, method=method, n_folds=2, n_random=1),
                      progress=(lambda f, msg: progress(f)) if progress else None)
    cos = np.stack([[cosine_rows(vector.vectors[l], result.vectors[c, i][None])[0]
                     for i, l in enumerate(result.layers)] for c in range(len(names))])
    return CavLinks(concepts=names, layers=tuple(result.layers), cosine=cos)


@dataclass(frozen=True)
class SaeLinks:
    sae: str
    layer: int
    latents: np.ndarray  # top latent ids by |cosine|
    cosine: np.ndarray  # their cosines with v_layer


def compute_sae_links(lm: LoadedModel, vector: SteeringVector, *, sae_name: str | None = None,
                      layer: int = 6, top_k: int = 15) -> SaeLinks:
    """The SAE latents whose decoder directions align most with v at the SAE's layer (sae-proj style)."""
    from analysis.saes import load_sae, shipped_for

    if sae_name is None:
        found = shipped_for(lm.name, layer=layer)
        if not found:
            raise ValueError(f"no shipped SAE for {lm.name!r} at layer {layer}; load one by name or folder")
        sae_name = found[0]
    sae = load_sae(sae_name)
    if sae.layer is None or sae.d_in != lm.d_model:
        raise ValueError(f"SAE {sae_name!r} reads {sae.hook_name!r} with d_in={sae.d_in}; it does not fit {lm.name!r}")
    w_dec = sae.sae.W_dec.detach().float().cpu().numpy()
    cos = cosine_rows(vector.vectors[sae.layer], w_dec)
    top = np.argsort(-np.abs(cos))[:top_k]
    return SaeLinks(sae=sae_name, layer=int(sae.layer), latents=top, cosine=cos[top])


# ---------------------------------------------------------------- recipes
