"""Behavioural bias and its agreement with conceptual Bias (METHODS §2, BiasLens validation).

``Bias_behavioural(t; r1, r2)`` = mean over prompts of
``log p(r1 words | prompt) − log p(r2 words | prompt)``, where the prompts are every
template of a set (``assets/bias/templates.yaml``) with ``{target}`` filled by each of
t's ``mentions`` (so each template weighs the same), and

* a word's log-probability is that of its *first* token, written with a leading
  space (``" good"``), at the position after the prompt: multi-token words are
  scored by their first piece only;
* ``log p(words)`` aggregates a concept's words by log-mean-exp (``aggregate=
  "logmeanexp"``: the log of the words' average probability, dominated by the
  likeliest words) or by the plain mean of log-probabilities (``"mean"``).

One batched, right-padded forward pass per target scores every prompt.
Agreement over many triples is Spearman's rank correlation (ties get average ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from analysis.concepts import ConceptSet

AGGREGATES = ("logmeanexp", "mean")


def load_templates(name: str | None = None) -> tuple[str, ...]:
    """A template set from ``assets/bias/templates.yaml`` (the default set when ``name`` is None)."""
    import yaml

    from analysis.paths import ASSETS

    raw = yaml.safe_load((ASSETS / "bias" / "templates.yaml").read_text())
    name = name or raw["default"]
    if name not in raw["sets"]:
        raise ValueError(f"unknown template set {name!r}; valid sets are {sorted(raw['sets'])}")
    return tuple(raw["sets"][name])


def fill_templates(templates, mentions) -> list[str]:
    """Every template × mention, template-major; each template must contain ``{target}``."""
    bad = [t for t in templates if "{target}" not in t]
    if bad:
        raise ValueError(f"templates {bad[:2]} have no {{target}} slot; write e.g. 'The {{target}} was'")
    if not mentions:
        raise ValueError("the target concept has no 'mentions' to fill the templates; add some to its YAML file")
    return [t.replace("{target}", m) for t in templates for m in mentions]


def first_token_ids(tokenizer, words) -> np.ndarray:
    """The first token id of each word written after a space (``" word"``), no special tokens."""
    if not words:
        raise ValueError("a reference concept has no 'words' to score; add some to its YAML file")
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    empty = [w for w, i in zip(words, ids) if not i]
    if empty:
        raise ValueError(f"words {empty} tokenise to nothing")
    return np.array([i[0] for i in ids])


@torch.inference_mode()
def next_token_logprobs(lm, prompts: list[str], token_ids: np.ndarray) -> Float[np.ndarray, "n k"]:
    """log-softmax of the next-token logits after each prompt, at ``token_ids``: one batched pass.

    A hook on ``ln_final.hook_normalized`` keeps only each prompt's last real position, so the
    unembedding (262k wide for Gemma) runs once per prompt instead of once per token.
    """
    ids, mask = lm.tokenize(prompts)
    last = mask.sum(1) - 1
    rows = torch.arange(ids.shape[0])

    def keep_last(h, hook):
        return h[rows, last][:, None, :]

    name = "ln_final.hook_normalized"
    if name in lm.model.hook_dict:
        with lm.hooked([(name, keep_last)]) as model:
            logits = model(ids, attention_mask=mask)[:, -1]
    else:
        with lm.locked() as model:
            logits = model(ids, attention_mask=mask)[rows, last]
    logp = torch.log_softmax(logits.to(torch.float32), -1)
    return logp[:, torch.as_tensor(token_ids)].cpu().numpy().astype(np.float64)


def aggregate_words(logp: Float[np.ndarray, "n k"], how: str) -> Float[np.ndarray, " n"]:
    if how == "logmeanexp":
        top = logp.max(-1, keepdims=True)
        return (top + np.log(np.exp(logp - top).mean(-1, keepdims=True)))[:, 0]
    if how == "mean":
        return logp.mean(-1)
    raise ValueError(f"aggregate {how!r}: valid aggregates are {AGGREGATES}")


@dataclass(frozen=True)
class BehaviouralScore:
    """``score``: the mean over prompts; ``per_prompt``: r1 − r2 log-probability per prompt."""

    score: float
    per_prompt: np.ndarray
    prompts: tuple[str, ...]

    @property
    def sem(self) -> float:
        n = len(self.per_prompt)
        return float(self.per_prompt.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def _concept(c) -> ConceptSet:
    if isinstance(c, ConceptSet):
        return c
    from analysis.concepts import load_concepts

    sets = load_concepts()
    if c not in sets:
        raise ValueError(f"unknown concept {c!r}; available concepts are {sorted(sets)}")
    return sets[c]


def behavioural_bias(lm, target, r1, r2, templates, *, aggregate: str = "logmeanexp") -> BehaviouralScore:
    """Mean over templates × t's mentions of log p(r1 words) − log p(r2 words) (see module doc)."""
    target, r1, r2 = _concept(target), _concept(r1), _concept(r2)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r}: valid aggregates are {AGGREGATES}")
    prompts = fill_templates(templates, target.mentions)
    ids1, ids2 = first_token_ids(lm.tokenizer, r1.words), first_token_ids(lm.tokenizer, r2.words)
    logp = next_token_logprobs(lm, prompts, np.concatenate([ids1, ids2]))
    diff = aggregate_words(logp[:, : len(ids1)], aggregate) - aggregate_words(logp[:, len(ids1):], aggregate)
    return BehaviouralScore(score=float(diff.mean()), per_prompt=diff, prompts=tuple(prompts))


def spearman(x, y) -> float:
    """Spearman's rho: Pearson correlation of average ranks; NaN pairs dropped, NaN if < 3 pairs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):  # ties share their average rank
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


# ---------------------------------------------------------------- over presets

@dataclass(frozen=True)
class BehaviourConfig:
    """Conceptual vs behavioural Bias over the triples of ``presets``; ``bias`` overrides BiasConfig fields."""

    presets: tuple[str, ...] = ("review_sentiment", "professions_gender", "insurance_sentiment")
    aggregate: str = "logmeanexp"
    bias: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        from analysis.bias.compute import load_presets

        known = load_presets()
        bad = [p for p in self.presets if p not in known]
        if isinstance(self.presets, str) or not self.presets or bad:
            raise ValueError(f"presets {bad or self.presets!r}: choose from {sorted(known)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {self.aggregate!r}: valid aggregates are {AGGREGATES}")

    def to_dict(self) -> dict:
        return {"presets": list(self.presets), "aggregate": self.aggregate, "bias": dict(self.bias)}

    @classmethod
    def from_dict(cls, d: dict) -> "BehaviourConfig":
        unknown = sorted(set(d) - {"presets", "aggregate", "bias"})
        if unknown:
            raise ValueError(f"unknown behaviour config keys {unknown}; valid keys are ['aggregate', 'bias', 'presets']")
        return cls(presets=tuple(d.get("presets") or cls.presets), aggregate=d.get("aggregate", "logmeanexp"),
                   bias=tuple(sorted((d.get("bias") or {}).items())))


@dataclass(frozen=True)
class BehaviourData:
    """One entry per (preset, target) triple, and Spearman's rho over the finite pairs."""

    presets: tuple[str, ...]
    targets: tuple[str, ...]
    refs: tuple[tuple[str, str], ...]
    conceptual: np.ndarray
    conceptual_low: np.ndarray
    conceptual_high: np.ndarray
    behavioural: np.ndarray
    behavioural_sem: np.ndarray
    rho: float

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "preset": self.presets, "target": self.targets, "ref1": [r[0] for r in self.refs],
            "ref2": [r[1] for r in self.refs], "conceptual": self.conceptual, "conceptual_low": self.conceptual_low,
            "conceptual_high": self.conceptual_high, "behavioural": self.behavioural,
            "behavioural_sem": self.behavioural_sem,
        })


def behaviour_rows(lm, result, label: str, templates, aggregate: str = "logmeanexp") -> list[tuple]:
    """(label, target, refs, conceptual, ci_low, ci_high, behavioural, sem) per target of a ``BiasResult``."""
    r1, r2 = result.refs
    rows = []
    for ti, t in enumerate(result.targets):
        b = behavioural_bias(lm, t, r1, r2, templates, aggregate=aggregate)
        rows.append((label, t, (r1, r2), result.summary[ti], result.ci_low[ti], result.ci_high[ti], b.score, b.sem))
    return rows


def behaviour_data(rows: list[tuple]) -> BehaviourData:
    """Stack :func:`behaviour_rows` output and compute Spearman's rho."""
    cols = list(zip(*rows))
    conceptual, behavioural = np.array(cols[3], float), np.array(cols[6], float)
    return BehaviourData(
        presets=cols[0], targets=cols[1], refs=cols[2], conceptual=conceptual, conceptual_low=np.array(cols[4], float),
        conceptual_high=np.array(cols[5], float), behavioural=behavioural, behavioural_sem=np.array(cols[7], float),
        rho=spearman(conceptual, behavioural),
    )


def compute_behaviour(lm, config: BehaviourConfig, progress=None, *, results: dict | None = None) -> BehaviourData:
    """Conceptual Bias (``compute_bias``) and behavioural Bias for every preset triple.

    ``results``: already computed ``BiasResult`` per preset name, reused when given.
    """
    from analysis.bias.compute import compute_bias, load_presets, preset_config

    presets = load_presets()
    rows = []
    for pi, name in enumerate(config.presets):
        result = (results or {}).get(name)
        if result is None:
            sub = (lambda f, msg, pi=pi: progress((pi + 0.8 * f) / len(config.presets), msg)) if progress else None
            result = compute_bias(lm, preset_config(name, **dict(config.bias)), sub)
        rows += behaviour_rows(lm, result, name, load_templates(presets[name].templates), config.aggregate)
        if progress:
            progress((pi + 1) / len(config.presets), f"behavioural bias: {name}")
    return behaviour_data(rows)
