"""Behavioural bias and its agreement with conceptual Bias (Methods §2, BiasLens validation).

``Bias_behavioural(t; r1, r2)`` = mean over prompts of
``log p(r1 words | prompt) − log p(r2 words | prompt)``, where the prompts are every
template of a set (``assets/bias/templates.yaml``) with ``{target}`` filled by each of
t's ``mentions`` (so each template weighs the same), and

* a word's log-probability is that of the whole word, written with a leading
  space (``" good"``): the sum of its tokens' log-probs (``analysis.logprobs``),
  so multi-token words are scored in full;
* ``log p(words)`` aggregates a concept's words by log-mean-exp (``aggregate=
  "logmeanexp"``: the log of the words' average probability, dominated by the
  likeliest words) or by the plain mean of log-probabilities (``"mean"``).

Option ``mode="paper"``: the target's behaviour under contexts reflecting r1 versus
r2 (the reference texts as contexts, the target's mentions as the scored words).
Agreement over many triples is Spearman's rank correlation (ties get average
ranks), reported with n and a bootstrap CI over the triples.
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


def word_token_ids(tokenizer, words) -> list[tuple[int, ...]]:
    """Every token of each word written after a space (``" word"``), no special tokens."""
    if not words:
        raise ValueError("a concept has no words to score; add 'words' (references) or 'mentions' (targets) to its YAML file")
    ids = [tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words]
    empty = [w for w, i in zip(words, ids) if not i]
    if empty:
        raise ValueError(f"words {empty} tokenise to nothing")
    return ids


def _logits_at(lm, seqs, positions) -> torch.Tensor:
    """Logits ``(b, k, vocab)`` at ``positions`` (b, k) of right-padded ``seqs``; a hook on
    ``ln_final.hook_normalized`` keeps only those positions, so the unembedding (262k wide for
    Gemma) runs on them alone."""
    from analysis.logprobs import pad_right

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids, mask = pad_right(seqs, pad)
    rows = torch.arange(ids.shape[0])[:, None]
    name = "ln_final.hook_normalized"
    if name in lm.model.hook_dict:
        with lm.hooked([(name, lambda h, hook: h[rows, positions])]) as model:
            return model(ids, attention_mask=mask)
    with lm.locked() as model:
        return model(ids, attention_mask=mask)[rows, positions]


@torch.inference_mode()
def word_logprobs(lm, prompts: list[str], words, *, batch_size: int = 64) -> Float[np.ndarray, "n k"]:
    """log p(" word" | prompt): the sum of the word's token log-probs, for every prompt × word.

    Tokenised by ``analysis.logprobs.encode`` (prompt with BOS, word without special tokens).
    One pass over the prompts scores every single-token word at the last position; only
    multi-token words need a pass over prompt + word.
    """
    from analysis.logprobs import encode, target_logprobs

    tok_ids = word_token_ids(lm.tokenizer, words)
    out = np.zeros((len(prompts), len(words)))
    single = [j for j, t in enumerate(tok_ids) if len(t) == 1]
    multi = [j for j, t in enumerate(tok_ids) if len(t) > 1]
    if single:
        prompt_ids = [tuple(lm.tokenizer(p)["input_ids"]) for p in prompts]
        first = torch.tensor([tok_ids[j][0] for j in single])
        for start in range(0, len(prompts), batch_size):
            seqs = prompt_ids[start:start + batch_size]
            last = torch.tensor([len(s) - 1 for s in seqs])[:, None]
            logits = _logits_at(lm, seqs, last)[:, 0].float()  # (b, vocab)
            lp = logits[:, first] - torch.logsumexp(logits, -1, keepdim=True)
            out[start:start + len(seqs), single] = lp.double().cpu().numpy()
    pairs = [(i, j) for i in range(len(prompts)) for j in multi]
    if pairs:
        enc = encode(lm.tokenizer, [prompts[i] for i, _ in pairs], [" " + words[j] for _, j in pairs])
        for start in range(0, len(pairs), batch_size):
            sl = slice(start, start + batch_size)
            seqs, n_x, n_y = enc.ids[sl], enc.n_prompt[sl], enc.n_response[sl]
            width = int(n_y.max())
            pos = (torch.as_tensor(n_x - 1)[:, None] + torch.arange(width)[None, :])
            pos = torch.minimum(pos, torch.as_tensor([len(s) - 2 for s in seqs])[:, None])
            targets = torch.stack([torch.as_tensor(s)[p + 1] for s, p in zip(seqs, pos)])
            keep = torch.arange(width)[None, :] < torch.as_tensor(n_y)[:, None]
            lp = target_logprobs(_logits_at(lm, seqs, pos), targets) * keep
            for (i, j), v in zip(pairs[sl], lp.sum(1).double().cpu().numpy()):
                out[i, j] = v
    return out


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


BEHAVIOUR_MODES = ("templates", "paper")


def behavioural_bias(lm, target, r1, r2, templates, *, aggregate: str = "logmeanexp",
                     mode: str = "templates", max_contexts: int = 24) -> BehaviouralScore:
    """Behavioural Bias of t between r1 and r2 (see module doc).

    ``mode="templates"``: per prompt (template × t's mention), log p(r1 words) − log p(r2 words).
    ``mode="paper"``: the target's behaviour under contexts reflecting r1 versus r2: per context
    (the first ``max_contexts`` texts of r1, and of r2), log p(t's mentions | context); the score is
    mean over r1's contexts − mean over r2's (``per_prompt`` holds r1's rows then r2's, r2 negated
    around the r2 mean so the per-prompt mean is the score).
    """
    target, r1, r2 = _concept(target), _concept(r1), _concept(r2)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r}: valid aggregates are {AGGREGATES}")
    if mode not in BEHAVIOUR_MODES:
        raise ValueError(f"behaviour mode {mode!r}: valid modes are {BEHAVIOUR_MODES}")
    if mode == "paper":
        word_token_ids(lm.tokenizer, target.mentions)
        c1, c2 = list(r1.texts[:max_contexts]), list(r2.texts[:max_contexts])
        s1 = aggregate_words(word_logprobs(lm, c1, target.mentions), aggregate)
        s2 = aggregate_words(word_logprobs(lm, c2, target.mentions), aggregate)
        per = np.r_[s1 - s2.mean(), s1.mean() - s2] if len(s1) == len(s2) else np.r_[s1 - s2.mean()]
        return BehaviouralScore(score=float(s1.mean() - s2.mean()), per_prompt=per, prompts=tuple(c1 + c2))
    prompts = fill_templates(templates, target.mentions)
    word_token_ids(lm.tokenizer, r1.words), word_token_ids(lm.tokenizer, r2.words)
    logp = word_logprobs(lm, prompts, list(r1.words) + list(r2.words))
    k = len(r1.words)
    diff = aggregate_words(logp[:, :k], aggregate) - aggregate_words(logp[:, k:], aggregate)
    return BehaviouralScore(score=float(diff.mean()), per_prompt=diff, prompts=tuple(prompts))


def spearman_ci(x, y, *, n_boot: int = 2000, seed: int = 0, mass: float = 0.95) -> tuple[float, float, int]:
    """Bootstrap percentile CI of Spearman's rho over the (x, y) pairs, and the number of finite pairs."""
    from analysis.sampling import rng

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 4:
        return float("nan"), float("nan"), n
    gen = rng(seed, "spearman-bootstrap")
    draws = [spearman(x[i], y[i]) for i in (gen.integers(0, n, n) for _ in range(n_boot))]
    draws = np.array([d for d in draws if np.isfinite(d)])
    q = 100 * (1 - mass) / 2
    lo, hi = np.percentile(draws, [q, 100 - q]) if len(draws) else (np.nan, np.nan)
    return float(lo), float(hi), n


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
    mode: str = "templates"

    def __post_init__(self) -> None:
        from analysis.bias.presets import load_presets

        known = load_presets()
        bad = [p for p in self.presets if p not in known]
        if isinstance(self.presets, str) or not self.presets or bad:
            raise ValueError(f"presets {bad or self.presets!r}: choose from {sorted(known)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {self.aggregate!r}: valid aggregates are {AGGREGATES}")
        if self.mode not in BEHAVIOUR_MODES:
            raise ValueError(f"mode {self.mode!r}: valid modes are {BEHAVIOUR_MODES}")

    def to_dict(self) -> dict:
        return {"presets": list(self.presets), "aggregate": self.aggregate, "bias": dict(self.bias), "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict) -> "BehaviourConfig":
        unknown = sorted(set(d) - {"presets", "aggregate", "bias", "mode"})
        if unknown:
            raise ValueError(f"unknown behaviour config keys {unknown}; valid keys are ['aggregate', 'bias', 'mode', 'presets']")
        return cls(presets=tuple(d.get("presets") or cls.presets), aggregate=d.get("aggregate", "logmeanexp"),
                   bias=tuple(sorted((d.get("bias") or {}).items())), mode=d.get("mode", "templates"))


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
    rho_low: float = float("nan")
    rho_high: float = float("nan")
    n: int = 0
    mode: str = "templates"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "preset": self.presets, "target": self.targets, "ref1": [r[0] for r in self.refs],
            "ref2": [r[1] for r in self.refs], "conceptual": self.conceptual, "conceptual_low": self.conceptual_low,
            "conceptual_high": self.conceptual_high, "behavioural": self.behavioural,
            "behavioural_sem": self.behavioural_sem,
        })


def behaviour_rows(lm, result, label: str, templates, aggregate: str = "logmeanexp",
                   mode: str = "templates") -> list[tuple]:
    """(label, target, refs, conceptual, ci_low, ci_high, behavioural, sem) per target of a ``BiasResult``."""
    r1, r2 = result.refs
    rows = []
    for ti, t in enumerate(result.targets):
        b = behavioural_bias(lm, t, r1, r2, templates, aggregate=aggregate, mode=mode)
        rows.append((label, t, (r1, r2), result.summary[ti], result.ci_low[ti], result.ci_high[ti], b.score, b.sem))
    return rows


def behaviour_data(rows: list[tuple], mode: str = "templates") -> BehaviourData:
    """Stack :func:`behaviour_rows` output and compute Spearman's rho with n and a bootstrap CI."""
    cols = list(zip(*rows))
    conceptual, behavioural = np.array(cols[3], float), np.array(cols[6], float)
    lo, hi, n = spearman_ci(conceptual, behavioural)
    return BehaviourData(
        presets=cols[0], targets=cols[1], refs=cols[2], conceptual=conceptual, conceptual_low=np.array(cols[4], float),
        conceptual_high=np.array(cols[5], float), behavioural=behavioural, behavioural_sem=np.array(cols[7], float),
        rho=spearman(conceptual, behavioural), rho_low=lo, rho_high=hi, n=n, mode=mode,
    )


def compute_behaviour(lm, config: BehaviourConfig, progress=None, *, results: dict | None = None) -> BehaviourData:
    """Conceptual Bias (``compute_bias``) and behavioural Bias for every preset triple.

    ``results``: already computed ``BiasResult`` per preset name, reused when given.
    """
    from analysis.bias.compute import compute_bias
    from analysis.bias.presets import load_presets, preset_config

    presets = load_presets()
    rows = []
    for pi, name in enumerate(config.presets):
        result = (results or {}).get(name)
        if result is None:
            sub = (lambda f, msg, pi=pi: progress((pi + 0.8 * f) / len(config.presets), msg)) if progress else None
            result = compute_bias(lm, preset_config(name, **dict(config.bias)), sub)
        rows += behaviour_rows(lm, result, name, load_templates(presets[name].templates), config.aggregate, config.mode)
        if progress:
            progress((pi + 1) / len(config.presets), f"behavioural bias: {name}")
    return behaviour_data(rows, config.mode)
