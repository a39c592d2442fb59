"""Token log-probabilities and next-token loss: one implementation for every view.

Tokenisation convention for (prompt, completion) pairs, used by steering,
likelihood and bias alike: the prompt is tokenised with the model's special
tokens (BOS), the completion *without* them, and the two id lists are
concatenated. The completion's tokens are therefore exactly
``tokenize(completion)``, whatever the prompt ends with; ``Encoded.boundary_merged``
flags pairs where tokenising ``prompt + completion`` as one string would
have split differently (e.g. a completion that does not start with a space).

Log-probabilities are computed as ``logit[target] - logsumexp(logits)`` in
float32, so no (positions x vocab) log-softmax copy is made: on Gemma's
262,144-token vocabulary that copy is the largest tensor of a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt+completion per example, and where the completion starts."""

    ids: tuple[tuple[int, ...], ...]
    n_prompt: np.ndarray
    n_response: np.ndarray
    boundary_merged: np.ndarray


def encode(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> Encoded:
    """Ids of ``tokenize(prompt) + tokenize(response, no special tokens)`` per example."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; give one response per prompt")
    ids, n_x, n_y, merged = [], [], [], []
    for x, y in zip(prompts, responses):
        px = list(tokenizer(x)["input_ids"])
        py = list(tokenizer(y, add_special_tokens=False)["input_ids"])
        if not py:
            raise ValueError(f"response {y!r} has no tokens; responses must be non-empty")
        ids.append(tuple(px) + tuple(py))
        n_x.append(len(px))
        n_y.append(len(py))
        merged.append(list(tokenizer(x + y)["input_ids"]) != px + py)
    return Encoded(tuple(ids), np.array(n_x), np.array(n_y), np.array(merged, dtype=bool))


def pad_right(seqs, pad_id: int, device: str = "cpu") -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"]]:
    """Right-padded ``(ids, mask)`` of ragged id lists (real tokens never attend to padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def prediction_mask(n_prompt, n_response, width: int) -> Bool[Tensor, "b p"]:
    """True at positions n_x-1 .. n_x+n_y-2: those whose next token is a response token."""
    pos = torch.arange(width)[None, :]
    start = torch.as_tensor(np.asarray(n_prompt) - 1)[:, None]
    end = start + torch.as_tensor(np.asarray(n_response))[:, None]
    return (pos >= start) & (pos < end)


def target_logprobs(logits: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]) -> Float[Tensor, "..."]:
    """log p(target) under softmax(logits), in float32 (float64 stays float64), without a full log-softmax copy.
    Keeps gradients."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    picked = logits.gather(-1, targets[..., None].long())[..., 0]
    return picked - torch.logsumexp(logits, dim=-1)


def unembedding(model):
    """``(W (vocab, d_model) view, bias (vocab,) or None, softcap or None)`` of the model's unembed."""
    hf = getattr(model, "original_model", None)
    if hf is not None:
        head = hf.get_output_embeddings()
        W, bias = head.weight, getattr(head, "bias", None)
    else:
        W, bias = model.W_U.T, getattr(model, "b_U", None)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return W.detach(), None if bias is None else bias.detach(), (float(cap) if cap and cap > 0 else None)


UNEMBED_CHUNK = 8192  # vocabulary columns per chunk of :func:`unembed_target_logprobs`


def unembed_target_logprobs(
    h: Float[Tensor, "n d"], W: Float[Tensor, "vocab d"], targets: Int[Tensor, " n"], *,
    bias: Tensor | None = None, softcap: float | None = None, chunk: int = UNEMBED_CHUNK,
    index: Int[Tensor, " n"] | None = None,
) -> Float[Tensor, " n"]:
    """log p(target) under softmax(softcap(h·Wᵀ + bias)), unembedding in vocabulary chunks.

    The (n × vocab) logits never exist: each chunk's logsumexp is folded into a
    running one while the chunk is still in cache, which on a 262,144-token
    vocabulary is what a full-vocabulary ``torch.logsumexp`` over logits in
    memory spends most of its time reading. Same numbers as
    :func:`target_logprobs` on the full logits (float32; float64 stays float64), up to rounding.
    ``index``: the row of ``h`` each target is scored at (default: target i at row i), so a row
    scored for several targets is unembedded once.
    """
    dt = torch.float64 if h.dtype == torch.float64 else torch.float32  # as target_logprobs
    h = h.to(dt)
    index = torch.arange(len(targets), device=h.device) if index is None else index
    picked = (h[index] * W[targets].to(dt)).sum(-1)
    if bias is not None:
        picked = picked + bias[targets].to(dt)
    if softcap:
        picked = softcap * torch.tanh(picked / softcap)
    lse = torch.full((h.shape[0],), -torch.inf, dtype=dt, device=h.device)
    for v0 in range(0, W.shape[0], chunk):
        z = h @ W[v0: v0 + chunk].to(dt).T
        if bias is not None:
            z += bias[v0: v0 + chunk].to(dt)
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        lse = torch.logaddexp(lse, z[:, 0] - torch.log_softmax(z, dim=-1)[:, 0])  # log_softmax: a fast CPU kernel
    return picked - lse[index]


def next_token_logprobs(logits: Float[Tensor, "b p vocab"], ids: Int[Tensor, "b p"]) -> Float[Tensor, "b p-1"]:
    """log p(ids[:, t+1] | ids[:, :t+1]) for t = 0 .. p-2."""
    return target_logprobs(logits[:, :-1], ids[:, 1:])


def nll_sum(logits: Float[Tensor, "b p vocab"], ids: Int[Tensor, "b p"],
            mask: Int[Tensor, "b p"]) -> tuple[float, int]:
    """Summed next-token NLL over real targets (``mask[:, 1:]``; BOS is never a target) and their count."""
    m = mask[:, 1:].bool()
    lp = next_token_logprobs(logits, ids)
    return float(-lp[m].sum()), int(m.sum())


def per_text_nll(logits: Float[Tensor, "b p vocab"], ids: Int[Tensor, "b p"],
                 mask: Int[Tensor, "b p"]) -> Float[np.ndarray, "b"]:
    """Mean next-token NLL (nats) of each row over its real targets."""
    m = mask[:, 1:].to(torch.float32)
    lp = next_token_logprobs(logits, ids) * m
    return (-(lp.sum(1)) / m.sum(1).clamp_min(1)).detach().double().cpu().numpy()


def completion_logprob_sums(logits: Float[Tensor, "b p vocab"], ids: Int[Tensor, "b p"],
                            n_prompt, n_response) -> Float[Tensor, "b"]:
    """Σ log p(completion tokens | prompt) per row, for ids laid out by :func:`encode` + :func:`pad_right`."""
    pred = prediction_mask(n_prompt, n_response, ids.shape[1])[:, :-1].to(logits.device)
    lp = next_token_logprobs(logits, ids)
    return (lp * pred).sum(1)
