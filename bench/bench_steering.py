"""Steering benchmark: the default ``repscope steer``, the behavioural search and the page's α sweep vs plain forwards.

Pipeline timing (issue 12/16 targets, 2 CPU cores, each as a ratio against a baseline measured in the same run):

* ``steer_default_cold``: ``run_steer`` with the CLI defaults on the shipped sentiment set (vectors, behavioural
  search over the first half of the layers, α sweep with the random-direction null band and side effects
  including the CAV projection shifts) with an empty activation cache, as a first run; figure export off
  (``--formats ''``). Target ≤ 60 s.
* ``steer_default_warm``: the same again with the activation cache that run filled (what a re-run costs).
* ``behavioural_search``: ``build_steering_vector`` with the default config (activations cached): the search
  over the first half of the layers. Target ≤ 120 s.
* ``page_sweep``: ``compute_alpha_sweep`` as the Steering page calls it (α −2..2, 16 background texts,
  4 random directions, no CAV probe). Target ≤ 20 s.
* Baseline: a plain ``AutoModelForCausalLM`` forward (full logits, no hooks) over *exactly the token batches*
  the stage ran (packed rows with their 4D masks and position ids, :mod:`analysis.steering.packing`, or padded
  rows), recorded by wrapping the scoring pass (``analysis.steering.forward._selected_logits``) and the
  activation pass (``analysis.activations.run_blocks``), timed right after the stage. ``ratio`` = stage /
  baseline: 1.0 means the stage costs what its forward passes cost in plain transformers.

Generation: steered tokens/s vs plain transformers ``generate`` (interleaved runs, median), as before.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

N_TOKENS = 32
REPS = 3
PROMPT = "I went to the new restaurant downtown and"
TARGETS = {"steer_default_cold": 60, "steer_default_warm": 60, "behavioural_search": 120, "page_sweep": 20}


def _steer_args(out: str):
    import argparse

    from analysis.commands import steer

    parser = argparse.ArgumentParser()
    steer.register(parser.add_subparsers())
    return parser.parse_args(["steer", "--pairs", "sentiment", "--out", out, "--formats", "", "--quiet"])


@contextlib.contextmanager
def recording_forwards():
    """Record ``(ids, mask)`` of every forward the steering code runs (scoring and activation passes)."""
    from analysis import activations
    from analysis.steering import forward

    recorded: list = []
    inner_sel, inner_run = forward._selected_logits, activations.run_blocks

    def sel(lm_, ids, inputs, *rest):  # a scoring pass: packed rows (4D masks, position ids) or padded rows
        real = int((ids != forward._pad_id(lm_)).sum()) if "position_ids" in inputs else int(inputs["attention_mask"].sum())
        recorded.append((ids.clone(), dict(inputs), real))
        return inner_sel(lm_, ids, inputs, *rest)

    def run(lm_, ids, mask, hook_names):
        recorded.append((ids.clone(), {"attention_mask": mask.clone()}, int(mask.sum())))
        return inner_run(lm_, ids, mask, hook_names)

    forward._selected_logits, activations.run_blocks = sel, run
    try:
        yield recorded
    finally:
        forward._selected_logits, activations.run_blocks = inner_sel, inner_run


def _plain_forward_seconds(hf, batches) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, inputs, _ in batches:
            hf(input_ids=ids, **inputs)
    return time.perf_counter() - start


def _stage(hf, fn, target: float) -> tuple[dict, object]:
    load0 = os.getloadavg()[0]
    with recording_forwards() as batches:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    base = _plain_forward_seconds(hf, batches)
    return {
        "seconds": round(seconds, 2), "baseline_seconds": round(base, 2), "ratio": round(seconds / base, 3),
        "target_seconds": target, "passes": len(batches),
        "tokens": int(sum(real for _, _, real in batches)),
        "padded_tokens": int(sum(ids.numel() for ids, _, _ in batches)),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }, result


def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.commands.steer import run_steer
    from analysis.gguf_convert import converted_folder
    from analysis.models import load_model
    from analysis.steering import compute_alpha_sweep, load_pair_set
    from analysis.steering.generation import GenerationConfig, Steering, generate
    from analysis.steering.vector import SteeringConfig, build_steering_vector

    lm = load_model(device=os.environ.get("REPSCOPE_BENCH_DEVICE"))
    pairs = load_pair_set("sentiment")
    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=lm.dtype).to(lm.device)
    hf.eval()
    stages: dict = {}
    old = os.environ.get("REPSCOPE_ACTIVATION_CACHE")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["REPSCOPE_ACTIVATION_CACHE"] = os.path.join(tmp, "activations")  # a first run: cold
            stages["steer_default_cold"], _ = _stage(
                hf, lambda: run_steer(lm, _steer_args(os.path.join(tmp, "cold"))), TARGETS["steer_default_cold"])
            stages["steer_default_warm"], _ = _stage(
                hf, lambda: run_steer(lm, _steer_args(os.path.join(tmp, "warm"))), TARGETS["steer_default_warm"])
            stages["behavioural_search"], (vec, search, _) = _stage(
                hf, lambda: build_steering_vector(lm, pairs, SteeringConfig()), TARGETS["behavioural_search"])
            stages["page_sweep"], sweep = _stage(
                hf, lambda: compute_alpha_sweep(lm, vec, pairs.test, (-2.0, -1.0, 0.0, 1.0, 2.0), layers=vec.layers),
                TARGETS["page_sweep"])
    finally:
        if old is None:
            os.environ.pop("REPSCOPE_ACTIVATION_CACHE", None)
        else:
            os.environ["REPSCOPE_ACTIVATION_CACHE"] = old
    report["pipeline"] = {
        "threads": torch.get_num_threads(), "device": str(lm.device), "pairs": len(pairs.train),
        "test_pairs": len(pairs.test), "layers_searched": len(search.layers), "strengths": list(search.strengths),
        "search_cells_run": int(np.isfinite(search.gain).sum()),
        "chosen_layer": vec.layers[0], "sweep_alphas": sweep.alphas.tolist(), "n_null": int(sweep.null_gain.shape[1]),
        "stages": stages,
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
