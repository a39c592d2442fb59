"""Live inspection of one prompt: residual norms, logit lens, attention, next token.

``inspect_prompt(lm, text)`` runs ONE forward pass (under the model lock) with
a names filter that keeps only ``blocks.{l}.hook_resid_post`` and
``blocks.{l}.attn.hook_pattern``, and returns a :class:`PromptInspection`.
``score_prompts(lm, texts)`` gives the mean next-token cross-entropy per prompt.

Logit lens (nostalgebraist 2020): ``log_softmax(unembed(ln_final(resid_post[l])))``,
with the model's OWN final norm module (weights included; for Gemma the
bridge's RMSNorm applies ``1 + w``). At the last layer it equals the model's
log-probabilities exactly, which the tests check.

Footguns:
- Positions include BOS (position 0). The observed next token at position p is
  token p + 1, so observed-token arrays have ``n_tokens - 1`` columns.
- Ranks are 1-based: rank 1 is the lens' top-1 token.
- The lens over a 262k vocabulary is ONE pass over vocabulary chunks with the
  softmax statistics fused (:func:`fused_lens`); its floor is the plain
  (rows × d_model) @ (d_model × vocab) matmul, which the bench measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from analysis.activations import resid_hook, run_blocks
from analysis.logprobs import per_text_nll, unembedding
from analysis.models import LoadedModel
from analysis.recipes import check_config_keys

METRICS = ("prob", "rank")
MAX_TOP_K = 100
LENS_VOCAB_CHUNK = 8192  # vocabulary columns per lens chunk: rows x 8192 float32 stays in cache


def pattern_hook(layer: int) -> str:
    """TransformerLens name of the attention pattern of ``layer`` (same on the bridge)."""
    return f"blocks.{layer}.attn.hook_pattern"


@dataclass(frozen=True)
class PromptInspection:
    """Everything the live-inspection views show for one prompt (``T`` tokens, BOS included).

    ``resid_norms``: (layers, T) ‖resid_post[l]‖ per token.
    ``lens_top_ids/tokens/probs``: (layers, T, k) logit-lens top-k per layer and position.
    ``observed_prob/rank``: (layers, T-1) lens probability and 1-based rank of token p+1.
    ``attention``: (layers, heads, T, T), rows (queries) sum to 1.
    ``next_*``: (k,) top-k of the model's real next-token distribution after the prompt.
    The lens fields are None until :func:`add_lens` (see ``inspect_prompt(lens=False)``).
    """

    model: str
    text: str
    tokens: tuple[str, ...]
    token_ids: Int[np.ndarray, "T"]
    resid_norms: Float[np.ndarray, "layers T"]
    lens_top_ids: Int[np.ndarray, "layers T k"]
    lens_top_tokens: np.ndarray  # str, (layers, T, k)
    lens_top_probs: Float[np.ndarray, "layers T k"]
    observed_prob: Float[np.ndarray, "layers Tm1"]
    observed_rank: Int[np.ndarray, "layers Tm1"]
    attention: Float[np.ndarray, "layers heads T T"]
    next_ids: Int[np.ndarray, "k"]
    next_tokens: tuple[str, ...]
    next_probs: Float[np.ndarray, "k"]
    resid: Float[np.ndarray, "layers T d_model"] | None = None  # kept only until the lens is added

    @property
    def has_lens(self) -> bool:
        return self.lens_top_ids is not None

    @property
    def n_layers(self) -> int:
        return int(self.resid_norms.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attention.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def labels(self) -> list[str]:
        """Unique axis labels ``"i·token"`` (Plotly merges equal category names)."""
        return [f"{i}·{display_token(t)}" for i, t in enumerate(self.tokens)]


def display_token(token: str) -> str:
    """A token made visible: newlines and tabs escaped, other control or unprintable
    characters (which fonts draw as empty boxes) as ``\\xNN``/``\\uNNNN``; an
    all-space token as ``␣`` per space."""
    token = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if token and not token.strip(" "):
        return "␣" * len(token)
    return "".join(c if c.isprintable() or c == " " else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in token)


@dataclass(frozen=True)
class InspectConfig:
    """The settings of one inspection figure (also its recipe ``config``)."""

    text: str
    top_k: int = 10
    layer: int | None = None
    head: int | None = None
    metric: str = "prob"
    log_norms: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text is empty; give a prompt of at least one word")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k {self.top_k!r}: must be an integer from 1 to {MAX_TOP_K}")
        for name in ("layer", "head"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} {value!r}: must be a non-negative integer or None")
        if not isinstance(self.log_norms, bool):
            raise ValueError(f"log_norms {self.log_norms!r}: must be true or false")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: valid metrics are {METRICS}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "InspectConfig":
        check_config_keys(cls, config, "inspection")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_tokens(lm: LoadedModel, text: str) -> int:
    """Tokens of ``text`` as the model sees it (BOS included)."""
    return len(lm.tokenizer(text)["input_ids"])


def _check_prompt(lm: LoadedModel, text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt is empty; type at least one word")
    n = count_tokens(lm, text)
    if n > lm.n_ctx:
        raise ValueError(
            f"the prompt is {n} tokens long (BOS included), more than {lm.name}'s context of "
            f"{lm.n_ctx} tokens; shorten it or split it into several prompts"
        )
    if n < 2:
        raise ValueError("the prompt has no tokens after BOS; type at least one word")


def _decoder(lm: LoadedModel) -> Callable[[int], str]:
    """Token id -> text; a byte-fallback piece that decodes to nothing or to U+FFFD
    (one byte of a multi-byte character) shows as its vocabulary name, e.g. ``<0xE2>``."""
    memo: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in memo:
            text = lm.tokenizer.decode([i])
            if not text or "\ufffd" in text:
                piece = lm.tokenizer.convert_ids_to_tokens(i)
                text = piece if isinstance(piece, str) and piece else f"<id {i}>"
            memo[i] = text
        return memo[i]

    return decode


@torch.inference_mode()
def inspect_prompt(lm: LoadedModel, text: str, top_k: int = 10, *, lens: bool = True) -> PromptInspection:
    """Inspect ``text`` with one hooked forward pass; see :class:`PromptInspection`.

    ``lens=False`` returns the cheap parts (norms, attention, next token) with the
    lens fields None and the residuals kept in ``resid``; :func:`add_lens` adds the
    lens later without a second forward pass (the page shows the cheap figures first).
    Raises ValueError for an empty prompt or one longer than the model's context.
    """
    InspectConfig(text=text, top_k=top_k)
    _check_prompt(lm, text)
    ids, mask = lm.tokenize([text])
    n_layers = lm.n_layers
    # the pass ends at the final norm: only the last position is unembedded (the next-token
    # bars); the lens later unembeds the rest from the kept residuals, in one fused pass
    cache = run_blocks(lm, ids, mask, [resid_hook(l) for l in range(n_layers)] + [pattern_hook(l) for l in range(n_layers)])
    # .to(lm.device): with a model split over devices, each layer's cache sits on that layer's device.
    resid = torch.stack([cache[resid_hook(l)][0].to(lm.device) for l in range(n_layers)])  # (L, T, d)
    attention = torch.stack([cache[pattern_hook(l)][0].to(lm.device) for l in range(n_layers)])
    with lm.locked() as model:
        next_lp = lens_log_probs(model, resid[-1, -1:].to(next(iter(model.parameters())).device))[0].to(lm.device)
    next_lp, next_ids = next_lp.topk(top_k)
    decode = _decoder(lm)
    token_ids = ids[0].cpu().numpy()
    insp = PromptInspection(
        model=lm.name,
        text=text,
        tokens=tuple(decode(int(i)) for i in token_ids),
        token_ids=token_ids,
        resid_norms=resid.float().norm(dim=-1).cpu().numpy(),
        lens_top_ids=None,
        lens_top_tokens=None,
        lens_top_probs=None,
        observed_prob=None,
        observed_rank=None,
        attention=attention.float().cpu().numpy(),
        next_ids=next_ids.cpu().numpy(),
        next_tokens=tuple(decode(int(i)) for i in next_ids),
        next_probs=next_lp.exp().cpu().numpy(),
        resid=resid.float().cpu().numpy(),
    )
    return add_lens(lm, insp, top_k) if lens else insp


@torch.inference_mode()
def add_lens(lm: LoadedModel, insp: PromptInspection, top_k: int | None = None) -> PromptInspection:
    """``insp`` with the logit lens filled in from its kept residuals (no forward pass)."""
    if insp.resid is None:
        raise ValueError("this inspection has no residuals kept; run inspect_prompt(..., lens=False) first")
    k = len(insp.next_ids) if top_k is None else top_k
    with lm.locked() as model:
        dev = next(iter(model.parameters())).device
        resid = torch.as_tensor(insp.resid, device=dev)
        lens = _logit_lens(model, resid, torch.as_tensor(insp.token_ids, device=dev), k)
    decode = _decoder(lm)
    return replace(
        insp, lens_top_ids=lens["top_ids"], lens_top_probs=lens["top_probs"],
        lens_top_tokens=np.vectorize(decode, otypes=[object])(lens["top_ids"]).astype(str),
        observed_prob=lens["observed_prob"], observed_rank=lens["observed_rank"], resid=None,
    )


def lens_log_probs(model, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
    """Logit lens: log_softmax(unembed(ln_final(resid))), the model's own modules (and its
    final-logit softcap, if it has one, as in the forward pass)."""
    shape = resid.shape
    flat = resid.reshape(1, -1, shape[-1])
    logits = model.unembed(model.ln_final(flat)).float()
    cap = unembedding(model)[2]
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return torch.log_softmax(logits, dim=-1).reshape(*shape[:-1], -1)


def fused_lens(
    h: Float[torch.Tensor, "rows d_model"],
    W: Float[torch.Tensor, "vocab d_model"],
    nxt: Int[torch.Tensor, " rows"],
    top_k: int,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int = LENS_VOCAB_CHUNK,
) -> dict[str, torch.Tensor]:
    """Softmax statistics of ``h @ Wᵀ`` in ONE pass over vocabulary chunks.

    Per row: top-k probabilities and ids, the probability of token ``nxt`` and its
    1-based rank (1 + #tokens with a larger logit), from a running logsumexp
    (combined per chunk with logaddexp); the (rows × vocab) logits never exist at once
    and nothing is unembedded twice.
    """
    rows = h.shape[0]
    vocab = W.shape[0]
    dev = h.device
    h = h.float()
    run_lse = torch.full((rows,), -torch.inf, device=dev)
    top_v = torch.full((rows, top_k), -torch.inf, device=dev)
    top_i = torch.zeros((rows, top_k), dtype=torch.long, device=dev)
    # the observed token's logit, for the rank threshold (its own column is excluded below)
    obs = (h * W[nxt].float()).sum(-1)
    if bias is not None:
        obs = obs + bias[nxt].float()
    if softcap:
        obs = softcap * torch.tanh(obs / softcap)
    obs_z = obs.clone()
    greater = torch.zeros(rows, dtype=torch.long, device=dev)
    ar = torch.arange(rows, device=dev)
    for v0 in range(0, vocab, chunk):
        z = h @ W[v0: v0 + chunk].float().T
        if bias is not None:
            z += bias[v0: v0 + chunk].float()
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        width = z.shape[1]
        # the chunk's logsumexp through log_softmax (a vectorised kernel, ~5x torch.logsumexp on CPU)
        chunk_lse = z[:, 0] - torch.log_softmax(z, dim=-1)[:, 0]
        run_lse = torch.logaddexp(run_lse, chunk_lse)
        above = torch.gt(z, obs[:, None])
        inside = (nxt >= v0) & (nxt < v0 + width)
        col = (nxt - v0).clamp(0, width - 1)
        greater += above.sum(-1, dtype=torch.int64) - (above[ar, col] & inside).long()
        obs_z = torch.where(inside, z[ar, col], obs_z)
        v, i = z.topk(min(top_k, width), dim=-1)
        top_v, pick = torch.cat([top_v, v], -1).topk(top_k, dim=-1)
        top_i = torch.cat([top_i, i + v0], -1).gather(-1, pick)
    lse = run_lse
    return {"top_probs": torch.exp(top_v - lse[:, None]), "top_ids": top_i,
            "observed_prob": torch.exp(obs_z - lse), "observed_rank": greater + 1}


def _logit_lens(model, resid: torch.Tensor, ids: torch.Tensor, top_k: int) -> dict[str, np.ndarray]:
    n_layers, n_tok, d_model = resid.shape
    rows = resid.reshape(-1, d_model)
    positions = torch.arange(n_layers * n_tok, device=rows.device) % n_tok
    # Observed next token per row; the last position has none (a placeholder, dropped below).
    nxt = torch.cat([ids[1:], ids[:1]])[positions]
    h = model.ln_final(rows[None])[0]
    W, bias, cap = unembedding(model)
    out = fused_lens(h, W, nxt, top_k, bias=bias, softcap=cap)
    shape = (n_layers, n_tok)
    return {
        "top_ids": out["top_ids"].reshape(*shape, top_k).cpu().numpy(),
        "top_probs": out["top_probs"].reshape(*shape, top_k).cpu().numpy(),
        "observed_prob": out["observed_prob"].reshape(shape)[:, :-1].cpu().numpy(),
        "observed_rank": out["observed_rank"].reshape(shape)[:, :-1].cpu().numpy(),
    }


def check_prompts(lm: LoadedModel, texts: list[str]) -> None:
    """Raise ValueError naming the first (1-based) prompt that is empty or too long."""
    for i, text in enumerate(texts):
        try:
            _check_prompt(lm, text)
        except ValueError as err:
            raise ValueError(f"prompt {i + 1}: {err}") from None


@torch.inference_mode()
def score_prompts(
    lm: LoadedModel,
    texts: list[str],
    batch_size: int = 4,
    progress: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """Mean next-token cross-entropy (nats) per prompt: columns ``text, n_tokens, loss``.

    ``n_tokens`` includes BOS; the loss averages over the ``n_tokens - 1``
    predictions of real tokens, so padding never counts (right padding also
    leaves real tokens' logits unchanged under causal attention).
    """
    if not texts:
        raise ValueError("no prompts given; give at least one prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    check_prompts(lm, texts)
    lengths = [count_tokens(lm, t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    losses = np.zeros(len(texts), dtype=np.float64)
    for start in range(0, len(texts), batch_size):
        idx = order[start: start + batch_size]
        ids, mask = lm.tokenize([texts[i] for i in idx])
        with lm.locked() as model:
            logits = model(ids, attention_mask=mask, return_type="logits")
        losses[idx] = per_text_nll(logits, ids, mask)
        if progress:
            progress(min(1.0, (start + len(idx)) / len(texts)))
    return pd.DataFrame({"text": list(texts), "n_tokens": lengths, "loss": losses})


# ---------------------------------------------------------------- tables behind the figures

def residual_norms_frame(insp: PromptInspection) -> pd.DataFrame:
    layers, positions = np.meshgrid(range(insp.n_layers), range(insp.n_tokens), indexing="ij")
    return pd.DataFrame({
        "layer": layers.ravel(), "position": positions.ravel(),
        "token": [insp.tokens[p] for p in positions.ravel()], "norm": insp.resid_norms.ravel(),
    })


def logit_lens_frame(insp: PromptInspection) -> pd.DataFrame:
    n = insp.n_tokens - 1
    layers, positions = np.meshgrid(range(insp.n_layers), range(n), indexing="ij")
    l, p = layers.ravel(), positions.ravel()
    return pd.DataFrame({
        "layer": l, "position": p,
        "input_token": [insp.tokens[i] for i in p],
        "observed_next": [insp.tokens[i + 1] for i in p],
        "observed_prob": insp.observed_prob.ravel(), "observed_rank": insp.observed_rank.ravel(),
        "top1_token": insp.lens_top_tokens[l, p, 0], "top1_prob": insp.lens_top_probs[l, p, 0],
    })


def attention_frame(insp: PromptInspection, layer: int, head: int) -> pd.DataFrame:
    check_layer_head(insp, layer, head)
    q, k = np.meshgrid(range(insp.n_tokens), range(insp.n_tokens), indexing="ij")
    return pd.DataFrame({
        "layer": layer, "head": head, "query_position": q.ravel(), "key_position": k.ravel(),
        "query_token": [insp.tokens[i] for i in q.ravel()], "key_token": [insp.tokens[i] for i in k.ravel()],
        "weight": insp.attention[layer, head].ravel(),
    })


def next_token_frame(insp: PromptInspection) -> pd.DataFrame:
    return pd.DataFrame({
        "rank": np.arange(1, len(insp.next_ids) + 1), "token_id": insp.next_ids,
        "token": list(insp.next_tokens), "prob": insp.next_probs,
    })


def lens_top_k_frame(insp: PromptInspection, position: int) -> pd.DataFrame:
    """Top-k lens tokens at one position: one row per layer, one column per rank (``token (prob)``).

    Layers are rows so the table grows downwards, not past the page's width.
    """
    if not 0 <= position < insp.n_tokens:
        raise ValueError(f"position {position}: valid positions are 0..{insp.n_tokens - 1}")
    k = insp.lens_top_ids.shape[-1]
    return pd.DataFrame(
        {f"#{r + 1}": [f"{display_token(insp.lens_top_tokens[l, position, r])} "
                       f"({insp.lens_top_probs[l, position, r]:.3f})" for l in range(insp.n_layers)]
         for r in range(k)},
        index=pd.Index(range(insp.n_layers), name="layer"),
    )


def check_layer_head(insp: PromptInspection, layer: int, head: int) -> None:
    if not 0 <= layer < insp.n_layers:
        raise ValueError(f"layer {layer}: valid layers are 0..{insp.n_layers - 1}")
    if not 0 <= head < insp.n_heads:
        raise ValueError(f"head {head}: valid heads are 0..{insp.n_heads - 1}")
