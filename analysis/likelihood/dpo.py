"""DPO on a COPY of the model, to watch likelihood displacement as the paper ran it (Methods §4).

``run_dpo(lm, data, DPOConfig.preset("paper"), pairs=[0])`` runs one training
run per seed. Each run deep-copies the model under ``lm`` (the HF model
under a TransformerBridge, or the whole HookedTransformer, under its lock),
optionally fine-tunes it on y+ (SFT), then trains it with DPO:
``-log sigmoid(beta * ((log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))))``
averaged over the step's pairs (Rafailov et al. 2023; the authors' loss). The
reference log-probs are those of the run's model before its first DPO update
(the initial model, or the SFT model), taken from the step-0 pass itself. The
shared model is never trained.

Recorded per run and step t (the model after t updates; the forward pass
before update t+1, so row 0 is the initial model, as the authors record):
mean log p(y+), log p(y-) and their change, the DPO loss and margin, M_k/H_k,
and at the FIRST response position (the last prompt token): log p of the
first token of y+ and y-, the probability of each watched token, and the
``discover`` tokens whose probability rose most since step 0 (and those
whose log-probability rose most), with the rank of y+ in both orderings.
With several pairs in a run the first-position numbers are means over its
pairs and the ranking is of the mean change (the paper runs one prompt per run).

Speed: the unembedding (262k x 640 on Gemma-3-270M) is applied only at the
positions that predict a response token (HF ``logits_to_keep``; on a
HookedTransformer the residual stops before ``ln_final``); log-probs use
``logit - logsumexp`` with no log-softmax copy; chosen and rejected share one
batch, and the training pass doubles as the step's measurement under full batch.

Stopping: ``progress`` (and ``on_step``) may raise :class:`analysis.progress.Stopped`;
the run stops before the next update and every finished step is kept
(``stopped_early``, ``partial``).

Footguns:
- The copy costs params x bytes x (2 SGD, 3 RMSprop, 4 Adam) on top of the shared
  model; :func:`check_memory` refuses before copying when that does not fit.
- Trajectories of token probabilities keep one float32 vocabulary row per
  step and run until the end (thinned to stay under 512 MB).
- The copy stays in eval mode (no dropout), so full-batch runs are deterministic.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from analysis.likelihood.ches import LogitsFn, _pairs, encode_responses
from analysis.likelihood.dpo_results import DPOResult, DPORun, _token, gainers_frame
from analysis.likelihood.dpo_config import OPTIMIZERS, DPOConfig
from analysis.likelihood.training import (
    PositionFn, clear_hooks, forward_logprobs, forward_positions, memory_check, release_captures,
    sparse_input_embedding,
)
from analysis.models import LoadedModel
from analysis.progress import Progress, Stopped, report
from analysis.sampling import rng, subsample_indices

StepCallback = Callable[[dict], Any]
SNAPSHOT_BYTES = 512 * 2**20
nan = float("nan")


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


def trainable_copy(lm: LoadedModel) -> tuple[torch.nn.Module, PositionFn]:
    """A deep copy of the trainable module under ``lm`` (taken under its lock) and its position function."""
    with lm.locked() as model:
        source = getattr(model, "original_model", None)
        release_captures(model)
        policy = copy.deepcopy(source if source is not None else model)
    clear_hooks(policy)
    policy.eval()
    for p in policy.parameters():
        p.requires_grad_(True)
    sparse_input_embedding(policy)
    return policy, lambda ids, mask, cols: forward_positions(policy, ids, mask, cols)


def check_memory(lm: LoadedModel, factor: float = 4.0):
    """Refuse (``DPOMemoryError``) before copying when a trainable copy does not fit."""
    return memory_check(lm, factor)


def run_plan(n_selected: int, cfg: DPOConfig) -> list[tuple[int, list[int]]]:
    """(seed, pair positions within the selection) per run; ``pairs_per_run`` draws are seeded per seed."""
    return [(s, subsample_indices(n_selected, cfg.pairs_per_run, s, "dpo-pairs").tolist()) for s in cfg.seeds]


def run_dpo(
    lm: LoadedModel, data, cfg: DPOConfig = DPOConfig(), *, pairs: list[int] | None = None,
    progress: Progress | None = None, on_step: StepCallback | None = None, keep_model: bool = False,
) -> DPOResult:
    """DPO runs (one per seed) on copies of ``lm`` over ``pairs`` (indices into ``data``; None = all)."""
    all_pairs = _pairs(data)
    selected = list(range(len(all_pairs))) if pairs is None else [int(i) for i in pairs]
    if not selected or any(not 0 <= i < len(all_pairs) for i in selected):
        raise ValueError(f"pairs must be indices in 0..{len(all_pairs) - 1}, got {pairs!r}")
    tok = lm.tokenizer
    watch_ids = watch_token_ids(tok, cfg.watch_tokens)
    if cfg.append_eos and tok.eos_token_id is None:
        raise ValueError("append_eos needs a tokenizer with an EOS token")
    check_memory(lm, cfg.memory_factor)
    plan = [(seed, [selected[j] for j in idx]) for seed, idx in run_plan(len(selected), cfg)]
    result = DPOResult(cfg, n_pairs=len(selected), tokenizer=tok)
    per_run = cfg.sft_epochs * _n_batches(len(plan[0][1]), cfg) + cfg.steps + 1
    total = per_run * len(plan)
    done = 0
    snapshots: dict[int, list[tuple[int, np.ndarray]]] = {}
    stride = max(1, math.ceil(len(plan) * (cfg.steps + 1) * len(tok) * 4 / SNAPSHOT_BYTES))
    update_seconds: list[float] = []
    try:
        for seed, run_pairs in plan:
            run = DPORun(seed, run_pairs)
            result.runs.append(run)
            snaps = snapshots.setdefault(seed, [])
            torch.manual_seed(seed)
            policy, fn = trainable_copy(lm)
            result.module, result.policy = policy, None
            enc_c = encode_responses(tok, [all_pairs[i].prompt for i in run_pairs], [all_pairs[i].chosen for i in run_pairs], cfg.append_eos)
            enc_r = encode_responses(tok, [all_pairs[i].prompt for i in run_pairs], [all_pairs[i].rejected for i in run_pairs], cfg.append_eos)
            run.first_tokens = tuple(sorted({e.ids[j][e.n_prompt[j]] for e in (enc_c, enc_r) for j in range(len(run_pairs))}))
            order = _batch_order(len(run_pairs), cfg, seed)
            ctor = OPTIMIZERS[cfg.optimizer][0]
            for epoch in range(cfg.sft_epochs):
                opt = ctor(policy.parameters(), lr=cfg.sft_rate) if epoch == 0 else opt
                for b in order(epoch):
                    run.sft_loss.append(_sft_step(fn, enc_c, b, cfg, lm.device, tok.pad_token_id, opt))
                    done += 1
                    report(progress, done / total, f"seed {seed}: SFT step {len(run.sft_loss)}")
            opt = ctor(policy.parameters(), lr=cfg.lr)
            state = _RunState()
            start = time.perf_counter()
            for step in range(cfg.steps + 1):
                train = step < cfg.steps
                t0 = time.perf_counter()
                batch = _minibatch(order, step) if train and cfg.minibatch else None
                opt.zero_grad(set_to_none=True)
                row, first_p, first_lp = _measure_and_train(
                    fn, enc_c, enc_r, state, cfg, lm.device, tok.pad_token_id, train, batch)
                disc, extra = _discover(first_p, first_lp, state, enc_c, enc_r, watch_ids, cfg, result, seed, step)
                row = {"seed": seed, "step": step, **row, **extra, "seconds": time.perf_counter() - start}
                run.history.append(row)
                run.discovery.extend(disc)
                if step % stride == 0 or step == cfg.steps:
                    snaps.append((step, first_p.astype(np.float32)))
                run.final_p_change = first_p - state.p0
                run.final_logp_change = first_lp - state.lp0
                done += 1
                # Callbacks run before the update: a stop keeps the model that the last row describes.
                if on_step is not None and on_step(dict(row)) is False:
                    raise Stopped("stopped by the step callback")
                report(progress, done / total, f"seed {seed}: DPO step {step}/{cfg.steps}")
                if train:
                    opt.step()
                    update_seconds.append(time.perf_counter() - t0)
            if keep_model:
                result.policy = _full_logits(policy)
            else:
                result.module = None
                del policy, opt
    except Stopped:
        result.stopped_early = True
        if keep_model and result.module is not None:
            result.policy = _full_logits(result.module)
        elif not keep_model:
            result.module = None
    finally:
        result.seconds_per_step = float(np.median(update_seconds)) if update_seconds else float("nan")
        result.trajectories = _trajectories(result, snapshots, watch_ids)
    return result


@dataclass
class _RunState:
    """Per run: reference log-probs (filled chunk by chunk by the step-0 pass) and step-0 first-position p, log p."""

    ref_c: torch.Tensor | None = None
    ref_r: torch.Tensor | None = None
    ref_ready: bool = False
    p0: np.ndarray | None = None
    lp0: np.ndarray | None = None


def _n_batches(n: int, cfg: DPOConfig) -> int:
    return 1 if not cfg.minibatch else math.ceil(n / cfg.minibatch)


def _batch_order(n: int, cfg: DPOConfig, seed: int) -> Callable[[int], list[list[int]]]:
    """Mini-batches of epoch e: a seeded shuffle split into ``minibatch``-sized pieces (full batch: one)."""
    def epoch(e: int) -> list[list[int]]:
        if not cfg.minibatch:
            return [list(range(n))]
        perm = rng(seed, "dpo-epoch", e).permutation(n).tolist()
        return [perm[s: s + cfg.minibatch] for s in range(0, n, cfg.minibatch)]
    return epoch


def _minibatch(order, step: int) -> list[int]:
    """The mini-batch of update ``step``: epochs follow one another, each reshuffled."""
    per_epoch = len(order(0))
    return order(step // per_epoch)[step % per_epoch]


def _full_logits(policy: torch.nn.Module) -> LogitsFn:
    @torch.no_grad()
    def fn(ids, mask):
        return forward_positions(policy, ids, mask, torch.arange(ids.shape[1], device=ids.device))
    return fn


def _pass(fn: PositionFn, enc_c, enc_r, idx: list[int], cfg: DPOConfig, device, pad_id):
    """Chosen and rejected of pairs ``idx`` in one batch: summed log-probs and first-position log-probs."""
    seqs = [enc_c.ids[i] for i in idx] + [enc_r.ids[i] for i in idx]
    n_x = np.concatenate([enc_c.n_prompt[idx], enc_r.n_prompt[idx]])
    n_y = np.concatenate([enc_c.n_response[idx], enc_r.n_response[idx]])
    return forward_logprobs(fn, seqs, n_x, n_y, pad_id, device, cfg.top_k)


def _measure_and_train(fn, enc_c, enc_r, state: _RunState, cfg: DPOConfig, device, pad_id, train: bool, batch):
    """All pairs measured (row, mean first-position p and log p); gradients of the DPO loss when ``train``.

    Full batch: the measuring pass is the training pass. Mini-batch: a no-grad
    measuring pass over all pairs, then a training pass over ``batch``.
    """
    n = len(enc_c.ids)
    lp_c, lp_r = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    first = None
    ind = np.zeros((4, n))
    grad_here = train and not cfg.minibatch
    for s in range(0, n, cfg.chunk_size):
        idx = list(range(s, min(s + cfg.chunk_size, n)))
        k = len(idx)
        with torch.set_grad_enabled(grad_here):
            out = _pass(fn, enc_c, enc_r, idx, cfg, device, pad_id)
            c, r = out.seq_logp[:k], out.seq_logp[k:]
            if not state.ref_ready:
                _fill_ref(state, c, r, n, s)
            if grad_here:
                z = cfg.beta * ((c - state.ref_c[idx].to(c)) - (r - state.ref_r[idx].to(r)))
                (-F.logsigmoid(z).sum() / n).backward()
        lp_c[idx], lp_r[idx] = c.detach().double().cpu(), r.detach().double().cpu()
        lp_first = out.first_logp[:k].double()  # the prompt is shared: rows k: hold the same distribution
        part = lp_first.sum(0), lp_first.exp().sum(0)
        first = part if first is None else (first[0] + part[0], first[1] + part[1])
        ind[:, idx] = np.stack([out.mass[:k], out.entropy[:k], out.mass[k:], out.entropy[k:]])
    if train and cfg.minibatch:
        b = list(batch)
        for s in range(0, len(b), cfg.chunk_size):
            idx = b[s: s + cfg.chunk_size]
            k = len(idx)
            out = _pass(fn, enc_c, enc_r, idx, cfg, device, pad_id)
            c, r = out.seq_logp[:k], out.seq_logp[k:]
            z = cfg.beta * ((c - state.ref_c[idx].to(c)) - (r - state.ref_r[idx].to(r)))
            (-F.logsigmoid(z).sum() / len(b)).backward()
    with torch.no_grad():
        z = cfg.beta * ((lp_c - state.ref_c) - (lp_r - state.ref_r))
        row = {
            "loss": float(-F.logsigmoid(z).mean()),
            "logp_chosen": float(lp_c.mean()),
            "logp_rejected": float(lp_r.mean()),
            "margin": float(z.mean()),
            "logp_chosen_change": float((lp_c - state.ref_c).mean()),
            "logp_rejected_change": float((lp_r - state.ref_r).mean()),
            "topk_mass_chosen": float(ind[0].mean()),
            "topk_entropy_chosen": float(ind[1].mean()),
            "topk_mass_rejected": float(ind[2].mean()),
            "topk_entropy_rejected": float(ind[3].mean()),
        }
    return row, (first[1] / n).cpu().numpy(), (first[0] / n).cpu().numpy()


def _fill_ref(state: _RunState, c, r, n: int, s: int) -> None:
    """Step 0: the reference log-probs are this pass's (the run's model before any DPO update)."""
    if state.ref_c is None:
        state.ref_c, state.ref_r = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    k = len(c)
    state.ref_c[s: s + k] = c.detach().double().cpu()
    state.ref_r[s: s + k] = r.detach().double().cpu()
    state.ref_ready = s + k >= n


def _discover(p, lp, state: _RunState, enc_c, enc_r, watch_ids, cfg: DPOConfig, result: DPOResult, seed: int, step: int):
    """Top gainers at the first response position since step 0, rank of y+, first-token log-probs, watches."""
    if state.p0 is None:
        state.p0, state.lp0 = p.copy(), lp.copy()
    dp, dl = p - state.p0, lp - state.lp0
    plus = np.array([ids[n] for ids, n in zip(enc_c.ids, enc_c.n_prompt)])
    minus = np.array([ids[n] for ids, n in zip(enc_r.ids, enc_r.n_prompt)])
    rows = []
    for order, gain in (() if step == 0 else (("p", dp), ("logp", dl))):
        top = np.argsort(-gain, kind="stable")[: cfg.discover]
        for rank, t in enumerate(top, start=1):
            rows.append({"seed": seed, "step": step, "order": order, "rank": rank, "token_id": int(t),
                         "token": _token(result, t), "p": float(p[t]), "p_change": float(dp[t]),
                         "logp_change": float(dl[t])})
    extra = {
        "logp_first_chosen": float(lp[plus].mean()),
        "logp_first_rejected": float(lp[minus].mean()),
        "p_first_chosen": float(p[plus].mean()),
        "p_first_rejected": float(p[minus].mean()),
        # Nothing has changed at step 0, so no ranking exists yet.
        "rank_chosen_by_p_gain": nan if step == 0 else float(np.mean([1 + int((dp > dp[t]).sum()) for t in plus])),
        "rank_chosen_by_logp_gain": nan if step == 0 else float(np.mean([1 + int((dl > dl[t]).sum()) for t in plus])),
        "top_gainer": "" if step == 0 else _token(result, int(np.argmax(dp))),
        "top_gainer_p_change": nan if step == 0 else float(dp.max()),
    }
    for name, t in zip(cfg.watch_tokens, watch_ids):
        extra[f"p_watch[{name}]"] = float(p[t])
    return rows, extra


def _trajectories(result: DPOResult, snapshots: dict[int, list[tuple[int, np.ndarray]]], watch_ids) -> list[dict]:
    """Probability of the tracked tokens per run and recorded step: the top gainers over runs,
    each run's top gainers, the watched tokens, and each run's first y+ and y- tokens."""
    if not snapshots or not any(snapshots.values()):
        return []
    tracked = set(int(t) for t in gainers_frame(result)["token_id"]) | set(int(t) for t in watch_ids)
    for run in result.runs:
        tracked |= set(int(t) for t in run.first_tokens)
        if run.final_p_change is not None:
            tracked |= set(np.argsort(-run.final_p_change, kind="stable")[: result.config.discover].tolist())
    rows = []
    for run in result.runs:
        snaps = snapshots.get(run.seed, [])
        if not snaps:
            continue
        p0 = snaps[0][1]
        for step, p in snaps:
            for t in sorted(tracked):
                rows.append({"seed": run.seed, "step": step, "token_id": t, "token": _token(result, t),
                             "p": float(p[t]), "p_change": float(p[t] - p0[t])})
    return rows


def _sft_step(fn, enc_c, batch: list[int], cfg: DPOConfig, device, pad_id, opt) -> float:
    """One SFT update: cross-entropy on y+ (token mean per response, mean over the batch)."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, len(batch), cfg.chunk_size):
        idx = batch[s: s + cfg.chunk_size]
        out = forward_logprobs(fn, [enc_c.ids[i] for i in idx], enc_c.n_prompt[idx], enc_c.n_response[idx],
                               pad_id, device, cfg.top_k)
        loss = -(out.seq_logp / torch.as_tensor(enc_c.n_response[idx], device=out.seq_logp.device)).sum() / len(batch)
        loss.backward()
        total += float(loss.detach())
    opt.step()
    return total
