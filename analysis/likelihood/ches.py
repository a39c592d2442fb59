"""Response log-probabilities, CHES (Methods §4) and top-k over-optimisation indicators.

Tokenisation (the prompt/response boundary): a sequence is
``tokenizer(x)`` (BOS added) followed by ``tokenizer(y, add_special_tokens=False)``,
the convention of TRL's DPO trainer. So the prompt tokens are identical for
y+ and y-, and the response tokens are exactly the tokenisation of y alone.
``boundary_merged`` flags pairs where tokenising the string x+y would split
differently (e.g. a prompt ending in a space: ``"Answer: " + "No"``); the
numbers are then those of the concatenated ids, not of the joined string.

Positions: with n_x prompt tokens and n_y response tokens, the positions that
predict the response are n_x-1 .. n_x+n_y-2 (the last prompt token to the
second-to-last token of x+y), the paper's positions. Batches are
right-padded: under causal attention a real token never sees the padding to
its right, so batched numbers equal per-example ones (tested); padding and
prompt positions are masked out of every sum.

``h_final`` is the hidden state that multiplies W_U (HF's
``output_hidden_states[-1]``), read at ``unembed.hook_in``. Footgun: on the
TransformerBridge over Gemma, ``ln_final.hook_normalized`` is x/rms(x) BEFORE
the (1+w) RMSNorm scale and differs from it (by ~55 in absolute value on
Gemma-3-270M); ``ln_final.hook_out`` equals ``unembed.hook_in``. On a
HookedTransformer built without weight processing the same holds for
LayerNorm's w and b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.logprobs import Encoded, encode, pad_right, prediction_mask, target_logprobs
from analysis.models import LoadedModel
from analysis.likelihood.preferences import PreferenceData, PreferencePair

H_FINAL_HOOK = "unembed.hook_in"
LogitsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LikelihoodConfig:
    """``top_k`` for M_k/H_k; ``batch_size`` sequences per forward pass; ``append_eos``
    adds the EOS-predicting position (the authors' code; default: Definition 2, no EOS)."""

    top_k: int = 10
    batch_size: int = 8
    append_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer (e.g. 10), got {self.top_k!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (e.g. 8), got {self.batch_size!r}")
        if not isinstance(self.append_eos, bool):
            raise ValueError(f"append_eos must be True or False, got {self.append_eos!r}")


# ---------------------------------------------------------------- tokenisation

def encode_responses(tokenizer, prompts: list[str], responses: list[str], append_eos: bool = False) -> Encoded:
    """:func:`analysis.logprobs.encode`, with the EOS id appended to every response when ``append_eos``.

    With EOS the response has one more token, so its log-prob includes
    log p(EOS | x, y) and S(x, y) includes the position predicting EOS (what
    TRL, and so the authors' code, does); without it, Definition 2's |y| positions.
    """
    enc = encode(tokenizer, prompts, responses)
    if not append_eos:
        return enc
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("append_eos needs a tokenizer with an EOS token")
    return Encoded(tuple(s + (int(eos),) for s in enc.ids), enc.n_prompt, enc.n_response + 1, enc.boundary_merged)


# ---------------------------------------------------------------- per-position math

def topk_indicators(logp: Float[Tensor, "n vocab"], k: int) -> tuple[Float[Tensor, "n"], Float[Tensor, "n"]]:
    """M_k = sum of the k largest probabilities; H_k = entropy (nats) of those k renormalised."""
    top = logp.topk(min(k, logp.shape[-1]), dim=-1).values.exp()
    mass = top.sum(-1)
    q = top / mass[:, None]
    return mass, -torch.special.xlogy(q, q).sum(-1)


def position_stats(logits: Float[Tensor, "b p vocab"], ids: Int[Tensor, "b p"], pred: Bool[Tensor, "b p"], k: int):
    """Flattened (row-major) over predicting positions: log p(next token), M_k, H_k.

    Only the predicting positions are gathered (the vocabulary is 262k wide on
    Gemma); log-probs are ``logit - logsumexp`` (:func:`analysis.logprobs.target_logprobs`,
    float64 kept) and keep their gradient; M_k, H_k do not.
    """
    sel = pred[:, :-1]
    flat = logits[:, :-1][sel]
    flat = flat if flat.dtype == torch.float64 else flat.float()
    token_logp = target_logprobs(flat, ids[:, 1:][sel])
    with torch.no_grad():
        lse = torch.logsumexp(flat.detach(), -1, keepdim=True)
        mass, ent = topk_indicators(flat.detach().topk(min(k, flat.shape[-1]), dim=-1).values - lse, k)
    return token_logp, mass, ent


def ches(s_plus: Float[np.ndarray, "n d"], s_minus: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n"]:
    """CHES = <S+, S-> - ||S+||^2 per row (Methods §4; pass S/|y| for the length-normalised score)."""
    s_plus, s_minus = np.asarray(s_plus, np.float64), np.asarray(s_minus, np.float64)
    return np.einsum("nd,nd->n", s_plus, s_minus) - np.einsum("nd,nd->n", s_plus, s_plus)


# ---------------------------------------------------------------- model passes

@dataclass(frozen=True)
class ResponseStats:
    """Per response: total log p(y|x), per-token log-probs, |y| in tokens, S(x, y)
    (sum of h_final over the predicting positions, float64, None when not asked),
    mean M_k and H_k over the response positions, and the boundary flag."""

    logp: np.ndarray
    token_logps: tuple[np.ndarray, ...]
    n_tokens: np.ndarray
    topk_mass: np.ndarray
    topk_entropy: np.ndarray
    boundary_merged: np.ndarray
    h_sum: np.ndarray | None = None


def lm_logits_fn(lm: LoadedModel) -> LogitsFn:
    """``(ids, mask) -> logits`` for a shared model, taking its lock for each pass."""
    def run(ids, mask):
        with lm.locked() as model:
            return model(ids, attention_mask=mask)
    return run


@torch.no_grad()
def response_stats(
    lm: LoadedModel | None, prompts: list[str], responses: list[str], cfg: LikelihoodConfig = LikelihoodConfig(),
    *, logits_fn: LogitsFn | None = None, tokenizer=None, device: str = "cpu",
) -> ResponseStats:
    """Statistics of each response given its prompt, in length-sorted right-padded batches.

    With ``lm`` (a shared model), ``h_sum`` is filled from ``unembed.hook_in`` inside
    a hooked block. With ``logits_fn`` (any model sharing ``tokenizer``, e.g. a
    DPO-trained copy) only log-probs and indicators are computed.
    """
    if lm is not None:
        tokenizer, device = lm.tokenizer, lm.device
    elif logits_fn is None or tokenizer is None:
        raise ValueError("give a LoadedModel, or both logits_fn and tokenizer")
    enc = encode_responses(tokenizer, prompts, responses, cfg.append_eos)
    n = len(enc.ids)
    longest = max(len(s) for s in enc.ids)
    if lm is not None and longest > lm.n_ctx:
        raise ValueError(f"a prompt+response is {longest} tokens, more than the model's context of {lm.n_ctx}; shorten it")
    order = np.argsort([len(s) for s in enc.ids], kind="stable")
    token_logps: list = [None] * n
    mass, ent = np.zeros(n), np.zeros(n)
    h_sum = None
    for start in range(0, n, cfg.batch_size):
        idx = order[start: start + cfg.batch_size]
        ids, mask = pad_right([enc.ids[i] for i in idx], tokenizer.pad_token_id, device)
        pred = prediction_mask(enc.n_prompt[idx], enc.n_response[idx], ids.shape[1]).to(ids.device)
        if lm is not None:
            saved = {}

            def keep(act, hook):
                saved["h"] = act.detach()

            with lm.hooked([(H_FINAL_HOOK, keep)]) as model:
                logits = model(ids, attention_mask=mask)
            h = (saved["h"].double() * pred[..., None]).sum(1).cpu().numpy()
            if h_sum is None:
                h_sum = np.zeros((n, h.shape[1]))
            h_sum[idx] = h
        else:
            logits = logits_fn(ids, mask)
        lp, m, e = position_stats(logits, ids, pred, cfg.top_k)
        counts = pred[:, :-1].sum(1).tolist()
        for j, (a, b, c) in enumerate(zip(lp.split(counts), m.split(counts), e.split(counts))):
            token_logps[idx[j]] = a.cpu().numpy().astype(np.float64)
            mass[idx[j]], ent[idx[j]] = float(b.mean()), float(c.mean())
    logp = np.array([t.sum() for t in token_logps])
    return ResponseStats(logp, tuple(token_logps), enc.n_response.copy(), mass, ent, enc.boundary_merged, h_sum)


# ---------------------------------------------------------------- pairs

@dataclass(frozen=True)
class PairScores:
    """Per pair: CHES, length-normalised CHES, both responses' stats, surface similarity."""

    ches: np.ndarray
    ches_ln: np.ndarray
    chosen: ResponseStats
    rejected: ResponseStats
    jaccard: np.ndarray
    edit_distance: np.ndarray


def _pairs(data) -> list[PreferencePair]:
    pairs = list(data.pairs if isinstance(data, PreferenceData) else data)
    if not pairs:
        raise ValueError("no preference pairs given; load a .jsonl with prompt/chosen/rejected")
    return pairs


def score_pairs(lm: LoadedModel, data, cfg: LikelihoodConfig = LikelihoodConfig()) -> PairScores:
    """CHES and likelihood statistics of every pair (chosen and rejected batched together)."""
    pairs = _pairs(data)
    n = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    stats = response_stats(lm, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], cfg)
    halves = [_take(stats, slice(0, n)), _take(stats, slice(n, 2 * n))]
    sp, sm = halves[0].h_sum, halves[1].h_sum
    ches_ln = ches(sp / halves[0].n_tokens[:, None], sm / halves[1].n_tokens[:, None])
    jac, ed = surface_similarity(lm.tokenizer, [p.chosen for p in pairs], [p.rejected for p in pairs])
    return PairScores(ches(sp, sm), ches_ln, halves[0], halves[1], jac, ed)


def _take(stats: ResponseStats, sl: slice) -> ResponseStats:
    return ResponseStats(
        stats.logp[sl], stats.token_logps[sl], stats.n_tokens[sl], stats.topk_mass[sl],
        stats.topk_entropy[sl], stats.boundary_merged[sl], None if stats.h_sum is None else stats.h_sum[sl],
    )


def token_jaccard(a: list[int], b: list[int]) -> float:
    """|A ∩ B| / |A ∪ B| over the sets of token ids."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def normalized_edit_distance(a: list[int], b: list[int]) -> float:
    """Levenshtein distance over tokens divided by the longer length (0 = equal, 1 = disjoint)."""
    if not a and not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1] / max(len(a), len(b))


def surface_similarity(tokenizer, chosen: list[str], rejected: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tok = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in side] for side in (chosen, rejected)]
    jac = np.array([token_jaccard(a, b) for a, b in zip(*tok)])
    ed = np.array([normalized_edit_distance(a, b) for a, b in zip(*tok)])
    return jac, ed


def scores_frame(data, scores: PairScores) -> pd.DataFrame:
    """One row per pair (``pair`` = index in the input), sorted by CHES, highest first."""
    pairs = _pairs(data)
    frame = pd.DataFrame({
        "pair": np.arange(len(pairs)),
        "kind": [p.kind for p in pairs],
        "prompt": [p.prompt for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
        "ches": scores.ches,
        "ches_length_normalised": scores.ches_ln,
        "len_chosen": scores.chosen.n_tokens,
        "len_rejected": scores.rejected.n_tokens,
        "logp_chosen": scores.chosen.logp,
        "logp_rejected": scores.rejected.logp,
        "token_jaccard": scores.jaccard,
        "edit_distance": scores.edit_distance,
        "topk_mass_chosen": scores.chosen.topk_mass,
        "topk_entropy_chosen": scores.chosen.topk_entropy,
        "boundary_merged": scores.chosen.boundary_merged | scores.rejected.boundary_merged,
    })
    return frame.sort_values("ches", ascending=False, kind="stable").reset_index(drop=True)


def rank_pairs(lm: LoadedModel, data, cfg: LikelihoodConfig = LikelihoodConfig()) -> pd.DataFrame:
    """Score every pair and return :func:`scores_frame` (highest CHES first)."""
    return scores_frame(data, score_pairs(lm, data, cfg))

