"""A few DPO steps on a COPY of the model, to watch likelihood displacement (METHODS §4).

``run_dpo(lm, pairs, DPOConfig(...))`` deep-copies the HF model under the
bridge (``lm.model.original_model``; a HookedTransformer is copied whole),
trains the copy with full-batch DPO and Adam, and records per step the mean
log p(y+), log p(y-), the implicit reward margin, the DPO loss, the
probability of watched tokens as the next token after each prompt, and the
top-k indicators M_k/H_k. The shared model is never trained: the reference
log-probs are computed once from it, under its lock, before copying.

DPO loss per pair (Rafailov et al. 2023):
``-log sigmoid(beta * ((log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))))``,
averaged over the pairs; ``margin`` is the bracket times beta (TRL's
"rewards/margins").

Row t of the history describes the model after t optimiser steps (row 0 is
the untouched copy, so its loss is log 2 and its margin 0). A step callback
receives each row; returning False stops the run before the next update, and
everything computed so far is kept (``stopped_early``).

Footguns:
- The copy costs params x bytes x ~4 (weights, gradients, two Adam moments)
  on top of the shared model; :func:`check_memory` refuses before copying
  when that does not fit, and says how large a model would.
- Deep-copying the bridge's HF model also copies its HookPoints; any hook on
  them is removed from the copy (hooks can only exist inside another caller's
  locked block, and the copy is taken under the lock).
- The copy stays in eval mode (no dropout; Gemma has none anyway), so steps
  are deterministic.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from analysis.likelihood.ches import (
    LikelihoodConfig, LogitsFn, _pairs, encode, lm_logits_fn, pad_right, position_stats,
    prediction_mask, response_stats,
)
from analysis.models import LoadedModel

StepCallback = Callable[[dict], "bool | None"]


class DPOMemoryError(RuntimeError):
    """Not enough memory to train a copy of the model; the message says what fits."""


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    lr: float = 1e-5
    steps: int = 10
    watch_tokens: tuple[str, ...] = (" Yes",)
    top_k: int = 10
    batch_size: int = 8  # pairs per forward/backward chunk (gradients accumulate: full-batch DPO)
    memory_factor: float = 4.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (the paper uses 0.1), got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (e.g. 1e-5), got {self.lr}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be an integer in 1..1000, got {self.steps!r}")
        if not isinstance(self.watch_tokens, tuple) or not all(isinstance(t, str) and t for t in self.watch_tokens):
            raise ValueError(f"watch_tokens must be a tuple of non-empty strings such as (' Yes',), got {self.watch_tokens!r}")
        LikelihoodConfig(top_k=self.top_k, batch_size=self.batch_size)
        if not self.memory_factor >= 1:
            raise ValueError(f"memory_factor must be >= 1 (4 = weights, grads, 2 Adam states), got {self.memory_factor}")


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


def check_memory(lm: LoadedModel, factor: float = 4.0) -> MemoryEstimate:
    est = estimate_memory(lm, factor)
    if not est.fits:
        raise DPOMemoryError(
            f"DPO on a copy of {lm.name} needs about {est.need_bytes / 1e9:.1f} GB "
            f"({est.n_params / 1e6:.0f}M parameters x {est.bytes_per_param} bytes x {factor:g} for weights, "
            f"gradients and Adam states) but {est.available_bytes / 1e9:.1f} GB is available on {lm.device}. "
            f"Models up to about {est.max_params / 1e6:.0f}M parameters fit; free memory or pick a smaller model."
        )
    return est


def watch_token_ids(tokenizer, tokens: tuple[str, ...]) -> list[int]:
    """One id per watched token; a string that is not exactly one token is refused."""
    ids = []
    for t in tokens:
        got = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(got) != 1:
            pieces = tokenizer.convert_ids_to_tokens(got)
            raise ValueError(
                f"watch token {t!r} is {len(got)} tokens {pieces}, not one; watch single tokens "
                "(mind the leading space: ' Yes' and 'Yes' differ)"
            )
        ids.append(got[0])
    return ids


def trainable_copy(lm: LoadedModel) -> tuple[torch.nn.Module, LogitsFn]:
    """A deep copy of the model under ``lm`` (taken under its lock) and its logits function."""
    from transformer_lens.hook_points import HookPoint

    with lm.locked() as model:
        source = getattr(model, "original_model", None)
        policy = copy.deepcopy(source if source is not None else model)
    for module in policy.modules():
        if isinstance(module, HookPoint):
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()
            module._backward_hooks.clear()
    policy.eval()
    for p in policy.parameters():
        p.requires_grad_(True)
    if source is not None:
        return policy, lambda ids, mask: policy(input_ids=ids, attention_mask=mask).logits
    return policy, lambda ids, mask: policy(ids, attention_mask=mask)


@dataclass
class DPOResult:
    config: DPOConfig
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    n_pairs: int = 0
    policy: LogitsFn | None = None  # the trained copy's logits function, when kept
    seconds_per_step: float = float("nan")


def history_frame(result: DPOResult) -> pd.DataFrame:
    return pd.DataFrame(result.history)


def run_dpo(
    lm: LoadedModel, data, cfg: DPOConfig = DPOConfig(), *,
    callback: StepCallback | None = None, keep_model: bool = False,
) -> DPOResult:
    """Train a copy of ``lm`` with DPO on ``data`` (pairs) for ``cfg.steps`` steps."""
    pairs = _pairs(data)
    tok = lm.tokenizer
    watch_ids = watch_token_ids(tok, cfg.watch_tokens)
    check_memory(lm, cfg.memory_factor)
    prompts = [p.prompt for p in pairs]
    n = len(pairs)
    lcfg = LikelihoodConfig(top_k=cfg.top_k, batch_size=2 * cfg.batch_size)
    ref = response_stats(
        None, prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], lcfg,
        logits_fn=lm_logits_fn(lm), tokenizer=tok, device=lm.device,
    ).logp
    ref_c, ref_r = torch.tensor(ref[:n]), torch.tensor(ref[n:])
    enc_c, enc_r = encode(tok, prompts, [p.chosen for p in pairs]), encode(tok, prompts, [p.rejected for p in pairs])
    policy, logits_fn = trainable_copy(lm)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    result = DPOResult(cfg, n_pairs=n)
    start = time.perf_counter()
    try:
        for step in range(cfg.steps + 1):
            train = step < cfg.steps
            opt.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(train):
                row = _pass(logits_fn, enc_c, enc_r, ref_c, ref_r, watch_ids, cfg, lm.device, tok.pad_token_id, train)
            row = {"step": step, **row, "seconds": time.perf_counter() - start}
            result.history.append(row)
            if callback is not None and callback(dict(row)) is False:
                result.stopped_early = step < cfg.steps
                break
            if train:
                opt.step()
    finally:
        steps_done = max(len(result.history) - 1, 1)
        result.seconds_per_step = (time.perf_counter() - start) / steps_done
        if keep_model:
            result.policy = torch.no_grad()(logits_fn)
        else:
            del policy, opt
    return result


def _pass(logits_fn, enc_c, enc_r, ref_c, ref_r, watch_ids, cfg, device, pad_id, train) -> dict:
    """One pass over all pairs in chunks; accumulates gradients of the mean loss when ``train``."""
    n = len(enc_c.ids)
    lp_c, lp_r = torch.zeros(n), torch.zeros(n)
    watch = torch.zeros(n, len(watch_ids))
    ind = {"c": [[], []], "r": [[], []]}
    for s in range(0, n, cfg.batch_size):
        sl = list(range(s, min(s + cfg.batch_size, n)))
        seqs = [enc_c.ids[i] for i in sl] + [enc_r.ids[i] for i in sl]
        n_x = np.concatenate([enc_c.n_prompt[sl], enc_r.n_prompt[sl]])
        n_y = np.concatenate([enc_c.n_response[sl], enc_r.n_response[sl]])
        ids, mask = pad_right(seqs, pad_id, device)
        pred = prediction_mask(n_x, n_y, ids.shape[1]).to(ids.device)
        logits = logits_fn(ids, mask)
        tok_lp, mass, ent = position_stats(logits, ids, pred, cfg.top_k)
        counts = pred[:, :-1].sum(1).tolist()
        seq_lp = torch.stack([t.sum() for t in tok_lp.split(counts)]).cpu()
        k = len(sl)
        c, r = seq_lp[:k], seq_lp[k:]
        z = cfg.beta * ((c - ref_c[sl]) - (r - ref_r[sl]))
        if train:
            (-F.logsigmoid(z).sum() / n).backward()
        lp_c[sl], lp_r[sl] = c.detach(), r.detach()
        with torch.no_grad():
            rows = torch.arange(k, device=logits.device)
            nxt = logits[rows, torch.as_tensor(enc_c.n_prompt[sl] - 1, device=logits.device)].float().softmax(-1)
            watch[sl] = nxt[:, watch_ids].cpu()
            for j, (m, e) in enumerate(zip(mass.split(counts), ent.split(counts))):
                side = ind["c"] if j < k else ind["r"]
                side[0].append(float(m.mean()))
                side[1].append(float(e.mean()))
        del logits
    with torch.no_grad():
        z = cfg.beta * ((lp_c - ref_c) - (lp_r - ref_r))
        row = {
            "loss": float(-F.logsigmoid(z).mean()),
            "logp_chosen": float(lp_c.mean()),
            "logp_rejected": float(lp_r.mean()),
            "margin": float(z.mean()),
            "logp_chosen_change": float((lp_c - ref_c).mean()),
            "logp_rejected_change": float((lp_r - ref_r).mean()),
            "topk_mass_chosen": float(np.mean(ind["c"][0])),
            "topk_entropy_chosen": float(np.mean(ind["c"][1])),
            "topk_mass_rejected": float(np.mean(ind["r"][0])),
            "topk_entropy_rejected": float(np.mean(ind["r"][1])),
        }
        for name, col in zip(cfg.watch_tokens, watch.T):
            row[f"p_watch[{name}]"] = float(col.mean())
    return row


def compare_indicators(
    models: dict[str, LogitsFn], tokenizer, data, *, top_k: int = 10, batch_size: int = 8, device: str = "cpu",
) -> pd.DataFrame:
    """Per model and response: log p, mean M_k and H_k, for models sharing ``tokenizer``.

    ``models`` maps a label to ``(ids, mask) -> logits``: :func:`lm_logits_fn` for a
    shared model, ``DPOResult.policy`` for a trained copy.
    """
    if len(models) < 1:
        raise ValueError("give at least one model, e.g. {'before': lm_logits_fn(lm), 'after': result.policy}")
    pairs = _pairs(data)
    cfg = LikelihoodConfig(top_k=top_k, batch_size=batch_size)
    rows = []
    for label, fn in models.items():
        for side in ("chosen", "rejected"):
            st = response_stats(
                None, [p.prompt for p in pairs], [getattr(p, side) for p in pairs], cfg,
                logits_fn=fn, tokenizer=tokenizer, device=device,
            )
            for i in range(len(pairs)):
                rows.append({
                    "model": label, "response": side, "pair": i, "logp": st.logp[i],
                    "topk_mass": st.topk_mass[i], "topk_entropy": st.topk_entropy[i], "n_tokens": int(st.n_tokens[i]),
                })
    return pd.DataFrame(rows)


def config_dict(cfg: DPOConfig) -> dict:
    d = asdict(cfg)
    d["watch_tokens"] = list(cfg.watch_tokens)
    return d
