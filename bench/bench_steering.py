"""Steering benchmark: steered generation tokens/s vs plain transformers ``generate``; layer-search time.

Baseline: a plain ``AutoModelForCausalLM`` loaded from the converted default
model, greedy ``generate`` (KV cache) of exactly ``N_TOKENS`` new tokens from
the same prompt, timed in this run. Compared: RepScope's ``generate`` with a
steering vector on the ``hf`` path (the default: transformers ``generate`` on a
weight-sharing twin of the bridge's HF model, torch hook on the decoder layer)
and on the ``bridge`` path (``TransformerBridge.generate``, TransformerLens
hook). Runs are interleaved and the median taken, because a shared CPU's load
drifts. Layer search: building every layer's vector from the 64 training
pairs of the sentiment set plus both scores, with an empty activation cache.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch

N_TOKENS = 32
REPS = 3
PROMPT = "I went to the new restaurant downtown and"


def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.steering.generation import GenerationConfig, Steering, generate
    from analysis.gguf_convert import converted_folder
    from analysis.models import load_model
    from analysis.steering.pairs import load_pair_set
    from analysis.steering.vector import SteeringConfig, build_steering_vector, layer_search

    lm = load_model()
    pairs = load_pair_set("sentiment")
    old = os.environ.get("REPSCOPE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REPSCOPE_CACHE"] = tmp  # time the activation pass too, not a cache hit
        try:
            start = time.perf_counter()
            vec, search, acts = build_steering_vector(lm, pairs, SteeringConfig(score="paper"))
            t_build = time.perf_counter() - start
        finally:
            if old is None:
                os.environ.pop("REPSCOPE_CACHE", None)
            else:
                os.environ["REPSCOPE_CACHE"] = old
    start = time.perf_counter()
    for score in ("paper", "exact"):
        layer_search(acts, score)
    t_scores = time.perf_counter() - start
    report["layer_search"] = {
        "pairs": len(pairs.train), "layers": lm.n_layers, "chosen_layer": vec.layers[0],
        "seconds_vectors_and_search": round(t_build, 2), "seconds_scores_only_both_all_layers": round(t_scores, 3),
    }

    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32)
    hf.eval()
    ids, _ = lm.tokenize([PROMPT])

    def baseline():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_TOKENS,
                              min_new_tokens=N_TOKENS, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        assert out.shape[1] - ids.shape[1] == N_TOKENS

    steering = Steering(vec, 1.0)
    runs = {
        "transformers": baseline,
        "steered_hf_path": lambda: generate(lm, PROMPT, GenerationConfig(N_TOKENS, stop_at_eos=False, path="hf"),
                                            steering=steering),
        "unsteered_hf_path": lambda: generate(lm, PROMPT, GenerationConfig(N_TOKENS, stop_at_eos=False, path="hf")),
        "steered_bridge_path": lambda: generate(lm, PROMPT, GenerationConfig(N_TOKENS, stop_at_eos=False,
                                                                             path="bridge"), steering=steering),
    }
    for fn in runs.values():
        fn()  # warm-up (builds the twin once)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(REPS):
        order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    tps = {k: N_TOKENS / statistics.median(v) for k, v in times.items()}
    report["generation"] = {
        "new_tokens": N_TOKENS, "reps": REPS, "threads": torch.get_num_threads(),
        "tokens_per_second": {k: round(v, 2) for k, v in tps.items()},
        "ratio_steered_hf_vs_transformers": round(tps["steered_hf_path"] / tps["transformers"], 3),
        "ratio_steered_bridge_vs_transformers": round(tps["steered_bridge_path"] / tps["transformers"], 3),
        "target_ratio": 0.8,
    }
    lm.assert_clean()


if __name__ == "__main__":
    import json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    section: dict = {}
    run(section)
    print(json.dumps(section, indent=2))
    sys.exit(0)
