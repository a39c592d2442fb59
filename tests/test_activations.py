"""Activation extraction against independent oracles (per-text runs, plain transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.activations import extract, resid_hook, resid_hooks, stop_layer_for

TEXTS = ["the cat is happy", "a dog", "the food was very good and the service was great !", "no"]


def _single_run(lm, text, name):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(ids, names_filter=[name])
    return cache[name][0].numpy()


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
def test_batched_pooling_equals_single_text_runs(tiny_lm, pooling):
    names = resid_hooks(tiny_lm)
    acts = extract(tiny_lm, TEXTS, names, pooling=pooling, batch_size=3, use_cache=False)
    for name in names:
        for i, text in enumerate(TEXTS):
            ref = _single_run(tiny_lm, text, name)
            want = {"last": ref[-1], "mean": ref.mean(0), "all": ref}[pooling]
            np.testing.assert_allclose(acts.text(name, i), want, rtol=1e-5, atol=1e-5)
    assert list(acts.n_tokens) == [len(t.split()) + 1 for t in TEXTS]


def test_stop_at_layer_rule():
    assert stop_layer_for(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], 4) == 2
    assert stop_layer_for(["blocks.3.hook_resid_post"], 4) == 4
    assert stop_layer_for(["ln_final.hook_normalized"], 4) is None


def test_disk_cache_roundtrip_and_key(tiny_lm):
    names = [resid_hook(1)]
    first = extract(tiny_lm, TEXTS, names)
    again = extract(tiny_lm, TEXTS, names)
    np.testing.assert_array_equal(first.values[names[0]], again.values[names[0]])
    other = extract(tiny_lm, TEXTS[:2], names)
    assert other.values[names[0]].shape == (2, tiny_lm.d_model)


def test_bad_requests_are_explained(tiny_lm):
    with pytest.raises(ValueError, match="valid poolings"):
        extract(tiny_lm, TEXTS, [resid_hook(0)], pooling="max")
    with pytest.raises(ValueError, match="unknown hook"):
        extract(tiny_lm, TEXTS, ["blocks.99.hook_resid_post"])
    with pytest.raises(ValueError, match="at least one text"):
        extract(tiny_lm, [], [resid_hook(0)])
    with pytest.raises(ValueError, match="context"):
        extract(tiny_lm, ["the " * 100], [resid_hook(0)], use_cache=False)


@pytest.mark.real_model
def test_real_model_matches_transformers_hidden_states(real_lm):
    """Oracle: plain transformers (eager attention), each text alone, output_hidden_states."""
    from transformers import AutoModelForCausalLM

    from analysis.gguf_convert import converted_folder

    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32, attn_implementation="eager")
    texts = ["Hello world", "The capital of France is Paris, and it is lovely in spring.", "A"]
    layers = [0, 6, real_lm.n_layers - 1]
    acts = extract(real_lm, texts, resid_hooks(real_lm, layers), pooling="last", use_cache=False)
    worst_abs, worst_rel = 0.0, 0.0
    with torch.no_grad():
        for i, text in enumerate(texts):
            hs = hf(**real_lm.tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            for l in layers[:-1]:  # HF's last hidden state is after the final norm
                ref = hs[l + 1][0, -1].numpy()
                got = acts.values[resid_hook(l)][i]
                worst_abs = max(worst_abs, float(np.abs(got - ref).max()))
                worst_rel = max(worst_rel, float(np.linalg.norm(got - ref) / np.linalg.norm(ref)))
    print(f"max abs diff {worst_abs:.3g}, max relative diff {worst_rel:.3g}")
    # Padded batches reorder float sums (different shapes); relative error stays ~1e-5.
    assert worst_rel < 1e-4


def test_bridge_on_tiny_gemma3_matches_transformers(tiny_bridge_lm):
    """Loading a local HF folder by path; oracle: the same HF model's hidden states per text."""
    lm, hf = tiny_bridge_lm
    texts = ["the cat is happy", "a dog", "the food was very good and the service was great !"]
    layers = list(range(lm.n_layers - 1))  # HF's last hidden state is post-norm
    acts = extract(lm, texts, resid_hooks(lm, layers), pooling="all", use_cache=False)
    worst = 0.0
    with torch.no_grad():
        for i, text in enumerate(texts):
            hs = hf(**lm.tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            for l in layers:
                worst = max(worst, float(np.abs(acts.text(resid_hook(l), i) - hs[l + 1][0].numpy()).max()))
    print(f"tiny Gemma-3 bridge vs transformers: max abs diff {worst:.3g}")
    assert worst < 1e-5


def test_last_layer_without_unembedding_equals_full_run(tiny_bridge_lm):
    """The bridge's last-layer cut (exception at ln_final) gives the full run's values
    and leaves the model clean and unchanged."""
    lm, _ = tiny_bridge_lm
    texts = ["the cat is happy", "a dog"]
    ids, mask = lm.tokenize(texts)
    name = resid_hook(lm.n_layers - 1)
    with torch.no_grad():
        logits_before, cache = lm.model.run_with_cache(ids, attention_mask=mask, names_filter=[name])
    acts = extract(lm, texts, [name], pooling="all", use_cache=False)
    for i in range(len(texts)):
        n = int(mask[i].sum())
        # extract sorts texts by length, so batch layout (and float summation order) differ.
        np.testing.assert_allclose(acts.text(name, i), cache[name][i, :n].numpy(), rtol=1e-5, atol=1e-5)
    lm.assert_clean()
    with torch.no_grad():
        assert torch.equal(lm.model(ids, attention_mask=mask), logits_before)


@pytest.mark.real_model
def test_real_model_cold_then_warm_activation_cache(real_lm, tmp_path, monkeypatch):
    """A cold activation cache (fresh folder; the converted weights are shared) fills on the first
    call; the second call reads the file and runs no forward pass (a counting hook proves it)."""
    monkeypatch.setenv("REPSCOPE_ACTIVATION_CACHE", str(tmp_path / "acts"))
    texts = ["The cache starts cold.", "Then it is warm."]
    names = resid_hooks(real_lm, [3])
    calls = []
    handle = real_lm.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        cold = extract(real_lm, texts, names)
        n_cold = len(calls)
        files = list((tmp_path / "acts").glob("*.safetensors"))
        warm = extract(real_lm, texts, names)
    finally:
        handle.remove()
    assert n_cold >= 1 and len(files) == 1
    assert len(calls) == n_cold, "the warm call ran the model"
    np.testing.assert_array_equal(cold.values[names[0]], warm.values[names[0]])
