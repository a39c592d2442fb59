"""Likelihood benchmark: CHES throughput vs a plain transformers pass, and time per DPO step.

Baseline: plain transformers ``AutoModelForCausalLM`` over the same sequences
(prompt+chosen and prompt+rejected), right-padded in batches of the same
size, with ``output_hidden_states=True``, timed in this run. CHES scoring does
the same forward passes plus the hook, log_softmax over the predicting
positions, top-k indicators and surface similarity, so the ratio shows that
overhead. DPO: seconds per update at the paper preset (RMSprop, full batch) on the
No-vs-Never pair and on the first 4 pairs of the displacement demo, on a copy
of the default model, against a plain PyTorch loop over the same tokens
(``_dpo_sections``).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from bench.timing import median_time

REPS = 2


def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.gguf_convert import converted_folder
    from analysis.likelihood.ches import LikelihoodConfig, encode, pad_right, score_pairs
    from analysis.models import load_model
    from analysis.likelihood.preferences import load_shipped

    lm = load_model()
    data = load_shipped("mixed_pairs", lm.tokenizer).subset(range(16))
    cfg = LikelihoodConfig(batch_size=8)
    pairs = list(data.pairs)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    enc = encode(lm.tokenizer, prompts, responses)
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    batches = [pad_right([enc.ids[i] for i in order[s: s + cfg.batch_size]], lm.tokenizer.pad_token_id)
               for s in range(0, len(order), cfg.batch_size)]
    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32)
    hf.eval()

    def baseline() -> None:
        with torch.no_grad():
            for ids, mask in batches:
                hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    t_ches = median_time(lambda: score_pairs(lm, data, cfg), REPS)
    t_base = median_time(baseline, REPS)
    report["ches"] = {
        "pairs": len(pairs), "sequences": len(enc.ids), "batch_size": cfg.batch_size,
        "real_tokens": int(sum(len(s) for s in enc.ids)),
        "seconds": round(t_ches, 2), "pairs_per_second": round(len(pairs) / t_ches, 2),
        "transformers_seconds": round(t_base, 2), "transformers_pairs_per_second": round(len(pairs) / t_base, 2),
        "ratio_vs_transformers": round(t_ches / t_base, 2),
    }
    del hf

    report.update(_dpo_sections(lm))


DPO_SIZES = (("dpo_step_1_pair", [0]), ("dpo_step_4_pairs", [0, 1, 2, 3]))


def _dpo_sections(lm, sizes=DPO_SIZES) -> dict:
    """Seconds per DPO update (paper preset: RMSprop, full batch) vs plain PyTorch on the same tokens.

    Baseline: a copy of the same HF model, full logits (every position through
    the 262k-wide unembedding), log_softmax, gather, the DPO loss, backward and
    an RMSprop step: the textbook loop. Ours: ``run_dpo`` (logits only at the
    predicting positions, reference from the step-0 pass). Both in this run,
    medians over the updates; ``phases`` splits our step into forward,
    backward and optimizer step.
    """
    import copy

    import torch.nn.functional as F

    from analysis.likelihood import DPOConfig, encode_responses, forward_positions, run_dpo
    from analysis.likelihood.preferences import load_shipped
    from analysis.likelihood.training import clear_hooks, release_captures
    from analysis.logprobs import pad_right

    demo = load_shipped("displacement_demo", lm.tokenizer)
    out = {}
    for label, idx in sizes:
        pairs = [demo.pairs[i] for i in idx]
        start = time.perf_counter()
        result = run_dpo(lm, demo, DPOConfig.preset("paper", steps=3, seeds=(0,)), pairs=idx)
        total = time.perf_counter() - start
        ours = result.seconds_per_step
        setup = total - result.history[-1]["seconds"]  # copy, tokenisation, memory check
        del result

        tok = lm.tokenizer
        enc_c = encode_responses(tok, [p.prompt for p in pairs], [p.chosen for p in pairs])
        enc_r = encode_responses(tok, [p.prompt for p in pairs], [p.rejected for p in pairs])
        ids, mask = pad_right(list(enc_c.ids) + list(enc_r.ids), tok.pad_token_id)
        n_x = np.concatenate([enc_c.n_prompt, enc_r.n_prompt])
        n_y = np.concatenate([enc_c.n_response, enc_r.n_response])
        with lm.locked() as model:
            release_captures(model)
            hf = copy.deepcopy(model.original_model)
        clear_hooks(hf)  # as run_dpo's copy: independent of the original
        opt = torch.optim.RMSprop(hf.parameters(), lr=1e-7)
        k = len(pairs)

        def seq_logp(logits):
            lp = logits.float().log_softmax(-1)
            rows = []
            for r in range(ids.shape[0]):
                pos = torch.arange(n_x[r] - 1, n_x[r] + n_y[r] - 1)
                rows.append(lp[r, pos, ids[r, pos + 1]].sum())
            return torch.stack(rows)

        with torch.no_grad():
            ref = seq_logp(hf(input_ids=ids, attention_mask=mask).logits)

        def plain_step():
            opt.zero_grad(set_to_none=True)
            lp = seq_logp(hf(input_ids=ids, attention_mask=mask).logits)
            z = 0.1 * ((lp[:k] - ref[:k]) - (lp[k:] - ref[k:]))
            (-F.logsigmoid(z).mean()).backward()
            opt.step()

        base = median_time(plain_step, REPS)
        cols = torch.unique(torch.cat([torch.arange(n_x[r] - 1, n_x[r] + n_y[r] - 1) for r in range(ids.shape[0])]))
        phases = {"forward": [], "backward": [], "optimizer": []}
        for _ in range(REPS):
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            logits = forward_positions(hf, ids, mask, cols)
            loss = logits.float().logsumexp(-1).mean()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            for name, t in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(t)
        del hf, opt
        out[label] = {
            "pairs": len(pairs), "tokens": int(mask.sum()),
            "seconds_per_step": round(ours, 2),
            "plain_pytorch_seconds_per_step": round(base, 2),
            "ratio_vs_plain_pytorch": round(ours / base, 2),
            "target_seconds_per_step": 2.0,
            "phases_seconds": {k2: round(float(np.median(v)), 2) for k2, v in phases.items()},
            "setup_seconds": round(setup, 2),
        }
    return out


if __name__ == "__main__":
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    section: dict = {}
    run(section)
    print(json.dumps(section, indent=2))
    sys.exit(0)
