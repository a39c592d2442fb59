"""Steering vectors (Methods §3): pairs, vectors, layer search, apply, generation, sweep, figures."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.activations import resid_hook
from analysis.steering.generation import GenerationConfig, Steering, generate, generate_side_by_side
from analysis.steering.pairs import Pair, PairSet, load_pair_set, parse_pair_upload, shipped_sets
from analysis.steering.vector import (
    POSITIONS, SteeringConfig, SteeringVector, apply, build_steering_vector, compute_pair_activations,
    js_centred, js_exact, js_paper, layer_search,
)
from analysis.steering.evaluation import compute_alpha_sweep
from analysis.uploads import UploadError
from tests.conftest import make_tiny_lm

PAIRS = PairSet("toy", (
    Pair("the food was", " very good", " very bad", "train"),
    Pair("the movie was", " great !", " terrible !", "train"),
    Pair("the service was", " good and happy", " bad and sad", "train"),
    Pair("the day was", " great", " terrible", "test"),
    Pair("the cat was", " happy", " sad", "test"),
))


def _vector(lm, seed=0, layers=(1,)):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(lm.n_layers, lm.d_model, generator=g).numpy()
    return SteeringVector(model=lm.name, vectors=v.astype(np.float32), layers=layers)


def _logits(lm, text="the food was very good"):
    ids, _ = lm.tokenize([text])
    with lm.locked() as model, torch.no_grad():
        return model(ids)


def _resid(lm, ids, layer):
    with lm.locked() as model, torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=resid_hook(layer))
    return cache[resid_hook(layer)][0]


# ---------------------------------------------------------------- pairs


def test_shipped_sets_load_with_their_split():
    assert {"sentiment", "register", "facts", "future_past"} <= set(shipped_sets())
    ps = load_pair_set("sentiment")
    assert len(ps.pairs) == 80 and len(ps.test) == 16 and len(ps.train) == 64
    assert ps.positive_label == "positive sentiment"
    assert ps.pairs[0].positive_text == ps.pairs[0].prompt + ps.pairs[0].positive


def test_upload_formats_and_errors():
    rows = [{"prompt": f"p{i}", "positive": " a", "negative": " b"} for i in range(10)]
    ps = parse_pair_upload("x.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert len(ps.test) == 2 and len(ps.train) == 8  # seeded 20 % hold-out without split fields
    assert ps == parse_pair_upload("x.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    two = b"positive_prompt,negative_prompt\nI love it,I hate it\nGreat day,Awful day\nnice,mean\n"
    ps = parse_pair_upload("y.csv", two)
    assert ps.pairs[0].prompt == "" and ps.pairs[0].positive == "I love it"
    with pytest.raises(UploadError, match="expected"):
        parse_pair_upload("z.jsonl", b'{"prompt": "a", "positive": "b"}\n')
    with pytest.raises(UploadError, match="at least 2"):
        parse_pair_upload("z.jsonl", b'{"prompt": "a", "positive": "b", "negative": "c"}\n')
    with pytest.raises(ValueError, match="Shipped sets"):
        load_pair_set("no_such_set")


# ---------------------------------------------------------------- layer-search scores


def _authors_score(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """attack.py's layer score, written from the authors' code (float64 torch)."""
    p = F.softmax(pos, dim=-1)
    n = F.softmax(neg, dim=-1)
    M = 0.5 * (p + n)
    kl1 = F.kl_div(p, M, reduction="none").mean(-1)
    kl2 = F.kl_div(n, M, reduction="none").mean(-1)
    return float((0.5 * (kl1 + kl2)).mean(-1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_score_is_the_authors_formula_on_random_data(seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(6, 9, generator=g, dtype=torch.float64) * 2
    neg = torch.randn(6, 9, generator=g, dtype=torch.float64) * 2
    # float64 throughout, log-space vs torch's direct softmax: agreement to 1e-12 relative
    assert js_paper(pos.numpy(), neg.numpy()) == pytest.approx(_authors_score(pos, neg), rel=1e-12, abs=1e-15)
    big = pos.clone()
    big[:, 0] = 5000.0  # a massive dimension: M is one-hot there, exp underflows to exact 0 elsewhere
    assert js_paper(big.numpy(), neg.numpy()) == pytest.approx(_authors_score(big, neg), rel=1e-12, abs=1e-15)


def test_paper_score_by_hand_is_not_a_divergence():
    p, n = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    m = (p + n) / 2  # [0.7, 0.3]
    by_hand = 0.5 * (np.mean(m * (np.log(m) - p)) + np.mean(m * (np.log(m) - n)))
    pos, neg = np.log(p)[None], np.log(n)[None]  # softmax(log p) = p
    assert js_paper(pos, neg) == pytest.approx(by_hand, rel=1e-12)
    assert js_paper(pos, pos) != 0.0  # identical inputs: a divergence would be 0


def test_exact_and_centred_js_against_scipy():
    from scipy.spatial.distance import jensenshannon
    from scipy.special import softmax

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    want = np.mean([jensenshannon(softmax(a), softmax(b)) ** 2 for a, b in zip(pos, neg)])  # natural log
    assert js_exact(pos, neg) == pytest.approx(want, rel=1e-10)
    both = np.concatenate([pos, neg])
    z = (both - both.mean(0)) / both.std(0)
    want_c = np.mean([jensenshannon(softmax(a), softmax(b)) ** 2 for a, b in zip(z[:5], z[5:])])
    assert js_centred(pos, neg) == pytest.approx(want_c, rel=1e-10)
    assert js_exact(pos, pos) == pytest.approx(0.0, abs=1e-15) and js_exact(pos, neg) <= np.log(2)


def test_centred_js_ignores_an_input_invariant_massive_dimension():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))
    mpos, mneg = pos.copy(), neg.copy()
    mpos[:, 3] += 4000.0
    mneg[:, 3] += 4000.0
    assert js_exact(mpos, mneg) < 1e-12 < js_exact(pos, neg)  # saturated: the plain score sees nothing
    # the massive dim, once centred, is an ordinary dimension again: the centred score is unchanged
    assert js_centred(mpos, mneg) == pytest.approx(js_centred(pos, neg), rel=1e-9)


def test_degenerate_search_is_flagged():
    from analysis.steering.vector import LayerSearch

    assert LayerSearch(np.arange(5), np.array([-0.9, -1, -1, -1, -1.0]), "paper").degenerate
    assert not LayerSearch(np.arange(5), np.array([0.1, 0.2, 0.3, 0.2, 0.05]), "exact").degenerate


def test_scores_average_over_pairs_and_survive_huge_activations():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    each = [js_exact(pos[i:i + 1], neg[i:i + 1]) for i in range(4)]
    assert js_exact(pos, neg) == pytest.approx(np.mean(each))
    big = pos.copy()
    big[:, 0] = 5000.0  # Gemma-like massive dimension: softmax is one-hot, no NaN
    assert np.isfinite(js_exact(big, neg)) and np.isfinite(js_paper(big, neg)) and np.isfinite(js_centred(big, neg))


def test_config_validation_names_valid_values():
    with pytest.raises(ValueError, match="minus2"):
        SteeringConfig(position="first")
    with pytest.raises(ValueError, match="behavioural"):
        SteeringConfig(score="kl")
    assert SteeringConfig().candidates(18) == tuple(range(9))
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=201)
    with pytest.raises(ValueError, match="valid paths"):
        GenerationConfig(path="fast")
    for bad in (dict(repetition_penalty=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


# ---------------------------------------------------------------- vectors


@pytest.mark.parametrize("position", list(POSITIONS))
def test_pair_activations_match_plain_forward(tiny_lm, position):
    acts = compute_pair_activations(tiny_lm, PAIRS.pairs, position)
    assert acts.positive.shape == (5, tiny_lm.n_layers, tiny_lm.d_model)
    for i, pair in enumerate(PAIRS.pairs):
        ids, _ = tiny_lm.tokenize([pair.negative_text])
        n_prompt = len(tiny_lm.tokenizer(pair.prompt)["input_ids"])
        for layer in range(tiny_lm.n_layers):
            r = _resid(tiny_lm, ids, layer)
            want = {"minus2": r[-2], "last": r[-1], "completion_mean": r[n_prompt:].mean(0)}[position]
            np.testing.assert_allclose(acts.negative[i, layer], want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts.vectors, (acts.positive - acts.negative).mean(0), rtol=1e-6)


def test_build_search_and_save_load_roundtrip(tiny_lm, tmp_path):
    vec, search, acts = build_steering_vector(tiny_lm, PAIRS, SteeringConfig(score="exact"))
    assert tuple(search.layers) == (0,)  # first half of 3 layers
    assert vec.layers == (search.best,) and vec.meta["n_pairs"] == 3
    assert set(vec.meta["distributional"]) == {"paper", "exact", "centred"} and "degenerate" in vec.meta
    full = layer_search(acts, "paper")
    assert full.scores.shape == (tiny_lm.n_layers,)
    path = vec.save(tmp_path / "v")
    back = SteeringVector.load(path)
    assert back.model == vec.model and back.layers == vec.layers and back.meta == vec.meta
    np.testing.assert_array_equal(back.vectors, vec.vectors)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        SteeringVector.load(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- apply


def test_alpha_zero_gives_exactly_unsteered_logits(tiny_lm):
    base = _logits(tiny_lm)
    with apply(tiny_lm, _vector(tiny_lm), 0.0, layers=[0, 1, 2]):
        same = _logits(tiny_lm)
    assert torch.equal(base, same)
    # and a hook adding an all-zero vector changes nothing either
    zero = SteeringVector(tiny_lm.name, np.zeros((3, tiny_lm.d_model), np.float32), (1,))
    with apply(tiny_lm, zero, 5.0):
        assert torch.equal(base, _logits(tiny_lm))


def test_hook_adds_alpha_v_at_every_position_including_generated(tiny_lm):
    vec, alpha, layer = _vector(tiny_lm), 2.5, 1
    seen = []
    capture = (resid_hook(layer), lambda r, hook: seen.append(r.detach().clone()))
    cfg = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    with apply(tiny_lm, vec, alpha, [layer]), tiny_lm.hooked([capture]):
        gen = generate(tiny_lm, "the food was", cfg)  # KV cache: after the prompt, one token per step
    assert [s.shape[1] for s in seen] == [4] + [1] * 5
    steered = torch.cat(seen, 1)[0]
    ids, _ = tiny_lm.tokenize(["the food was"])
    full = torch.cat([ids, torch.tensor([gen.new_tokens[:-1]])], 1)
    plain = _resid(tiny_lm, full, layer)
    want = torch.as_tensor(alpha * vec.vectors[layer]).expand_as(plain)
    torch.testing.assert_close(steered - plain, want, rtol=1e-5, atol=1e-5)
    # without the KV cache the steered run recomputes every position: same tokens
    with apply(tiny_lm, vec, alpha, [layer]), torch.no_grad():
        toks = tiny_lm.model.generate(ids, max_new_tokens=6, do_sample=False, use_past_kv_cache=False,
                                      stop_at_eos=False, verbose=False, return_type="tokens")
    assert tuple(toks[0, 4:].tolist()) == gen.new_tokens


def test_model_bit_identical_after_block_and_after_exception(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    base = _logits(tiny_lm)
    with apply(tiny_lm, _vector(tiny_lm), 10.0, [0, 2]):
        assert not torch.equal(_logits(tiny_lm), base)
    tiny_lm.assert_clean()
    assert torch.equal(_logits(tiny_lm), base)
    with pytest.raises(RuntimeError, match="boom"):
        with apply(tiny_lm, _vector(tiny_lm), 10.0):
            raise RuntimeError("boom")
    tiny_lm.assert_clean()
    assert torch.equal(_logits(tiny_lm), base)
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tiny_lm.lock.acquire(blocking=False)  # the lock was released
    tiny_lm.lock.release()


def test_two_threads_steered_run_never_leaks_into_unsteered():
    lm = make_tiny_lm(seed=3, name="tiny-threads")
    vec, cfg = _vector(lm, seed=1), GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    base_logits, base_gen = _logits(lm), generate(lm, "the cat was", cfg).new_tokens
    steered_gen = generate(lm, "the cat was", cfg, steering=Steering(vec, 50.0, (0, 1))).new_tokens
    assert steered_gen != base_gen  # the steering is strong enough to show if it leaked
    errors, results = [], []

    def steer():
        try:
            for _ in range(6):
                generate(lm, "the cat was", cfg, steering=Steering(vec, 50.0, (0, 1)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    def plain():
        try:
            for _ in range(6):
                results.append((_logits(lm), generate(lm, "the cat was", cfg).new_tokens))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    for _ in range(3):
        threads = [threading.Thread(target=steer), threading.Thread(target=plain)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 18
    # Not bit-exact: a concurrent thread changes how torch splits float32 reductions (seen on a loaded
    # 2-core machine: differences of 1e-5). Tolerance: 1e-5 relative to the logits' scale, while a leaked
    # steer (alpha 50 at layers 0-1) moves them by far more, which the first assertion shows.
    scale = float(base_logits.abs().max())
    with apply(lm, vec, 50.0, layers=(0, 1)):
        leaked = _logits(lm)
    assert float((leaked - base_logits).abs().max()) > 1e-2 * scale
    for logits, tokens in results:
        assert tokens == base_gen
        torch.testing.assert_close(logits, base_logits, rtol=0, atol=1e-5 * scale)
    lm.assert_clean()


def test_sampling_is_seeded_and_side_by_side(tiny_lm):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, seed=7, stop_at_eos=False)
    a, b = generate(tiny_lm, "the dog", cfg), generate(tiny_lm, "the dog", cfg)
    assert a.new_tokens == b.new_tokens
    steps = []
    plain, steered = generate_side_by_side(tiny_lm, "the dog", GenerationConfig(max_new_tokens=5, stop_at_eos=False),
                                           Steering(_vector(tiny_lm), 30.0), progress=lambda f, s: steps.append((f, s)))
    # analysis.progress: (fraction of the whole job, stage); unsteered is the first half, steered the second
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[4] == 0.5
    assert steps[-1][1] == "token 5 of 5" and plain.new_tokens != steered.new_tokens
    with pytest.raises(ValueError, match="bridge"):
        generate(tiny_lm, "the dog", GenerationConfig(path="hf"))


# ---------------------------------------------------------------- evaluation


def test_sweep_gap_loss_and_kl_match_per_text_oracle(tiny_lm):
    vec, _, _ = build_steering_vector(tiny_lm, PAIRS, SteeringConfig(score="exact"))
    bg = ["the day was good .", "a cat is happy"]
    sweep = compute_alpha_sweep(tiny_lm, vec, PAIRS.test, [-1.0, 1.0], background=bg, n_null=2)
    assert sweep.alphas.tolist() == [-1.0, 0.0, 1.0] and sweep.null_gain.shape == (3, 2)
    for a_i, alpha in enumerate(sweep.alphas):  # plain torch, each text alone, steered by a TL hook
        hook = [(resid_hook(vec.layers[0]), lambda r, hook: r + torch.as_tensor(alpha * vec.vectors[vec.layers[0]]))]
        for i, pair in enumerate(PAIRS.test):
            lp = {}
            for which in ("positive", "negative"):
                ids, _ = tiny_lm.tokenize([pair.prompt + getattr(pair, which)])
                n = len(tiny_lm.tokenizer(pair.prompt)["input_ids"])
                with tiny_lm.hooked(hook) as model, torch.no_grad():
                    logp = model(ids)[0].double().log_softmax(-1)
                lp[which] = sum(float(logp[t - 1, ids[0, t]]) for t in range(n, ids.shape[1]))
            # float32 model, gaps of O(10) nats summed over <= 3 tokens: 1e-4 absolute is ~100 ulp
            assert sweep.gaps[a_i, i] == pytest.approx(lp["positive"] - lp["negative"], abs=1e-4)
        losses, kls = [], []
        for text in bg:
            ids, _ = tiny_lm.tokenize([text])
            with tiny_lm.locked() as model, torch.no_grad():
                base = model(ids)[0, :-1].double().log_softmax(-1)
            with tiny_lm.hooked(hook) as model, torch.no_grad():
                st = model(ids)[0, :-1].double().log_softmax(-1)
            losses.append(float(F.nll_loss(st, ids[0, 1:])))
            kls.append(float((base.exp() * (base - st)).sum(-1).mean()))
        assert sweep.background_loss[a_i] == pytest.approx(np.mean(losses), abs=1e-5)
        assert sweep.kl[a_i] == pytest.approx(np.mean(kls), abs=1e-5)
        assert sweep.background_loss_sem[a_i] == pytest.approx(np.std(losses, ddof=1) / np.sqrt(2), abs=1e-5)
    assert sweep.kl[1] == 0.0 and np.all(sweep.kl[[0, 2]] > 0)


def test_figures_build(tiny_lm):
    from analysis.steering.figures import alpha_sweep_figure, layer_search_figure, sae_links_figure
    from analysis.steering.evaluation import SaeLinks

    vec, search, acts = build_steering_vector(tiny_lm, PAIRS, SteeringConfig(score="paper"))
    fig = layer_search_figure(layer_search(acts, "paper"), chosen=1)
    assert any("chosen layer 1" in (t.name or "") for t in fig.data)
    sweep = compute_alpha_sweep(tiny_lm, vec, PAIRS.test, [1.0], background=["the day ."], n_null=2)
    assert len(alpha_sweep_figure(sweep).data) == 4  # null band, gap change, loss, KL
    links = SaeLinks("toy", 1, np.array([3, 1]), np.array([0.5, -0.2]))
    assert list(sae_links_figure(links).data[0].x) == [-0.2, 0.5]


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def sentiment(real_lm):
    ps = load_pair_set("sentiment")
    # layer 0 pinned: the measured numbers below are for it (the behavioural search has its own test)
    vec, search, _ = build_steering_vector(real_lm, ps, SteeringConfig(score="paper"), layer=0)
    return ps, vec, search


@pytest.mark.real_model
def test_real_hf_twin_and_bridge_paths_agree_when_steered(real_lm, sentiment):
    from analysis.steering.generation import hf_twin

    _, vec, _ = sentiment
    twin = hf_twin(real_lm)
    shared = {p.data_ptr() for p in real_lm.model.original_model.parameters()}
    assert all(p.data_ptr() in shared for p in twin.parameters())  # no copy of the weights
    cfg = dict(max_new_tokens=12, stop_at_eos=False)
    for alpha in (0.0, 2.0):
        s = Steering(vec, alpha, (3,))
        hf = generate(real_lm, "I think this restaurant is", GenerationConfig(path="hf", **cfg), steering=s)
        br = generate(real_lm, "I think this restaurant is", GenerationConfig(path="bridge", **cfg), steering=s)
        print(alpha, repr(hf.text))
        assert hf.new_tokens == br.new_tokens
    real_lm.assert_clean()
    # transformers adds its own output-capturing hooks on first use; none of ours may remain
    left = [h for layer in twin.model.layers for h in layer._forward_hooks.values()]
    assert not [h for h in left if "torch_add" in getattr(h, "__qualname__", "")]


@pytest.mark.real_model
def test_real_sentiment_vector_raises_heldout_gap_monotonically(real_lm, sentiment):
    ps, vec, search = sentiment
    print("layer search", search.score, dict(zip(search.layers.tolist(), np.round(search.scores, 6).tolist())))
    assert search.degenerate  # the paper score ties on most layers on Gemma (massive dims)
    # Measured (Gemma-3-270M, layer 0): the gap rises from α = -2 to 1
    # (-4.49, -2.72, -0.87, 1.25, 4.28, 5.68) and falls again at α = 2 (4.71): over-steering.
    alphas = [-2.0, -1.0, -0.5, 0.5, 1.0]
    sweep = compute_alpha_sweep(real_lm, vec, ps.test, alphas, background=[], n_null=0)
    print("chosen layer", vec.layers[0], "alpha", sweep.alphas.tolist(), "gap", np.round(sweep.gap_mean, 3).tolist())
    assert np.all(np.diff(sweep.gap_mean) > 0)
    real_lm.assert_clean()


def test_cli_steer_writes_vector_figures_and_numbers(tiny_lm, tmp_path, monkeypatch):
    from analysis import cli
    from analysis.commands import steer

    monkeypatch.setattr(steer, "load_from_args", lambda args: tiny_lm)
    monkeypatch.setattr("analysis.concepts.background_texts", lambda *a, **k: ("the day was good .",))
    rc = cli.main(["steer", "--pairs", "sentiment", "--out", str(tmp_path), "--alpha=-1,1", "--formats", "",
                   "--no-cav-shifts", "--null", "2", "--strengths", "0.5", "--generate", "--max-new-tokens", "3",
                   "--prompt", "the food was"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["alpha_sweep"]["alpha"] == [-1.0, 0.0, 1.0] and summary["n_test"] == 16
    assert summary["search_rule"] == "behavioural" and isinstance(summary["degenerate"], bool)
    assert list(summary["behavioural_scores"]) == ["0"] and summary["search"]["n_val_pairs"] == 16
    sweep = summary["alpha_sweep"]
    assert sweep["n_null"] == 2 and len(sweep["null_low"]) == 3 and sweep["kl"][1] == 0.0
    assert all(lo <= hi for lo, hi in zip(sweep["null_low"], sweep["null_high"]))
    gen = summary["generations"]
    assert gen["alpha"] == -1.6 and gen["repetition_penalty"] == 1.5 and len(gen["items"]) == 1
    assert SteeringVector.load(tmp_path / "steering_vector.safetensors").layers == (summary["chosen_layer"],)
    assert (tmp_path / "alpha_sweep.csv").exists() and (tmp_path / "layer_search.recipe.json").exists()
    assert cli.main(["steer", "--pairs", "nope", "--out", str(tmp_path)]) == 2


def test_recipes_registered():
    from analysis.recipes import registry

    assert {"steering_layer_search", "steering_alpha_sweep", "steering_cav_links", "steering_sae_links"} <= set(registry())


def test_cav_links_are_cosines_with_the_cavs(tiny_lm):
    from analysis.concepts.cavs import CavConfig, fit_cavs
    from analysis.concepts.sets import background_texts, load_concepts
    from analysis.steering.figures import cav_links_figure
    from analysis.steering.evaluation import compute_cav_links

    vec = _vector(tiny_lm)
    names = ("positive_sentiment", "negative_sentiment")
    links = compute_cav_links(tiny_lm, vec, concepts=names)
    ref = fit_cavs(tiny_lm, load_concepts(), background_texts(),
                   CavConfig(concepts=names, method="mean_diff", n_folds=2, n_random=1))
    for c in range(2):
        for i, layer in enumerate(ref.layers):
            v, w = vec.vectors[layer], ref.vectors[c, i]
            assert links.cosine[c, i] == pytest.approx(float(v @ w / np.linalg.norm(v) / np.linalg.norm(w)), rel=1e-5)
    assert len(cav_links_figure(links, layer=1).data[0].x) == 2
