"""The nnsight extraction backend against the bridge, on the tiny HF Gemma-3 model.

nnsight is the optional extra ``remote``; ``make setup`` installs it, so these run
in CI. Tolerance 1e-5 absolute (the issue's bar): both paths run the same HF
modules in float32 on activations of magnitude < 10, so they agree to a few ulps
(measured ~1.5e-6; the bridge wraps the modules, nnsight hooks their outputs).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from analysis.activations import extract

pytest.importorskip("nnsight")

from analysis.scale import NnsightError, extract_nnsight, module_path  # noqa: E402
from analysis.scale.nnsight_backend import check_remote  # noqa: E402

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
         "blocks.2.hook_resid_post", "ln_final.hook_normalized"]
TEXTS = ["the cat is good", "a dog", "paris is the capital of france .", "yes no maybe", "she went to the day"]


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_local_trace_equals_the_bridge(tiny_bridge_lm, pooling):
    lm, hf = tiny_bridge_lm
    want = extract(lm, TEXTS, HOOKS, pooling=pooling, batch_size=2, use_cache=False)
    got = extract_nnsight(hf, TEXTS, HOOKS, pooling=pooling, batch_size=2, tokenizer=lm.tokenizer)
    for name in HOOKS:
        assert np.abs(want.values[name]).max() < 10
        np.testing.assert_allclose(got.values[name], want.values[name], rtol=0, atol=1e-5, err_msg=name)
    assert np.array_equal(got.n_tokens, want.n_tokens)


def test_a_block_offloaded_to_disk_gives_the_same_residuals(tiny_bridge_lm, tmp_path):
    # The bridge refuses disk/meta placements; accelerate's offload (weights on meta,
    # loaded from disk per forward) runs through nnsight.
    lm, _ = tiny_bridge_lm
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                 "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    got = extract_nnsight(lm.name, TEXTS, HOOKS, batch_size=2, device_map=placement, offload_folder=str(tmp_path),
                          dispatch=True)
    want = extract(lm, TEXTS, HOOKS, batch_size=2, use_cache=False)
    for name in HOOKS:
        np.testing.assert_allclose(got.values[name], want.values[name], rtol=0, atol=1e-5, err_msg=name)


def test_hook_names_map_to_module_paths(tiny_bridge_lm):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, gemma = tiny_bridge_lm
    assert module_path("blocks.2.hook_resid_post", gemma) == ("model.layers.2", "output")
    assert module_path("blocks.0.hook_resid_pre", gemma) == ("model.layers.0", "input")
    assert module_path("ln_final.hook_normalized", gemma) == ("model.norm", "output")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert module_path("blocks.1.hook_resid_post", gpt2) == ("transformer.h.1", "output")
    assert module_path("ln_final.hook_normalized", gpt2) == ("transformer.ln_f", "output")
    with pytest.raises(NnsightError, match="layers are 0..1"):
        module_path("blocks.2.hook_resid_post", gpt2)
    with pytest.raises(NnsightError, match="maps blocks.L.hook_resid_post"):
        module_path("blocks.0.attn.hook_pattern", gpt2)


def test_remote_without_a_key_fails_fast(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    start = time.perf_counter()
    with pytest.raises(NnsightError, match="needs an NDIF API key"):
        extract_nnsight("meta-llama/Llama-3.1-70B", TEXTS, HOOKS, remote=True)
    assert time.perf_counter() - start < 5


def test_remote_offline_fails_fast_naming_the_host(monkeypatch):
    # A closed loopback port stands in for an unreachable NDIF host.
    start = time.perf_counter()
    with pytest.raises(NnsightError, match="127.0.0.1:9 is unreachable"):
        check_remote(api_key="test-key", host="http://127.0.0.1:9", timeout=2.0)
    assert time.perf_counter() - start < 5
