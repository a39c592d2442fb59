"""Behavioural layer search, the steered scoring pass, the null band and decoding options (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.activations import resid_hook
from analysis.steering import (
    GenerationConfig, Pair, PairSet, SearchConfig, SteeringConfig, SteeringVector, behavioural_search,
    build_steering_vector, compute_alpha_sweep, generate, layer_scores, prepare_batch, score_batch,
    split_validation,
)
from tests.conftest import make_tiny_lm

VAL = tuple(Pair(p, " good", " bad", "train") for p in (
    "the food was", "the movie was", "the day was", "the service was", "the cat is", "the film was"))
BACKGROUND = ["the dog went to paris .", "a man and a woman came in", "the night was cold and blue"]


@pytest.fixture(scope="module")
def lm64():
    lm = make_tiny_lm(seed=5, n_layers=4, name="tiny64")
    lm.model.to(torch.float64)
    return lm


def _plain_gap(lm, pair, deltas=None):
    hooks = [(resid_hook(l), (lambda d: lambda r, hook: r + d)(torch.as_tensor(v))) for l, v in (deltas or {}).items()]
    out = {}
    for which in ("positive", "negative"):
        px = lm.tokenizer(pair.prompt)["input_ids"]
        py = lm.tokenizer(getattr(pair, which), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([px + py])
        with lm.hooked(hooks) as model, torch.no_grad():
            logp = model(ids)[0].log_softmax(-1)
        out[which] = float(sum(logp[len(px) + k - 1, t] for k, t in enumerate(py)))
    return out["positive"] - out["negative"]


def test_selected_position_pass_equals_full_forward_in_float64(lm64):
    batch = prepare_batch(lm64, VAL[:3], BACKGROUND)
    delta = {2: np.random.default_rng(0).normal(size=lm64.d_model) * 3}
    s = score_batch(lm64, batch, delta)
    for i, pair in enumerate(VAL[:3]):
        assert s.gap[i] == pytest.approx(_plain_gap(lm64, pair, delta), rel=1e-9, abs=1e-9)
    ids, _ = lm64.tokenize([BACKGROUND[0]])
    with lm64.hooked([(resid_hook(2), lambda r, hook: r + torch.as_tensor(delta[2]))]) as model, torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    assert s.bg_nll[0] == pytest.approx(float(nll), rel=1e-9)
    lm64.assert_clean()


def _mixed_cells(lm, batch, rng):
    """Cells with different layers, strengths, row subsets, a two-layer cell, KL and read-out."""
    from analysis.steering.forward import Cell

    d = lambda: rng.normal(size=lm.d_model) * 2  # noqa: E731
    pairs = tuple(range(2 * batch.n_pairs))
    return [Cell({0: d()}, kl=True, readout=True), Cell({1: d()}, rows=pairs), Cell({2: d(), 0: d()}, kl=True),
            Cell({}, readout=True), Cell({1: d()}, rows=(0, 2 * batch.n_pairs + 1), kl=True)]


def _check_same(a, b, tol):
    for x, y in zip(a, b):
        for f in ("gap", "bg_nll", "bg_kl", "readout"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None), f
            if u is not None:
                np.testing.assert_array_equal(np.isnan(u), np.isnan(v))
                np.testing.assert_allclose(u, v, rtol=tol, atol=tol, equal_nan=True, err_msg=f)


def test_cells_sharing_passes_score_as_if_run_alone_in_float64(lm64, monkeypatch):
    """Packing many cells' rows into length-sorted passes (per-row deltas, zero for rows that do not
    steer a layer) changes nothing: exact in float64 against one cell per call."""
    from analysis.steering import forward

    batch = prepare_batch(lm64, VAL, BACKGROUND)
    base = score_batch(lm64, batch, keep_logp=True)
    cells = _mixed_cells(lm64, batch, np.random.default_rng(3))
    passes = []
    inner = forward._selected_logits
    monkeypatch.setattr(forward, "_selected_logits", lambda *a: passes.append(a[1].shape) or inner(*a))
    together = forward.score_cells(lm64, batch, cells, base_logp=base.bg_logp, readout_layer=3)
    n_together = len(passes)
    alone = [score_batch(lm64, batch, c.deltas, rows=c.rows, base_logp=base.bg_logp if c.kl else None,
                         readout_layer=3 if c.readout else None) for c in cells]
    assert n_together < len(passes) - n_together  # fewer, larger passes
    _check_same(together, alone, 1e-12)
    monkeypatch.setattr(forward, "PASS_TOKENS", 8)  # forces one short pass per few rows
    _check_same(forward.score_cells(lm64, batch, cells, base_logp=base.bg_logp, readout_layer=3), alone, 1e-12)
    lm64.assert_clean()


def test_twin_pass_matches_bridge_pass_and_plain_transformers(tiny_bridge_lm, monkeypatch):
    """On the bridge backend the scoring pass runs on the HF twin: same numbers as the bridge's own
    hooks and as a plain transformers forward (full log-softmax, torch hook adding the delta).
    Float32 on O(1) random-model logits, sums of <= 6 log-probs of size ~log(vocab): 1e-5 absolute."""
    from analysis.steering import forward

    lm, hf = tiny_bridge_lm
    pairs = (Pair("the food was", " good", " bad"), Pair("the dog went to", " paris .", " a man"))
    batch = prepare_batch(lm, pairs, BACKGROUND)
    assert forward._twin_for(lm) is not None
    base = score_batch(lm, batch, keep_logp=True)
    cells = _mixed_cells(lm, batch, np.random.default_rng(4))
    twin = forward.score_cells(lm, batch, cells, base_logp=base.bg_logp, readout_layer=2)
    monkeypatch.setattr(forward, "USE_TWIN", False)
    assert forward._twin_for(lm) is None
    bridge_base = score_batch(lm, batch, keep_logp=True)
    bridge = forward.score_cells(lm, batch, cells, base_logp=bridge_base.bg_logp, readout_layer=2)
    _check_same(twin, bridge, 1e-5)
    for c, got in zip(cells, twin):  # oracle: plain HF, one text at a time
        handles = [hf.model.layers[l].register_forward_hook(forward.torch_add(torch.as_tensor(v, dtype=torch.float32)))
                   for l, v in c.deltas.items()]
        try:
            with torch.no_grad():
                lps = [hf(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1) for ids in batch.ids]
        finally:
            for h in handles:
                h.remove()
        rows = range(batch.n_rows) if c.rows is None else c.rows
        for i, pair in enumerate(pairs):
            if i in rows and i + 2 in rows:
                s = [sum(float(lps[r][int(batch.n_prompt[r]) - 1 + k, batch.ids[r][int(batch.n_prompt[r]) + k]])
                         for k in range(int(batch.n_response[r]))) for r in (i, i + 2)]
                assert got.gap[i] == pytest.approx(s[0] - s[1], abs=1e-5)
        for b in range(batch.n_bg):
            r = 4 + b
            if r in rows:
                ids = batch.ids[r]
                nll = -float(np.mean([float(lps[r][k, ids[k + 1]]) for k in range(len(ids) - 1)]))
                assert got.bg_nll[b] == pytest.approx(nll, abs=1e-5)
    lm.assert_clean()
    from analysis.steering import hf_twin

    assert not [h for layer in hf_twin(lm).model.layers for h in layer._forward_hooks.values()
                if "torch_add" in getattr(h, "__qualname__", "")]
    assert not hf_twin(lm).model.norm._forward_hooks


def _gradient_direction(lm, pairs, layer):
    """d(mean gap)/d(resid_post[layer]) summed over positions: the steepest steering direction there."""
    grads = []
    for pair in pairs:
        for sign, which in ((1.0, "positive"), (-1.0, "negative")):
            px = lm.tokenizer(pair.prompt)["input_ids"]
            py = lm.tokenizer(getattr(pair, which), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([px + py])
            delta = torch.zeros(lm.d_model, dtype=lm.dtype, requires_grad=True)
            with lm.hooked([(resid_hook(layer), lambda r, hook: r + delta)]) as model:
                logp = model(ids)[0].log_softmax(-1)
                lp = sum(logp[len(px) + k - 1, t] for k, t in enumerate(py))
                (g,) = torch.autograd.grad(sign * lp, delta)
            grads.append(g.detach().numpy())
    return np.mean(grads, 0)


@pytest.mark.parametrize("planted", [1, 2])
def test_search_finds_the_layer_with_a_planted_steerable_direction(lm64, planted):
    """At ``planted`` the vector is the gap's gradient direction; elsewhere random directions of any norm."""
    rng = np.random.default_rng(planted)
    vectors = rng.normal(size=(lm64.n_layers, lm64.d_model)) * rng.uniform(0.1, 10, size=(lm64.n_layers, 1))
    vectors[planted] = _gradient_direction(lm64, VAL, planted)
    norms = np.full(lm64.n_layers, 1.0)  # equal residual scale: only the direction can decide
    cfg = SearchConfig(strengths=(0.5, 1.0, 2.0), loss_budget=10.0, max_background=3)
    res = behavioural_search(lm64, vectors, norms, VAL, BACKGROUND, range(lm64.n_layers), cfg)
    print(np.round(res.gain, 3), res.scores)
    assert res.best == planted
    assert res.gain[planted].min() > 0
    # the alpha actually used is strength x norm / |v|: the vector's own norm does not matter
    np.testing.assert_allclose(res.alphas * np.linalg.norm(vectors, axis=1)[:, None],
                               np.tile(cfg.strengths, (lm64.n_layers, 1)), rtol=1e-12)


def test_budget_rule_interpolates_gain_at_the_budget_and_ratio_rule():
    from analysis.steering import RULES

    gain = np.array([[1.0, 5.0], [2.0, 3.0]])
    cost = np.array([[0.1, 0.9], [0.2, 0.3]])
    cfg = SearchConfig(loss_budget=0.5, strengths=(1.0, 2.0))
    # layer 0: (0.1, 1) within budget; segment (0.1, 1)-(0.9, 5) crosses 0.5 at gain 1 + 4 * 0.4 / 0.8 = 3
    # layer 1: both cells within budget, best 3.0; nothing is extrapolated past cost 0.3
    np.testing.assert_allclose(layer_scores(gain, cost, cfg), [3.0, 3.0])
    _, strength = RULES["budget"](gain, cost, cfg)
    np.testing.assert_allclose(strength, [1.5, 2.0])
    # every cell over budget: the first segment from the origin, 1 * 0.5 / 9 and 2 * 0.5 / 9
    np.testing.assert_allclose(layer_scores(gain, np.full((2, 2), 9.0), cfg), [0.5 / 9, 1.0 / 9])
    ratio = SearchConfig(rule="ratio", ratio_floor=0.05, strengths=(1.0, 2.0))
    np.testing.assert_allclose(layer_scores(gain, cost, ratio), [10.0, 10.0])
    np.testing.assert_allclose(layer_scores(gain, np.zeros((2, 2)), ratio), [100.0, 60.0])  # floor
    with pytest.raises(ValueError, match="budget"):
        SearchConfig(rule="best")


def test_validation_split_is_seeded_disjoint_and_capped():
    fit, val, in_sample = split_validation(64, SearchConfig())
    assert len(val) == 16 and len(fit) == 48 and not in_sample and not set(fit) & set(val)
    assert np.array_equal(val, split_validation(64, SearchConfig())[1])
    assert not np.array_equal(val, split_validation(64, SearchConfig(seed=1))[1])
    fit, val, in_sample = split_validation(3, SearchConfig())
    assert in_sample and list(fit) == list(val) == [0, 1, 2]


def test_default_build_runs_the_behavioural_search_on_held_out_train_pairs(tiny_lm):
    pairs = PairSet("toy", VAL + tuple(Pair(p, " great", " terrible", "train") for p in ("a day", "a dog")))
    vec, search, _ = build_steering_vector(tiny_lm, pairs, background=BACKGROUND)
    assert search.score == "behavioural" and vec.meta["rule"] == "behavioural"
    summary = vec.meta["search"]
    assert summary["n_val_pairs"] == 2 and summary["n_fit_pairs"] == 6 and not summary["in_sample"]
    assert vec.layers == (search.best,) and len(summary["scores"]) == 1  # first half of 3 layers
    from analysis.steering.figures import search_figure

    fig = search_figure(search)
    assert sum("chosen: layer" in (t.name or "") for t in fig.data) == 2 and len(fig.data) == 4


def test_search_can_be_stopped_and_keeps_finished_layers(lm64, monkeypatch):
    from analysis.progress import Stopped
    from analysis.steering import search

    monkeypatch.setattr(search, "GROUP_TOKENS", 1)  # one cell per group: a Stop lands between layers

    calls = []

    def progress(f, stage):
        calls.append(stage)
        if "layer 2" in stage:
            raise Stopped("user")

    vectors = np.random.default_rng(0).normal(size=(lm64.n_layers, lm64.d_model))
    res = behavioural_search(lm64, vectors, np.ones(lm64.n_layers), VAL[:2], BACKGROUND[:1], range(4),
                             SearchConfig(strengths=(1.0,)), progress=progress)
    assert res.stopped and np.isfinite(res.gain[:2]).all() and np.isnan(res.gain[2:]).all()
    assert res.best in (0, 1)
    lm64.assert_clean()


# ---------------------------------------------------------------- null band


def test_null_band_calibration_and_planted_vector(lm64):
    """A random vector is exchangeable with the K null directions: outside [min, max] w.p. 2/(K+1)."""
    layer, k, trials = 1, 4, 20
    outside = 0
    for t in range(trials):
        v = np.random.default_rng(100 + t).normal(size=(lm64.n_layers, lm64.d_model))
        vec = SteeringVector(lm64.name, v, (layer,))
        sw = compute_alpha_sweep(lm64, vec, VAL[:4], [2.0], background=[], n_null=k, seed=t)
        g, band = sw.gain[1], sw.null_gain[1]
        outside += not band.min() <= g <= band.max()
    # expected 2/5 = 0.4; binomial s.d. over 20 trials 0.11: accept 0.4 ± 2.5 s.d. (3..13 of 20)
    assert 3 <= outside <= 13, outside
    grad = np.zeros((lm64.n_layers, lm64.d_model))
    grad[layer] = _gradient_direction(lm64, VAL[:4], layer)
    sw = compute_alpha_sweep(lm64, SteeringVector(lm64.name, grad, (layer,)), VAL[:4], [2.0], background=[],
                             n_null=k)
    lo, hi = sw.null_band
    assert sw.gain[1] > hi[1]  # the planted direction clears the band of same-norm random ones


# ---------------------------------------------------------------- decoding options


def test_repetition_penalty_top_k_top_p_match_transformers_processors():
    from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

    from analysis.steering.generation import _penalise

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 1.0])
    seen = [0, 1, 1]
    want = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([seen]), logits[None].clone())[0]
    torch.testing.assert_close(_penalise(logits, seen, 1.5), want)
    # filtered support: our sampler's kept tokens equal the HF warpers' finite logits
    from analysis.steering import generation

    kept = {}
    for name, cfg, warper in (("k", GenerationConfig(do_sample=True, top_k=2), TopKLogitsWarper(2)),
                              ("p", GenerationConfig(do_sample=True, top_p=0.7), TopPLogitsWarper(0.7))):
        draws = set()
        for seed in range(200):
            torch.manual_seed(seed)
            draws.add(generation._pick(logits.clone(), cfg))
        kept[name] = draws
        assert draws == set(torch.isfinite(warper(None, logits[None].clone())[0]).nonzero()[:, 0].tolist())


def test_tl_path_repetition_penalty_changes_greedy_text_like_hf_rule(tiny_lm):
    plain = generate(tiny_lm, "the food was", GenerationConfig(max_new_tokens=12, stop_at_eos=False))
    pen = generate(tiny_lm, "the food was", GenerationConfig(max_new_tokens=12, stop_at_eos=False,
                                                             repetition_penalty=50.0))
    assert len(set(pen.new_tokens)) >= len(set(plain.new_tokens))
    assert len(set(pen.new_tokens)) == len(pen.new_tokens)  # a huge penalty never repeats in 12 tokens


def test_paper_preset_is_the_authors_setting():
    from analysis.steering import PRESETS

    p = PRESETS["paper"]
    assert p.alpha == pytest.approx(2 * -0.8)
    assert p.config.repetition_penalty == 1.5 and p.config.max_new_tokens == 200 and not p.config.do_sample


def test_config_rejects_bad_search_settings():
    for bad in (dict(strengths=()), dict(strengths=(0.0,)), dict(loss_budget=0), dict(val_fraction=1.0)):
        with pytest.raises(ValueError):
            SearchConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        SearchConfig.from_dict({"rule": "budget", "bogus": 1})
    assert SteeringConfig().score == "behavioural"


def test_cav_shift_is_the_mean_projection_change_in_unsteered_sds(tiny_lm):
    from analysis.steering import CavProbe

    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(2, tiny_lm.d_model))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    probe = CavProbe(("a", "b"), 2, dirs)
    v = rng.normal(size=(tiny_lm.n_layers, tiny_lm.d_model))
    vec = SteeringVector(tiny_lm.name, v, (2,))  # steer the read-out layer itself: the shift is exact
    sw = compute_alpha_sweep(tiny_lm, vec, VAL[:2], [1.5], background=BACKGROUND, n_null=0, cavs=probe)
    last = []
    for text in BACKGROUND:
        ids, _ = tiny_lm.tokenize([text])
        with tiny_lm.locked() as model, torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=resid_hook(2))
        last.append(cache[resid_hook(2)][0, -1].numpy())
    sd = (np.stack(last) @ dirs.T).std(0, ddof=1)
    # adding 1.5 v at the read-out layer moves every projection by 1.5 <v, c>; float32: 1e-4 of O(1) values
    np.testing.assert_allclose(sw.cav_shift[1], 1.5 * (dirs @ v[2]) / sd, rtol=1e-4)
    np.testing.assert_allclose(sw.cav_shift[0], 0.0, atol=1e-12)


def test_stopping_at_the_budget_measures_each_layer_up_to_its_first_over_budget_cell(lm64):
    """The fast search measures, per layer, exactly the strengths up to the first cell over budget (same
    numbers as the full sweep there, NaN after), and scores what it measured with the same rule."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(lm64.n_layers, lm64.d_model))
    norms = np.full(lm64.n_layers, 1.0)
    base = dict(strengths=(4.0, 16.0, 64.0), max_background=3)
    full = behavioural_search(lm64, vectors, norms, VAL, BACKGROUND, range(lm64.n_layers),
                              SearchConfig(stop_over_budget=False, **base))
    budget = float(np.quantile(full.cost[full.cost > 0], 0.3))
    cfg = SearchConfig(loss_budget=budget, **base)
    fast = behavioural_search(lm64, vectors, norms, VAL, BACKGROUND, range(lm64.n_layers), cfg)
    for i in range(lm64.n_layers):
        over = np.flatnonzero(full.cost[i] > budget)
        n = over[0] + 1 if len(over) else full.cost.shape[1]
        assert np.isfinite(fast.gain[i, :n]).all() and np.isnan(fast.gain[i, n:]).all(), i
        np.testing.assert_allclose(fast.gain[i, :n], full.gain[i, :n], rtol=0, atol=1e-9)
    assert np.isnan(fast.gain).any(), "the budget should cut some layer short"
    np.testing.assert_allclose(fast.scores, layer_scores(fast.gain, fast.cost, cfg), rtol=0, atol=0)


def test_budget_score_ignores_cells_past_the_first_over_budget_one_when_cost_rises():
    """Why stopping is safe: with cost rising in strength, the cells after the first over-budget one
    do not change the budget score."""
    rng = np.random.default_rng(0)
    cost = np.cumsum(rng.uniform(0.05, 0.5, size=(6, 4)), axis=1)
    gain = rng.normal(size=(6, 4)) * 3
    cfg = SearchConfig(loss_budget=0.6, strengths=(0.25, 0.5, 1.0, 2.0))
    cut_gain, cut_cost = gain.copy(), cost.copy()
    for i in range(6):
        over = np.flatnonzero(cost[i] > cfg.loss_budget)
        if len(over):
            cut_gain[i, over[0] + 1:] = np.nan
            cut_cost[i, over[0] + 1:] = np.nan
    np.testing.assert_allclose(layer_scores(cut_gain, cut_cost, cfg), layer_scores(gain, cost, cfg), rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny_bridge64(tiny_bridge_lm):
    """The tiny random Gemma-3 (sliding window 4) loaded again in float64, for exact comparisons:
    a copy of its own, outside the process-wide model cache that other tests share."""
    from analysis.models import _load_uncached

    lm = _load_uncached(tiny_bridge_lm[0].name, "cpu", None, "bridge", lambda msg: None)
    lm.model.to(torch.float64)
    return lm


def test_packed_pair_trees_score_as_one_row_per_text(tiny_bridge64, monkeypatch):
    """The twin's packed passes (a pair's prompt once, both completions after it, texts end to end with
    block masks, position ids and the sliding window of 4) equal one right-padded row per text on the
    same twin. Float64 weights, but HF's eager attention takes its softmax in float32 (eps 1.2e-7), on
    rows of different widths: 1e-6 relative on sums of <= 6 log-probs of size ~log(vocab)."""
    from analysis.steering import forward, packing

    lm = tiny_bridge64
    assert lm.dtype == torch.float64 and forward._twin_for(lm) is not None
    pairs = (Pair("the food was", " good", " bad"), Pair("the dog went to", " paris .", " a man"),
             Pair("a man went", " to the food", " ."))
    batch = prepare_batch(lm, pairs, BACKGROUND)
    base = score_batch(lm, batch, keep_logp=True)
    cells = _mixed_cells(lm, batch, np.random.default_rng(5))
    items = [(k, r) for k, c in enumerate(cells) for r in (range(batch.n_rows) if c.rows is None else c.rows)]
    segs = packing.segments(batch, cells, items, forward._positions)
    assert sum(s.branch < len(s) for s in segs) == 4 * 3  # the four cells that score every pair: a tree per pair
    assert sum(len(s) for s in segs) < sum(len(batch.ids[r]) for _, r in items)  # each prompt once
    shapes = []
    inner = forward._selected_logits
    monkeypatch.setattr(forward, "_selected_logits", lambda *a: shapes.append(tuple(a[1].shape)) or inner(*a))
    packed = forward.score_cells(lm, batch, cells, base_logp=base.bg_logp, readout_layer=2)
    n_packed = sum(a * b for a, b in shapes)
    shapes.clear()
    monkeypatch.setattr(forward, "PACK", False)
    rows_base = score_batch(lm, batch, keep_logp=True)
    rows = forward.score_cells(lm, batch, cells, base_logp=rows_base.bg_logp, readout_layer=2)
    assert n_packed < sum(a * b for a, b in shapes)  # fewer (padded) tokens through the model
    _check_same(packed, rows, 1e-6)
    monkeypatch.setattr(forward, "PACK", True)
    monkeypatch.setattr(packing, "ROW_TOKENS", 1)  # every segment in a row of its own
    _check_same(forward.score_cells(lm, batch, cells, base_logp=base.bg_logp, readout_layer=2), rows, 1e-6)
    lm.assert_clean()
