"""The trainable copy's forward pass, restricted to the positions that predict a response.

``forward_positions(module, ids, mask, cols)`` returns logits only at columns
``cols`` (b x len(cols) x vocab): an HF causal LM gets ``logits_to_keep=cols``
(its own lm_head and any final soft-capping apply); a HookedTransformer stops
its residual before ``ln_final`` and unembeds the kept columns (both are
per-position maps, so this equals slicing the full logits). The unembedding
of every other position is skipped: on Gemma-3-270M (262k x 640) it is the
largest matmul of the pass and the largest tensor of its backward.

``forward_logprobs`` turns that into per-row sums of log p(response token)
(with their gradient), the full next-token log-distribution at the first
response position (detached), and the mean M_k / H_k per row.

Memory: :func:`memory_check` refuses (``DPOMemoryError``) before a copy is
made when weights + gradients + optimizer states do not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.likelihood.ches import topk_indicators
from analysis.logprobs import pad_right, prediction_mask, target_logprobs
from analysis.models import LoadedModel

PositionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class DPOMemoryError(RuntimeError):
    """Not enough memory to train a copy of the model; the message says what fits."""


# TransformerBridge blocks wire these torch pre-hooks lazily (on their first forward); each closes
# over a weak proxy of the ORIGINAL block's modules, which a deep copy keeps (functions are not copied).
BRIDGE_CAPTURE_HOOKS = ("_capture_pre_ln1", "_capture_mlp_in")


def release_captures(module: torch.nn.Module) -> None:
    """Drop the residual a bridge attention keeps between its block's pre-hook and its forward.

    Transient (every block forward clears it), but one left over from a forward run with
    autograd on is a non-leaf tensor, which ``copy.deepcopy`` refuses, and it holds that graph.
    """
    for m in module.modules():
        if getattr(m, "_captured_pre_ln_residual", None) is not None:
            m._captured_pre_ln_residual = None


def clear_hooks(module: torch.nn.Module) -> None:
    """Make a deep copy of a hooked model independent of the original.

    Removes every hook from its HookPoints (they belong to the original's callers), and
    the bridge's capture pre-hooks (``BRIDGE_CAPTURE_HOOKS``): copied, they would keep
    writing the copy's residuals, autograd graph included, into the ORIGINAL's attention
    modules. The copy's blocks re-wire their own capture hooks on their first forward.
    """
    from transformer_lens.hook_points import HookPoint

    for m in module.modules():
        if isinstance(m, HookPoint):
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        for key, fn in list(m._forward_pre_hooks.items()):
            if getattr(fn, "__name__", "") in BRIDGE_CAPTURE_HOOKS:
                del m._forward_pre_hooks[key]
        if hasattr(m, "_capture_hooks_wired"):
            m._capture_hook_handles = []  # the copied handles point at the original's hook dicts
            m._capture_hooks_wired = False
    release_captures(module)


def sparse_input_embedding(module: torch.nn.Module) -> bool:
    """Make the input-embedding lookup of an HF model send a sparse gradient (the rows it read).

    The same gradient, far less work: a dense embedding backward zero-fills a
    vocab x d_model buffer (262k x 640 on Gemma) and adds it to the tied
    weight's gradient; the sparse one touches the looked-up rows only. The
    dense lm_head gradient still makes the parameter's gradient dense, so
    every optimizer sees what it would without this. Returns whether it applied.
    """
    get, out = getattr(module, "get_input_embeddings", None), getattr(module, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    head = out() if callable(out) else None
    # Only for tied weights: an untied embedding would get a sparse gradient alone, which
    # RMSprop and Adam refuse.
    if isinstance(emb, torch.nn.Embedding) and head is not None and head.weight is emb.weight:
        emb.sparse = True
        return True
    return False


def forward_positions(module: torch.nn.Module, ids: Int[Tensor, "b p"], mask: Int[Tensor, "b p"],
                      cols: Int[Tensor, "c"]) -> Float[Tensor, "b c vocab"]:
    """Logits of ``module`` at columns ``cols`` only (see the module docstring)."""
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        return module(input_ids=ids, attention_mask=mask, logits_to_keep=cols).logits
    cfg = getattr(module, "cfg", None)
    if cfg is not None and hasattr(module, "ln_final") and hasattr(module, "unembed"):
        resid = module(ids, attention_mask=mask, stop_at_layer=cfg.n_layers)
        return module.unembed(module.ln_final(resid[:, cols]))
    return module(ids, attention_mask=mask)[:, cols]


@dataclass
class PassOutput:
    seq_logp: Float[Tensor, "rows"]            # sum of log p(response tokens) per row, with gradient
    first_logp: Float[Tensor, "rows vocab"]    # log p(. | prompt) at the first response position, detached
    mass: np.ndarray                           # mean M_k per row
    entropy: np.ndarray                        # mean H_k per row


def _wide(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def forward_logprobs(fn: PositionFn, seqs, n_x, n_y, pad_id: int, device, top_k: int) -> PassOutput:
    """One right-padded batch of prompt+response ids through ``fn`` (a :data:`PositionFn`)."""
    ids, mask = pad_right(seqs, pad_id, device)
    pred = prediction_mask(n_x, n_y, ids.shape[1]).to(ids.device)
    cols = pred.any(0).nonzero()[:, 0]
    logits = fn(ids, mask, cols)
    sel = pred[:, cols]
    flat = _wide(logits[sel])
    token_lp = target_logprobs(flat, ids[:, cols + 1][sel])
    row_of = sel.nonzero()[:, 0]
    rows = ids.shape[0]
    seq_logp = torch.zeros(rows, dtype=token_lp.dtype, device=token_lp.device).index_add(0, row_of, token_lp)
    with torch.no_grad():
        first_col = torch.searchsorted(cols, torch.as_tensor(np.asarray(n_x) - 1, device=cols.device))
        first = _wide(logits[torch.arange(rows, device=logits.device), first_col].detach())
        first_logp = first - torch.logsumexp(first, -1, keepdim=True)
        lse = torch.logsumexp(flat.detach(), -1, keepdim=True)
        mass, ent = topk_indicators(flat.detach().topk(min(top_k, flat.shape[-1]), dim=-1).values - lse, top_k)
        counts = torch.zeros(rows, dtype=mass.dtype, device=mass.device).index_add(0, row_of, torch.ones_like(mass))
        mass_row = torch.zeros_like(counts).index_add(0, row_of, mass) / counts
        ent_row = torch.zeros_like(counts).index_add(0, row_of, ent) / counts
    return PassOutput(seq_logp, first_logp, mass_row.double().cpu().numpy(), ent_row.double().cpu().numpy())


@dataclass(frozen=True)
class MemoryEstimate:
    n_params: int
    bytes_per_param: int
    need_bytes: float
    available_bytes: float
    max_params: int

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.available_bytes


def estimate_memory(lm: LoadedModel, factor: float = 4.0) -> MemoryEstimate:
    """Memory a trainable copy needs (params x bytes x factor) vs what is available now."""
    import psutil

    params = list(lm.model.parameters())
    n = sum(p.numel() for p in params)
    per = params[0].element_size()
    if str(lm.device).startswith("cuda"):
        available = float(torch.cuda.mem_get_info(torch.device(lm.device))[0])
    else:
        available = float(psutil.virtual_memory().available)
    return MemoryEstimate(n, per, n * per * factor, available, int(available / (per * factor)))


def memory_check(lm: LoadedModel, factor: float = 4.0) -> MemoryEstimate:
    est = estimate_memory(lm, factor)
    if not est.fits:
        raise DPOMemoryError(
            f"DPO on a copy of {lm.name} needs about {est.need_bytes / 1e9:.1f} GB "
            f"({est.n_params / 1e6:.0f}M parameters x {est.bytes_per_param} bytes x {factor:g} for weights, "
            f"gradients and optimizer states) but {est.available_bytes / 1e9:.1f} GB is available on {lm.device}. "
            f"Models up to about {est.max_params / 1e6:.0f}M parameters fit; free memory, pick SGD or RMSprop "
            "(fewer optimizer states than Adam), or pick a smaller model."
        )
    return est
