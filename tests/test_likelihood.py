"""Likelihood, CHES, indicators, DPO and preference data against independent oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis.likelihood import (
    DPOConfig, DPOMemoryError, LikelihoodConfig, check_memory, ches, compare_indicators, encode, filter_by_percentile,
    lm_logits_fn, normalized_edit_distance, rank_pairs, response_stats, run_dpo, score_pairs, token_jaccard,
    topk_indicators, watch_token_ids,
)
from analysis.likelihood.preferences import (
    PreferencePair, export_jsonl, load_shipped, parse_preferences, render_messages,
)
from analysis.uploads import UploadError

TINY_PAIRS = [
    PreferencePair("the cat is", " happy", " sad"),
    PreferencePair("is the food good ?", " yes very good", " no"),
    PreferencePair("a dog", " is big and red", " was small and bad ."),
    PreferencePair("the man went to", " paris", " france in the night"),
]


# Exactness checks run on a float64 copy of the tiny model: float64 rounding (2.2e-16 per op, a few
# hundred ops per number of size ~10) stays below 1e-11, so a 1e-9 tolerance tests the code, not the CPU.
EXACT = dict(rel=1e-9, abs=1e-9)


@pytest.fixture(scope="module")
def tiny64():
    from tests.conftest import make_tiny_lm

    lm = make_tiny_lm(seed=0, name="tiny64")
    lm.model.to(torch.float64)
    lm.model.cfg.dtype = torch.float64
    return lm


def _lines(records) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


# ---------------------------------------------------------------- hand-computed math

def test_ches_on_toy_hidden_states():
    s_plus = np.array([[1.0, 2.0], [3.0, 0.0]])
    s_minus = np.array([[2.0, 1.0], [1.0, 1.0]])
    # <S+,S-> - |S+|^2: (2 + 2) - 5 = -1 ; (3 + 0) - 9 = -6
    np.testing.assert_allclose(ches(s_plus, s_minus), [-1.0, -6.0])
    # length-normalised with |y+| = 2, |y-| = 1 on the first row: <(.5,1),(2,1)> - 1.25 = 2 - 1.25
    assert ches(s_plus[:1] / 2, s_minus[:1] / 1)[0] == pytest.approx(0.75)


def test_topk_mass_and_entropy_on_hand_made_distribution():
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    mass, ent = topk_indicators(p.log(), 2)
    assert float(mass[0]) == pytest.approx(0.8)
    q = np.array([0.5, 0.3]) / 0.8
    assert float(ent[0]) == pytest.approx(-(q * np.log(q)).sum(), rel=1e-6)
    mass1, ent1 = topk_indicators(p.log(), 1)
    assert float(mass1[0]) == pytest.approx(0.5) and float(ent1[0]) == pytest.approx(0.0, abs=1e-7)


def test_surface_similarity_by_hand():
    assert token_jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert normalized_edit_distance([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)
    assert normalized_edit_distance([1, 2], [1, 2]) == 0.0
    assert normalized_edit_distance([1, 2], [3, 4, 5, 6]) == 1.0


# ---------------------------------------------------------------- tiny model

def _manual_logp(lm, prompt, response):
    px = lm.tokenizer(prompt)["input_ids"]
    py = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([px + py])
    with torch.no_grad():
        logp = lm.model(ids).double().log_softmax(-1)[0]
    return np.array([float(logp[len(px) - 1 + j, t]) for j, t in enumerate(py)])


def _manual_h_sum(lm, prompt, response):
    """h_final = ln_final(resid) = normalized * w + b, computed outside the unembed hook."""
    px = lm.tokenizer(prompt)["input_ids"]
    py = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits, cache = lm.model.run_with_cache(torch.tensor([px + py]), names_filter=["ln_final.hook_normalized"])
    h = cache["ln_final.hook_normalized"][0] * lm.model.ln_final.w + lm.model.ln_final.b
    # h_final is the input of the unembedding: it reproduces the logits.
    torch.testing.assert_close(h @ lm.model.W_U + lm.model.b_U, logits[0], rtol=1e-12, atol=1e-12)
    return h[len(px) - 1: len(px) + len(py) - 1].detach().double().sum(0).numpy()


def test_logprobs_equal_manual_log_softmax_gather(tiny64):
    stats = response_stats(tiny64, [p.prompt for p in TINY_PAIRS], [p.chosen for p in TINY_PAIRS],
                           LikelihoodConfig(batch_size=3))
    for i, p in enumerate(TINY_PAIRS):
        want = _manual_logp(tiny64, p.prompt, p.chosen)
        np.testing.assert_allclose(stats.token_logps[i], want, rtol=1e-9, atol=1e-9)
        assert stats.logp[i] == pytest.approx(want.sum(), **EXACT)
        assert stats.n_tokens[i] == len(want)
        np.testing.assert_allclose(stats.h_sum[i], _manual_h_sum(tiny64, p.prompt, p.chosen), rtol=1e-9, atol=1e-9)


def test_batched_equals_per_example_tiny(tiny64):
    batched = score_pairs(tiny64, TINY_PAIRS, LikelihoodConfig(batch_size=8))
    for i, p in enumerate(TINY_PAIRS):
        alone = score_pairs(tiny64, [p], LikelihoodConfig(batch_size=1))
        assert batched.ches[i] == pytest.approx(alone.ches[0], **EXACT)
        assert batched.ches_ln[i] == pytest.approx(alone.ches_ln[0], **EXACT)
        assert batched.chosen.logp[i] == pytest.approx(alone.chosen.logp[0], **EXACT)
        assert batched.rejected.topk_mass[i] == pytest.approx(alone.rejected.topk_mass[0], **EXACT)


def test_batched_equals_per_example_float32_within_derived_tolerance(tiny_lm):
    """float32: padding changes the summation order of the attention and matmuls. Each number is a sum of
    ~d_model = 32 products of terms of size ~1-10, so the rounding is ~32 * 10 * 6e-8 ≈ 2e-5 relative to
    the largest term; CHES is a difference of terms of size |S|^2, so it is compared relative to |S+|^2."""
    batched = score_pairs(tiny_lm, TINY_PAIRS, LikelihoodConfig(batch_size=8))
    eps = float(np.finfo(np.float32).eps)
    for i, p in enumerate(TINY_PAIRS):
        alone = score_pairs(tiny_lm, [p], LikelihoodConfig(batch_size=1))
        scale = float(alone.chosen.h_sum[0] @ alone.chosen.h_sum[0])
        assert abs(batched.ches[i] - alone.ches[0]) <= 1000 * eps * scale
        assert batched.chosen.logp[i] == pytest.approx(alone.chosen.logp[0], rel=1000 * eps, abs=1000 * eps)


def test_ches_from_model_matches_definition_and_single_token_pairs_are_zero(tiny64):
    scores = score_pairs(tiny64, TINY_PAIRS)
    for i, p in enumerate(TINY_PAIRS):
        sp, sm = _manual_h_sum(tiny64, p.prompt, p.chosen), _manual_h_sum(tiny64, p.prompt, p.rejected)
        assert scores.ches[i] == pytest.approx(sp @ sm - sp @ sp, **EXACT)
        n_p, n_m = scores.chosen.n_tokens[i], scores.rejected.n_tokens[i]
        assert scores.ches_ln[i] == pytest.approx((sp / n_p) @ (sm / n_m) - (sp / n_p) @ (sp / n_p), **EXACT)
    # One-token responses share their only predicting position (the last prompt token): S+ = S-.
    assert scores.ches[0] == 0.0


def test_append_eos_adds_the_eos_predicting_position(tiny64):
    """With append_eos, S sums one more position (the one predicting EOS) and L counts it."""
    tok = tiny64.tokenizer
    scores = score_pairs(tiny64, TINY_PAIRS, LikelihoodConfig(append_eos=True))
    for i, p in enumerate(TINY_PAIRS):
        s = []
        for y in (p.chosen, p.rejected):
            px, py = tok(p.prompt)["input_ids"], tok(y, add_special_tokens=False)["input_ids"]
            ids = px + py + [tok.eos_token_id]
            with torch.no_grad():
                _, cache = tiny64.model.run_with_cache(torch.tensor([ids]), names_filter=["unembed.hook_in"])
            s.append(cache["unembed.hook_in"][0, len(px) - 1: len(ids) - 1].double().sum(0).numpy())
            assert len(ids) - len(px) == (scores.chosen if y == p.chosen else scores.rejected).n_tokens[i]
        assert scores.ches[i] == pytest.approx(s[0] @ s[1] - s[0] @ s[0], **EXACT)
    assert scores.ches[0] != 0.0  # the EOS position sees y+ or y-, so single-token pairs differ now


def test_rank_pairs_frame(tiny_lm):
    frame = rank_pairs(tiny_lm, TINY_PAIRS)
    assert list(frame["ches"]) == sorted(frame["ches"], reverse=True)
    for col in ("ches", "ches_length_normalised", "len_chosen", "len_rejected", "logp_chosen", "logp_rejected",
                "token_jaccard", "edit_distance"):
        assert col in frame
    row = frame[frame["pair"] == 2].iloc[0]
    assert row["len_chosen"] == 4 and row["len_rejected"] == 5
    assert row["token_jaccard"] == pytest.approx(1 / 8)  # {and} of {is,big,and,red,was,small,bad,.}


@pytest.mark.real_model
def test_boundary_is_flagged():
    from transformers import AutoTokenizer

    from analysis.gguf_convert import converted_folder, is_converted

    if not is_converted():
        pytest.skip("the converted Gemma tokenizer is not in the cache")
    tok = AutoTokenizer.from_pretrained(converted_folder())
    enc = encode(tok, ["Answer: ", "Answer:"], ["No", " No"])
    assert list(enc.boundary_merged) == [True, False]


def test_dpo_step_lowers_loss_and_shared_model_is_unchanged(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    seen = []
    result = run_dpo(tiny_lm, TINY_PAIRS, DPOConfig(steps=2, lr=1e-3, watch_tokens=(" yes", " no")),
                     on_step=seen.append)
    hist = result.history
    assert [r["step"] for r in hist] == [0, 1, 2] and len(seen) == 3
    assert hist[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # the copy is its own reference at step 0
    assert hist[1]["loss"] < hist[0]["loss"] and hist[2]["loss"] < hist[1]["loss"]
    assert hist[1]["margin"] > 0
    assert 0 < hist[0]["p_watch[ yes]"] < 1
    for k, v in tiny_lm.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    tiny_lm.assert_clean()


def test_dpo_stop_keeps_computed_rows_and_indicators_compare(tiny_lm):
    from analysis.progress import Stopped

    def stop_after_step_1(row):
        if row["step"] >= 1:
            raise Stopped("test")

    result = run_dpo(tiny_lm, TINY_PAIRS, DPOConfig(steps=5, lr=1e-3, watch_tokens=(" yes",)),
                     on_step=stop_after_step_1, keep_model=True)
    assert result.stopped_early and result.partial and [r["step"] for r in result.history] == [0, 1]
    frame = compare_indicators({"before": lm_logits_fn(tiny_lm), "after": result.policy}, tiny_lm.tokenizer, TINY_PAIRS)
    assert set(frame["model"]) == {"before", "after"} and len(frame) == 2 * 2 * len(TINY_PAIRS)
    # A stop comes before the next update: the kept copy is the model the last row describes.
    # float32, sums of a few log-probs of size ~5: 1e-5 relative is ~100 eps.
    after = frame[(frame.model == "after") & (frame.response == "chosen")]["logp"].mean()
    assert after == pytest.approx(result.history[-1]["logp_chosen"], rel=1e-5)


def test_dpo_config_and_memory_refusal(tiny_lm, monkeypatch):
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="watch_tokens"):
        DPOConfig(watch_tokens=" Yes")
    with pytest.raises(ValueError, match="optimizer"):
        DPOConfig(optimizer="lion")
    with pytest.raises(ValueError, match="seeds"):
        DPOConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="unknown DPO config keys"):
        DPOConfig.from_dict({"batch_size": 8})
    with pytest.raises(ValueError, match="not one"):
        watch_token_ids(tiny_lm.tokenizer, ("yes no",))
    import psutil

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    with pytest.raises(DPOMemoryError, match="parameters fit"):
        check_memory(tiny_lm)


# ---------------------------------------------------------------- data

def test_validation_errors_are_clear():
    with pytest.raises(UploadError, match="expected"):
        parse_preferences("p.jsonl", _lines([{"prompt": "a", "chosen": "b"}]))
    with pytest.raises(UploadError, match="identical"):
        parse_preferences("p.jsonl", _lines([{"prompt": "a", "chosen": " b", "rejected": " b"}]))
    with pytest.raises(UploadError, match="list of messages"):
        parse_preferences("p.jsonl", _lines([{"prompt": [{"role": "user", "content": "hi"}], "chosen": "x", "rejected": []}]))
    with pytest.raises(UploadError, match="role"):
        parse_preferences("p.jsonl", _lines([{"prompt": [{"role": "bot", "content": "hi"}],
                                              "chosen": [{"role": "assistant", "content": "a"}],
                                              "rejected": [{"role": "assistant", "content": "b"}]}]))
    with pytest.raises(UploadError, match="unsupported file type"):
        parse_preferences("p.txt", b"hello")


def test_leading_space_is_kept_and_csv_reads():
    data = parse_preferences("p.jsonl", _lines([{"prompt": "Q: x? A:", "chosen": " No", "rejected": " Never"}]))
    assert data.pairs[0].chosen == " No"
    csv = parse_preferences("p.csv", b'prompt,chosen,rejected\nQ:," No"," Never"\n')
    assert csv.pairs[0] == PreferencePair("Q:", " No", " Never")


def test_plain_and_chat_template_rendering(tiny_lm):
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_messages(msgs, None, add_generation_prompt=True) == ("User: Hi\nAssistant:", "plain")
    data = load_shipped("conversational_example", None)
    assert data.rendering == "plain"
    assert data.pairs[0].prompt == "User: What is the capital of Italy?\nAssistant:"
    assert data.pairs[0].chosen == " The capital of Italy is Rome."

    class Templated:
        bos_token = "<bos>"
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            body = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
            return "<bos>" + body + ("<assistant>" if add_generation_prompt else "")

    t = parse_preferences("c.jsonl", _lines([{"prompt": msgs, "chosen": [{"role": "assistant", "content": "A"}],
                                              "rejected": [{"role": "assistant", "content": "B"}]}]), Templated())
    # "<assistant>" is not a prefix of "<assistant>A</>"? It is: the response is "A</>".
    assert t.rendering == "chat_template" and t.pairs[0].prompt == "<user>Hi</><assistant>"
    assert t.pairs[0].chosen == "A</>"


@pytest.mark.parametrize("name", ["displacement_demo", "conversational_example"])
def test_filter_export_round_trip_in_input_layout(name):
    data = load_shipped(name)
    scores = np.arange(len(data), dtype=float)
    kept = filter_by_percentile(data, scores, 50)
    assert 0 < len(kept) < len(data) and max(scores[:len(data)][scores <= np.percentile(scores, 50)]) <= np.percentile(scores, 50)
    out = export_jsonl(kept)
    again = parse_preferences(f"{name}.jsonl", out)
    assert again.layout == data.layout and again.pairs == kept.pairs
    assert [json.loads(l) for l in out.decode().splitlines()] == list(kept.records)
    with pytest.raises(ValueError, match="one score per pair"):
        filter_by_percentile(data, scores[:-1], 50)
    with pytest.raises(ValueError, match="percentile"):
        filter_by_percentile(data, scores, 0)


# ---------------------------------------------------------------- real model

REAL_PAIRS = [
    PreferencePair("Question: What color is the sky on a clear day?\nAnswer:", " The sky is blue.", " It is green."),
    PreferencePair("User: Say hi.\nAssistant:", " Hi", " Hello there, friend!"),
    PreferencePair("Question: Is water wet? Answer:", " Yes", " Yeah"),
]


@pytest.mark.real_model
def test_real_ches_matches_transformers_hidden_states_and_is_padding_invariant(real_lm):
    """Oracle: plain transformers, each sequence alone, output_hidden_states[-1] (the input of lm_head)."""
    from transformers import AutoModelForCausalLM

    from analysis.gguf_convert import converted_folder

    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32)
    tok = real_lm.tokenizer
    scores = score_pairs(real_lm, REAL_PAIRS, LikelihoodConfig(batch_size=6))
    with torch.no_grad():
        for i, p in enumerate(REAL_PAIRS):
            s, lp = [], []
            for y in (p.chosen, p.rejected):
                px, py = tok(p.prompt)["input_ids"], tok(y, add_special_tokens=False)["input_ids"]
                out = hf(input_ids=torch.tensor([px + py]), output_hidden_states=True)
                h = out.hidden_states[-1][0].double()
                s.append(h[len(px) - 1: len(px) + len(py) - 1].sum(0).numpy())
                logp = out.logits[0].log_softmax(-1)
                lp.append(sum(float(logp[len(px) - 1 + j, t]) for j, t in enumerate(py)))
            want = s[0] @ s[1] - s[0] @ s[0]
            # Single-token pairs share their one predicting position: CHES is 0 up to rounding,
            # so compare it with the size of the terms it is a difference of.
            scale = abs(want) if i < 2 else s[0] @ s[0]
            print(f"pair {i}: CHES {scores.ches[i]:.6g} oracle {want:.6g} rel {abs(scores.ches[i] - want) / scale:.2g}")
            assert abs(scores.ches[i] - want) / scale <= 1e-4
            assert scores.chosen.logp[i] == pytest.approx(lp[0], rel=1e-4, abs=1e-3)
            assert scores.rejected.logp[i] == pytest.approx(lp[1], rel=1e-4, abs=1e-3)
            alone = score_pairs(real_lm, [p], LikelihoodConfig(batch_size=1))
            assert abs(alone.ches[0] - scores.ches[i]) / scale <= 1e-4
            assert alone.chosen.logp[0] == pytest.approx(scores.chosen.logp[i], rel=1e-4, abs=1e-3)
    real_lm.assert_clean()


@pytest.mark.real_model
def test_ches_command_writes_scores_and_filtered_set(real_lm, tmp_path):
    import pandas as pd

    from analysis.cli import main

    assert main(["ches", "conversational_example", "--out", str(tmp_path), "--filter", "percentile",
                 "--percentile", "50"]) == 0
    frame = pd.read_csv(tmp_path / "conversational_example.ches.csv")
    assert len(frame) == 6 and frame["ches"].is_monotonic_decreasing
    kept = parse_preferences("k.jsonl", (tmp_path / "conversational_example.ches_percentile.jsonl").read_bytes())
    assert kept.layout == "conversational" and len(kept) == 3
    assert main(["ches", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2


def test_too_long_and_empty_responses_are_refused(tiny_lm):
    with pytest.raises(ValueError, match="context"):
        response_stats(tiny_lm, ["the " * 70], [" cat"])
    with pytest.raises(ValueError, match="no tokens"):
        response_stats(tiny_lm, ["the"], [""])
    with pytest.raises(ValueError, match="top_k"):
        LikelihoodConfig(top_k=0)


@pytest.mark.parametrize("kind", ["ches_histogram", "ches_vs_similarity", "token_geometry"])
def test_ches_recipes_rebuild_figures(tiny_lm, kind):
    from analysis.recipes import make_recipe, run_recipe

    fig, frame = run_recipe(make_recipe(kind, "tiny", {"source": "conversational_example"}), lm=tiny_lm)
    assert len(fig.data) >= 1 and len(frame) == 6
