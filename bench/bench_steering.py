"""Steering benchmark: the default ``repscope steer`` and the behavioural search vs plain forwards.

Pipeline timing (issue 12 targets, as ratios against a baseline measured in the same run):

* ``steer_default``: ``run_steer`` with the CLI defaults on the shipped sentiment set (vectors with an
  empty activation cache, behavioural search over the first half of the layers, α sweep with the
  random-direction null and side effects; CAV shifts off here, they are the concepts package's cost).
* ``behavioural_search``: the search alone (first half of the layers, default strengths), activations cached.
* Baseline: a plain ``AutoModelForCausalLM`` forward (full logits, no hooks) over *exactly the token
  batches* the pipeline ran (recorded by wrapping ``analysis.steering.forward._selected_logits``)
  plus the 160 pair texts the vectors are read from. ``ratio`` = pipeline / baseline: 1.0 would mean
  the pipeline costs what its forwards cost. Absolute targets (2 CPU cores): ≤ 60 s and ≤ 120 s.

Generation: steered tokens/s vs plain transformers ``generate`` (interleaved runs, median), as before.
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


def _steer_args(out: str):
    import argparse

    from analysis.commands import steer

    parser = argparse.ArgumentParser()
    steer.register(parser.add_subparsers())
    return parser.parse_args(["steer", "--pairs", "sentiment", "--out", out, "--formats", "", "--no-cav-shifts",
                              "--quiet"])


def _plain_forward_seconds(hf, batches) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            hf(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - start


def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.commands.steer import run_steer
    from analysis.gguf_convert import converted_folder
    from analysis.models import load_model
    from analysis.steering import forward, load_pair_set
    from analysis.steering.generation import GenerationConfig, Steering, generate
    from analysis.steering.vector import SteeringConfig, build_steering_vector

    lm = load_model()
    pairs = load_pair_set("sentiment")
    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32)
    hf.eval()
    recorded: list = []
    inner = forward._selected_logits

    def recording(lm_, ids, mask, sel_r, sel_c, hooks):
        recorded.append((ids.clone(), mask.clone()))
        return inner(lm_, ids, mask, sel_r, sel_c, hooks)

    texts = [p.positive_text for p in pairs.train] + [p.negative_text for p in pairs.train]
    pair_batches = [lm.tokenize(texts[i:i + 16]) for i in range(0, len(texts), 16)]
    old = os.environ.get("REPSCOPE_CACHE")
    forward._selected_logits = recording
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["REPSCOPE_CACHE"] = tmp  # time the activation pass too, not a cache hit
            start = time.perf_counter()
            run_steer(lm, _steer_args(os.path.join(tmp, "out")))
            t_steer = time.perf_counter() - start
            steer_batches = list(recorded)
            recorded.clear()
            start = time.perf_counter()
            vec, search, _ = build_steering_vector(lm, pairs, SteeringConfig())  # activations now cached
            t_search = time.perf_counter() - start
            search_batches = list(recorded)
    finally:
        forward._selected_logits = inner
        if old is None:
            os.environ.pop("REPSCOPE_CACHE", None)
        else:
            os.environ["REPSCOPE_CACHE"] = old
    base_steer = _plain_forward_seconds(hf, steer_batches + pair_batches)
    base_search = _plain_forward_seconds(hf, search_batches)
    n_tok = lambda bs: int(sum(int(m.sum()) for _, m in bs))  # noqa: E731
    report["pipeline"] = {
        "threads": torch.get_num_threads(), "pairs": len(pairs.train), "test_pairs": len(pairs.test),
        "layers_searched": len(search.layers), "strengths": list(search.strengths), "chosen_layer": vec.layers[0],
        "steer_default_seconds": round(t_steer, 2), "steer_tokens": n_tok(steer_batches + pair_batches),
        "steer_baseline_seconds": round(base_steer, 2), "steer_ratio": round(t_steer / base_steer, 3),
        "search_seconds": round(t_search, 2), "search_tokens": n_tok(search_batches),
        "search_baseline_seconds": round(base_search, 2), "search_ratio": round(t_search / base_search, 3),
        "target_seconds": {"steer_default": 60, "behavioural_search": 120},
        "load_average": os.getloadavg()[0],
    }

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
