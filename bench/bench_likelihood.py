"""Likelihood benchmark: CHES throughput vs a plain transformers pass, and time per DPO step.

Baseline: plain transformers ``AutoModelForCausalLM`` over the same sequences
(prompt+chosen and prompt+rejected), right-padded in batches of the same
size, with ``output_hidden_states=True``, timed in this run. CHES scoring does
the same forward passes plus the hook, log_softmax over the predicting
positions, top-k indicators and surface similarity, so the ratio shows that
overhead. DPO: seconds per full-batch step on the No-vs-Never pair and on the
first 4 pairs of the displacement demo, on a copy of the default model
(``setup_seconds``: reference log-probs and the deep copy).
"""

from __future__ import annotations

import sys
import time

import torch

from bench.timing import median_time

REPS = 2




def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.likelihood.dpo import DPOConfig, run_dpo
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

    demo = load_shipped("displacement_demo", lm.tokenizer)
    for label, subset in (("dpo_step_1_pair", demo.subset([0])), ("dpo_step_4_pairs", demo.subset(range(4)))):
        start = time.perf_counter()
        result = run_dpo(lm, subset, DPOConfig(steps=2, lr=1e-5))
        rows = result.history
        report[label] = {
            "pairs": len(subset),
            # row 0: forward+backward; row 1: Adam update + forward+backward = one full training step
            "seconds_per_step": round(rows[1]["seconds"] - rows[0]["seconds"], 2),
            "setup_seconds": round(time.perf_counter() - start - rows[-1]["seconds"], 2),
        }


if __name__ == "__main__":
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    section: dict = {}
    run(section)
    print(json.dumps(section, indent=2))
    sys.exit(0)
