"""Live inspection against independent oracles: plain torch on the tiny model, transformers on Gemma."""

from __future__ import annotations

import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from analysis.inspection import figures as figs
from analysis.inspection.recipes import RECIPE_KINDS
from analysis.inspection.lens import (
    InspectConfig,
    attention_frame,
    inspect_prompt,
    lens_top_k_frame,
    logit_lens_frame,
    score_prompts,
)

TEXT = "the cat is very happy and the dog is sad"
TEXTS = ["the cat", "the food was very good and the service was great !", "no", "she went to paris"]


def _run(lm, text):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits, cache = lm.model.run_with_cache(ids)
    return ids[0], logits[0], cache


def _manual_lens(model, resid):
    """Plain-torch LayerNorm (the tiny model's ln_final) followed by W_U, b_U."""
    x = resid - resid.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    x = x * model.ln_final.w + model.ln_final.b
    return torch.log_softmax(x @ model.W_U + model.b_U, dim=-1)


def test_residual_norms_equal_torch_norm(tiny_lm):
    insp = inspect_prompt(tiny_lm, TEXT, top_k=5)
    ids, _, cache = _run(tiny_lm, TEXT)
    assert insp.tokens == ("<bos>", *TEXT.split())
    np.testing.assert_array_equal(insp.token_ids, ids.numpy())
    want = np.stack([torch.norm(cache[f"blocks.{l}.hook_resid_post"][0], dim=-1).numpy()
                     for l in range(tiny_lm.n_layers)])
    assert insp.resid_norms.shape == (3, 11)
    np.testing.assert_allclose(insp.resid_norms, want, rtol=1e-5, atol=1e-6)
    tiny_lm.assert_clean()


def test_lens_last_layer_equals_model_log_softmax(tiny_lm):
    insp = inspect_prompt(tiny_lm, TEXT, top_k=5)
    ids, logits, _ = _run(tiny_lm, TEXT)
    lp = torch.log_softmax(logits, dim=-1)
    last = tiny_lm.n_layers - 1
    want_p, want_i = lp.exp().topk(5, dim=-1)
    np.testing.assert_array_equal(insp.lens_top_ids[last], want_i.numpy())
    np.testing.assert_allclose(insp.lens_top_probs[last], want_p.numpy(), rtol=1e-5, atol=1e-7)
    obs = lp[:-1].gather(-1, ids[1:, None])[:, 0]
    np.testing.assert_allclose(insp.observed_prob[last], obs.exp().numpy(), rtol=1e-5, atol=1e-7)
    ranks = (lp[:-1] > obs[:, None]).sum(-1) + 1
    np.testing.assert_array_equal(insp.observed_rank[last], ranks.numpy())
    # next-token top-k comes from the real logits at the last position
    np.testing.assert_array_equal(insp.next_ids, want_i[-1].numpy())
    np.testing.assert_allclose(insp.next_probs, want_p[-1].numpy(), rtol=1e-5, atol=1e-7)


def test_lens_middle_layers_equal_hand_built_norm_and_unembed(tiny_lm):
    insp = inspect_prompt(tiny_lm, TEXT, top_k=3)
    ids, _, cache = _run(tiny_lm, TEXT)
    for layer in range(tiny_lm.n_layers):
        lp = _manual_lens(tiny_lm.model, cache[f"blocks.{layer}.hook_resid_post"][0]).detach()
        p, i = lp.exp().topk(3, dim=-1)
        np.testing.assert_array_equal(insp.lens_top_ids[layer], i.numpy())
        np.testing.assert_allclose(insp.lens_top_probs[layer], p.numpy(), rtol=1e-4, atol=1e-6)
        obs = lp[:-1].gather(-1, ids[1:, None])[:, 0].exp()
        np.testing.assert_allclose(insp.observed_prob[layer], obs.numpy(), rtol=1e-4, atol=1e-6)
    assert insp.observed_prob.shape == insp.observed_rank.shape == (3, 10)
    # rank 1 exactly where the lens' top-1 is the observed token
    top1_hits = insp.lens_top_ids[:, :-1, 0] == insp.token_ids[None, 1:]
    np.testing.assert_array_equal(insp.observed_rank == 1, top1_hits)


def test_attention_rows_sum_to_one_and_match_cache(tiny_lm):
    insp = inspect_prompt(tiny_lm, TEXT)
    _, _, cache = _run(tiny_lm, TEXT)
    assert insp.attention.shape == (3, 4, 11, 11)
    np.testing.assert_allclose(insp.attention.sum(-1), 1.0, rtol=0, atol=1e-5)
    assert np.triu(insp.attention[1, 2], k=1).max() == 0.0  # causal
    np.testing.assert_allclose(insp.attention[2], cache["blocks.2.attn.hook_pattern"][0].numpy(), atol=1e-6)


def test_score_prompts_equals_per_text_cross_entropy(tiny_lm):
    for batch_size in (1, 3):
        table = score_prompts(tiny_lm, TEXTS, batch_size=batch_size)
        assert list(table["text"]) == TEXTS
        for text, n_tokens, loss in table.itertuples(index=False):
            ids, logits, _ = _run(tiny_lm, text)
            lp = torch.log_softmax(logits, -1)
            manual = -float(lp[:-1].gather(-1, ids[1:, None]).mean())
            assert n_tokens == len(text.split()) + 1
            assert loss == pytest.approx(manual, rel=1e-5, abs=1e-6)


def test_bad_prompts_are_explained(tiny_lm):
    with pytest.raises(ValueError, match=r"70 tokens long .* context of 64 tokens"):
        inspect_prompt(tiny_lm, "the " * 69)
    with pytest.raises(ValueError, match="empty"):
        inspect_prompt(tiny_lm, "   ")
    with pytest.raises(ValueError, match="top_k"):
        inspect_prompt(tiny_lm, TEXT, top_k=0)
    with pytest.raises(ValueError, match="prompt 2: .*context"):
        score_prompts(tiny_lm, ["the cat", "a " * 80])
    with pytest.raises(ValueError, match="valid metrics"):
        InspectConfig(text="x", metric="logit")
    with pytest.raises(ValueError, match="valid keys"):
        InspectConfig.from_dict({"text": "x", "layers": 1})


def test_figures_and_frames(tiny_lm):
    insp = inspect_prompt(tiny_lm, "the cat the cat", top_k=4)
    fig = figs.residual_norms_figure(insp)
    assert isinstance(fig, go.Figure) and fig.layout.template.layout.font.family.startswith("DejaVu")
    assert len(set(fig.data[0].x)) == 5  # repeated tokens keep separate columns
    np.testing.assert_allclose(np.asarray(fig.data[0].z), insp.resid_norms)
    logged = figs.residual_norms_figure(insp, log=True)
    np.testing.assert_allclose(np.asarray(logged.data[0].z), np.log10(insp.resid_norms))
    lens = figs.logit_lens_figure(insp, "prob")
    np.testing.assert_allclose(np.asarray(lens.data[0].z), insp.observed_prob)
    assert list(lens.data[0].text[2]) == list(insp.lens_top_tokens[2, :4, 0])
    rank = figs.logit_lens_figure(insp, "rank")
    np.testing.assert_allclose(np.asarray(rank.data[0].z), np.log10(insp.observed_rank))
    att = figs.attention_figure(insp, 1, 3)
    np.testing.assert_allclose(np.asarray(att.data[0].z), insp.attention[1, 3])
    bars = figs.next_token_figure(insp)
    np.testing.assert_allclose(np.asarray(bars.data[0].x), insp.next_probs)
    with pytest.raises(ValueError, match=r"valid heads are 0..3"):
        figs.attention_figure(insp, 0, 4)
    with pytest.raises(ValueError, match=r"valid layers are 0..2"):
        attention_frame(insp, 3, 0)
    frame = logit_lens_frame(insp)
    assert len(frame) == 3 * 4
    np.testing.assert_array_equal(frame["observed_rank"], insp.observed_rank.ravel())
    assert list(frame["observed_next"][:4]) == ["the", "cat", "the", "cat"]
    top = lens_top_k_frame(insp, 2)
    assert top.shape == (3, 4) and top.iloc[0, 0].startswith(insp.lens_top_tokens[0, 2, 0])  # layers x ranks


def test_recipes_rebuild_every_kind(tiny_lm):
    # Through this module's RECIPES, not registry(): that imports every other analysis module.
    from analysis.inspection.recipes import RECIPES
    from analysis.recipes import RECIPE_MODULES, make_recipe

    assert "analysis.inspection.recipes" in RECIPE_MODULES and set(RECIPES) == set(RECIPE_KINDS)
    for kind in RECIPE_KINDS:
        recipe = make_recipe(kind, tiny_lm.name, {"text": "the dog", "layer": 2, "head": 1, "top_k": 3})
        fig, frame = RECIPES[recipe["figure"]](tiny_lm, recipe["config"])
        assert isinstance(fig, go.Figure) and len(frame) > 0
    assert len(frame) == 3  # next_token: top_k rows
    tiny_lm.assert_clean()


def test_cli_bad_file_exits_2(tmp_path, capsys):
    from analysis.cli import main

    bad = tmp_path / "prompts.pdf"
    bad.write_bytes(b"%PDF-1.4")
    assert main(["inspect", "--file", str(bad), "--out", str(tmp_path)]) == 2
    assert "prompts.pdf" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["inspect", "--file", str(empty)]) == 2
    assert "empty.txt is empty" in capsys.readouterr().err
    assert main(["inspect", "--file", str(tmp_path / "missing.txt")]) == 2
    assert main(["inspect", "--text", "hi", "--formats", "gif"]) == 2
    assert set(tmp_path.iterdir()) == {bad, empty}  # nothing written on bad input


# ---------------------------------------------------------------- real model

@pytest.fixture(scope="module")
def hf_gemma():
    from transformers import AutoModelForCausalLM

    from analysis.gguf_convert import converted_folder

    return AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32, attn_implementation="eager")


# The last text (18 tokens with BOS) is also timed, warm: the lens is 18 layers x 262k vocab per token.
MID = 8
REAL_TEXTS = ["The capital of France is Paris, and the capital of Italy is", "Hello world",
              "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"]


@pytest.mark.real_model
def test_real_lens_and_loss_match_transformers(real_lm, hf_gemma):
    worst = 0.0
    table = score_prompts(real_lm, REAL_TEXTS, batch_size=3)
    for text, loss in zip(REAL_TEXTS, table["loss"]):
        enc = real_lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = hf_gemma(**enc, labels=enc["input_ids"], output_hidden_states=True)
            # middle-layer lens oracle: HF's own final norm (Gemma: 1 + w) and lm_head
            mid = torch.softmax(hf_gemma.lm_head(hf_gemma.model.norm(out.hidden_states[MID + 1]))[0], -1)
        probs = torch.softmax(out.logits[0].float(), -1)
        start = time.perf_counter()
        insp = inspect_prompt(real_lm, text, top_k=5)
        seconds = time.perf_counter() - start
        last = real_lm.n_layers - 1
        want_p, want_i = probs.topk(5, dim=-1)
        ids = enc["input_ids"][0]
        obs = probs[:-1].gather(-1, ids[1:, None])[:, 0]
        mid_obs = mid[:-1].gather(-1, ids[1:, None])[:, 0]
        diffs = [np.abs(insp.lens_top_probs[last] - want_p.numpy()).max(),
                 np.abs(insp.observed_prob[MID] - mid_obs.numpy()).max(),
                 np.abs(insp.lens_top_probs[MID, :, 0] - mid.max(-1).values.numpy()).max(),
                 np.abs(insp.observed_prob[last] - obs.numpy()).max(),
                 np.abs(insp.next_probs - want_p[-1].numpy()).max()]
        worst = max(worst, *map(float, diffs))
        np.testing.assert_array_equal(insp.lens_top_ids[last, :, 0], want_i[:, 0].numpy())
        assert loss == pytest.approx(float(out.loss), rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(insp.attention.sum(-1), 1.0, atol=1e-4)
    print(f"lens (layers {MID}, last) vs transformers: max abs prob diff {worst:.3g}; "
          f"inspect_prompt on {insp.n_tokens} tokens (warm): {seconds:.2f} s")
    assert worst < 1e-4
    real_lm.assert_clean()


@pytest.mark.real_model
def test_real_prompt_over_context_raises(real_lm):
    with pytest.raises(ValueError, match=rf"context of {real_lm.n_ctx} tokens"):
        inspect_prompt(real_lm, "hello " * (real_lm.n_ctx + 5))


@pytest.mark.real_model
def test_cli_inspect_writes_files(tmp_path):
    from analysis.cli import main

    assert main(["inspect", "--text", "The sky is", "--out", str(tmp_path), "--formats", "png",
                 "--layer", "3", "--head", "1"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    for kind in RECIPE_KINDS:
        assert {f"{kind}.png", f"{kind}.csv", f"{kind}.recipe.json"} <= names
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello world\n\nThe sky is blue\n")
    out = tmp_path / "file"
    assert main(["inspect", "--file", str(prompts), "--out", str(out), "--formats", "svg", "--index", "1"]) == 0
    import pandas as pd

    table = pd.read_csv(out / "prompt_losses.csv")
    assert list(table["text"]) == ["Hello world", "The sky is blue"]
    assert (table["loss"] > 0).all()
    assert "The sky is blue" in (out / "logit_lens.recipe.json").read_text()


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_fused_lens_equals_full_log_softmax_across_chunks(softcap):
    """One pass over vocabulary chunks (online logsumexp, merged top-k, rank) = the full softmax, float64."""
    from analysis.inspection.lens import fused_lens

    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(50, 5, generator=g, dtype=torch.float64)
    bias = torch.randn(50, generator=g, dtype=torch.float64)
    nxt = torch.tensor([0, 49, 13, 13, 7, 31, 8])
    out = fused_lens(h.double(), W, nxt, 4, bias=bias, softcap=softcap, chunk=8)  # 7 chunks, the last partial
    z = h @ W.T + bias
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    lp = torch.log_softmax(z, -1)
    p, i = lp.exp().topk(4, -1)
    np.testing.assert_array_equal(out["top_ids"].numpy(), i.numpy())
    obs = lp.gather(-1, nxt[:, None])[:, 0]
    # fused_lens works in float32 (as the model): tolerance ~1e-6 relative on probabilities
    np.testing.assert_allclose(out["top_probs"].numpy(), p.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["observed_prob"].numpy(), obs.exp().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out["observed_rank"].numpy(), ((lp > obs[:, None]).sum(-1) + 1).numpy())


def test_lens_cell_labels_shrink_with_the_number_of_positions():
    from analysis.inspection.figures import CELL_CHARS, ROW_CHARS, cell_chars, cell_label

    assert cell_chars(5) == CELL_CHARS  # short prompts: the whole 7 characters
    for n in (12, 16, 20, 30, 40):
        assert 2 <= cell_chars(n) <= CELL_CHARS and n * cell_chars(n) <= max(ROW_CHARS, 2 * n)
    assert cell_label("<start_of_image>", cell_chars(16)) == "<start_of_image>"[: cell_chars(16) - 1] + "…"
    assert cell_label("the", 4) == "the"


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_unembedding_log_probs_equal_the_full_log_softmax_in_float64(softcap):
    """The steering scorer's chunked log p(target) (running logsumexp over vocabulary chunks) = log_softmax."""
    from analysis.logprobs import target_logprobs, unembed_target_logprobs

    g = torch.Generator().manual_seed(1)
    h, W = torch.randn(9, 6, generator=g, dtype=torch.float64) * 4, torch.randn(61, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(61, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 60, 7, 8, 55, 56, 3, 3, 31])  # first and last column, both sides of chunk edges
    z = h @ W.T + bias
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    ref = torch.log_softmax(z, -1).gather(-1, t[:, None])[:, 0]
    got = unembed_target_logprobs(h, W, t, bias=bias, softcap=softcap, chunk=8)  # 8 chunks, the last partial
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), target_logprobs(z, t).numpy(), rtol=1e-12, atol=1e-12)
    empty = unembed_target_logprobs(h[:0], W, t[:0], chunk=8)
    assert empty.shape == (0,)
