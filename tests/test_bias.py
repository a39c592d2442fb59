"""Bias asymmetry (Methods §2): hand-computed numbers, planted activations, oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.bias.alignment import (
    ConceptStats,
    SaeView,
    align,
    bias_values,
    choose_layers,
    keep_top_k,
    percentile_ci,
    shared_latents,
    summarise,
    REPRESENTATIONS,
)
from analysis.bias import BiasConfig, bias_from_arrays, load_presets, preset_config
from analysis.bias.behaviour import (
    aggregate_words,
    behavioural_bias,
    fill_templates,
    load_templates,
    spearman,
)
from analysis.bias.resampling import bootstrap_draws, mean_diff
from analysis.concepts.cavs import CavConfig, fit_cavs_arrays
from analysis.concepts.fitters import fit_mean_diff
from analysis.concepts.sets import ConceptSet, load_concepts


# ---------------------------------------------------------------- hand-computed

def test_bias_on_3d_toy_vectors():
    t, r1, r2 = np.array([1.0, 0, 0]), np.array([1.0, 1, 0]), np.array([0.0, 1, 0])
    assert align(t, r1) == pytest.approx(1 / math.sqrt(2))
    assert bias_values(t, r1, r2) == pytest.approx(1 / math.sqrt(2) - 0.0)
    # |t| = |r1| = 3, t·r1 = 0; t·r2 = 2 with |r2| = 1: Bias = 0 − 2/3.
    t, r1, r2 = np.array([1.0, 2, 2]), np.array([2.0, 1, -2]), np.array([0.0, 0, 1])
    assert bias_values(t, r1, r2) == pytest.approx(-2 / 3)
    assert bias_values(t, r1, r2, signed=False) == pytest.approx(2 / 3)
    # Scale does not matter; a zero vector has no direction.
    assert bias_values(5 * t, 0.1 * r1, 7 * r2) == pytest.approx(-2 / 3)
    assert align(np.zeros(3), r1) == 0.0  # analysis.vectors.cosine: no direction, no alignment
    # Batched over leading axes (layers): each row is its own cosine.
    stacked = bias_values(np.stack([t, t]), np.stack([r1, r2]), np.stack([r2, r1]))
    np.testing.assert_allclose(stacked, [-2 / 3, 2 / 3])


ACC = np.array([
    [0.95, 0.85, 0.92, 0.99],  # target
    [0.91, 0.95, 0.95, 0.89],  # ref1
    [0.90, 0.99, 0.93, 0.97],  # ref2
])


def test_layer_rule_threshold_and_single_layer():
    bias = np.array([0.2, 5.0, 0.4, 5.0])
    mask = choose_layers(ACC, [0, 1, 2, 3], "threshold", threshold=0.9)
    assert mask.tolist() == [True, False, True, False]  # layer 1: target 0.85, layer 3: ref1 0.89
    assert summarise(bias, mask) == pytest.approx(0.3)
    assert summarise(bias, choose_layers(ACC, [0, 1, 2, 3], "layer", layer=3)) == pytest.approx(5.0)
    mask = choose_layers(ACC, [0, 1, 2, 3], "threshold", threshold=0.85)
    assert summarise(bias, mask) == pytest.approx((0.2 + 5.0 + 0.4 + 5.0) / 4)
    # An SAE representation exists at one layer only: the others never qualify.
    mask = choose_layers(ACC, [0, 1, 2, 3], "threshold", threshold=0.9, available=np.array([0, 0, 1, 0], bool))
    assert mask.tolist() == [False, False, True, False]


def test_layer_rule_explains_when_nothing_qualifies():
    with pytest.raises(ValueError, match=r"no layer has CAV accuracy ≥ 0.99.*best: 0.92 at layer 2"):
        choose_layers(ACC, [0, 1, 2, 3], "threshold", threshold=0.99)
    with pytest.raises(ValueError, match="valid layers are"):
        choose_layers(ACC, [0, 1, 2, 3], "layer", layer=7)


def test_top_k_and_sae_representations_by_hand():
    np.testing.assert_array_equal(keep_top_k(np.array([0.1, -3.0, 2.0, 0.5]), 2), [0, -3.0, 2.0, 0])
    np.testing.assert_array_equal(keep_top_k(np.array([[1.0, 2.0], [4.0, -3.0]]), 1), [[0, 2.0], [4.0, 0]])
    w_dec = np.array([[2.0, 0, 0], [0, 3.0, 0], [1.0, 1.0, 0], [0, 0, 1.0]])
    sae = SaeView(layer=0, encode=lambda x: x, W_dec=w_dec)
    cav = np.array([1.0, 0, 0])
    proj = REPRESENTATIONS["sae-proj"](ConceptStats(cav), sae, 2)
    np.testing.assert_allclose(proj, [1.0, 0, 1 / math.sqrt(2), 0])
    diff = REPRESENTATIONS["sae-diff"](ConceptStats(cav, np.array([0.5, -2.0, 0.1, 1.0])), sae, 2)
    np.testing.assert_allclose(diff, [0, -2.0, 0, 1.0])
    np.testing.assert_allclose(REPRESENTATIONS["dense"](ConceptStats(cav), None, 2), cav)


def test_shared_latents_lists_top_k_and_overlap():
    reps = {"t": np.array([0, 3.0, 0, -1.0, 0]), "a": np.array([2.0, 0.5, 0, 0, 0]), "b": np.array([0, 0, 1.0, 4.0, 0])}
    shared = shared_latents(reps, ["t"], ["a", "b"], layer=6)
    assert shared.latents["t"].tolist() == [1, 3]
    assert shared.overlap[("t", "a")].tolist() == [1]
    assert shared.overlap[("t", "b")].tolist() == [3]
    frame = shared.to_frame()
    row = frame[(frame.concept == "t") & (frame.latent == 3)].iloc[0]
    assert row["shared_with"] == "b" and row["value"] == -1.0


def test_percentile_interval_and_recentring():
    samples = np.arange(1, 101, dtype=float)
    lo, hi = percentile_ci(samples, 0.9)
    assert (lo, hi) == pytest.approx((np.percentile(samples, 5), np.percentile(samples, 95)))
    lo, hi = percentile_ci(samples, 0.9, centre=0.0)
    assert (lo, hi) == pytest.approx((np.percentile(samples, 5) - 50.5, np.percentile(samples, 95) - 50.5))


# ---------------------------------------------------------------- resampling

def _planted(seed, means, n=40, m=160, d=24, n_layers=2):
    rng = np.random.default_rng(seed)
    make = lambda mu, k: np.stack([rng.normal(size=(k, d)) + mu for _ in range(n_layers)])  # noqa: E731
    return {name: make(mu, n) for name, mu in means.items()}, make(0.0, m)


E = 4.0 * np.eye(24)


def _run(positives, negatives, ref1="ra", ref2="rb", **kw):
    cfg = BiasConfig(targets=("tt",), ref1=ref1, ref2=ref2, **kw)
    cavs = fit_cavs_arrays(positives, negatives, CavConfig(concepts=cfg.concepts, method=cfg.cav_method, n_random=1), [0, 1])
    return bias_from_arrays(positives, negatives, cavs.vectors, cavs.accuracy, cfg, [0, 1])


@pytest.mark.parametrize("cav_method", ["mean_diff", "logistic"])
def test_planted_direction_gives_the_right_sign_and_a_ci_excluding_zero(cav_method):
    # The target shares direction e0 with ref1 and nothing with ref2: expected Bias ≈ +0.5.
    pos, neg = _planted(0, {"tt": E[0] + E[1], "ra": E[0] + E[2], "rb": E[3] + E[4]})
    r = _run(pos, neg, cav_method=cav_method, **({"n_permutations": 19} if cav_method == "logistic" else {}))
    assert r.chosen.all() and not r.messages
    assert r.summary[0] > 0 and r.ci_low[0] > 0, (r.summary, r.ci_low, r.ci_high)
    assert r.ci_low[0] <= r.summary[0] <= r.ci_high[0]
    if cav_method == "mean_diff":  # the logistic null (per-permutation refits) is checked on the real model
        assert r.p_value[0] <= 0.01
    if cav_method == "mean_diff":
        assert r.summary[0] == pytest.approx(0.5, abs=0.1)
    flipped = _run(pos, neg, ref1="rb", ref2="ra", cav_method=cav_method,
                   **({"n_permutations": 19} if cav_method == "logistic" else {}))
    assert flipped.summary[0] == pytest.approx(-r.summary[0])
    assert flipped.ci_high[0] < 0


def test_references_from_one_distribution_give_a_ci_including_zero():
    pos, neg = _planted(1, {"tt": E[0] + E[1], "ra": E[2] + E[3], "rb": E[2] + E[3]})
    r = _run(pos, neg, cav_method="mean_diff")
    assert r.ci_low[0] < 0 < r.ci_high[0], (r.summary, r.ci_low, r.ci_high)
    assert r.p_value[0] > 0.01


def test_mean_diff_bootstrap_equals_cavs_fitter_on_the_same_resample():
    pos, neg = _planted(2, {"a": E[0]}, n=12, m=30)
    cavs, _ = bootstrap_draws(pos, neg, 3, seed=5)
    from analysis.bias.resampling import rng_for

    idx = rng_for(5, "bootstrap", "a").integers(0, 12, size=(3, 12))
    bg = rng_for(5, "bootstrap-background").integers(0, 30, size=(3, 30))
    for b in range(3):
        x = np.concatenate([pos["a"][1, idx[b]], neg[1, bg[b]]])
        y = np.r_[np.ones(12, int), np.zeros(30, int)]
        w, _ = fit_mean_diff(x, y)
        np.testing.assert_allclose(cavs["a"][b, 1], w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean_diff(pos["a"], neg)[0], pos["a"][0].mean(0) - neg[0].mean(0))


def test_sae_representation_runs_only_at_the_sae_layer():
    pos, neg = _planted(4, {"tt": E[0] + E[1], "ra": E[0] + E[2], "rb": E[3] + E[4]})
    w_dec = np.eye(24)[:12] + 0.01
    sae = SaeView(layer=1, encode=lambda x: np.maximum(x @ w_dec.T, 0), W_dec=w_dec)
    cfg = BiasConfig(targets=("tt",), ref1="ra", ref2="rb", representation="sae-diff", top_k=4, cav_method="mean_diff")
    cavs = fit_cavs_arrays(pos, neg, CavConfig(concepts=cfg.concepts, method="mean_diff", n_random=1), [0, 1])
    r = bias_from_arrays(pos, neg, cavs.vectors, cavs.accuracy, cfg, [0, 1], sae=sae)
    assert np.isnan(r.bias[0, 0]) and np.isfinite(r.bias[0, 1])
    assert r.chosen[0].tolist() == [False, True]
    assert r.summary[0] > 0
    assert 0 in r.shared.overlap[("tt", "ra")]  # latent 0 carries the shared direction


# ---------------------------------------------------------------- config

def test_config_validation_names_valid_values():
    with pytest.raises(ValueError, match="valid representations"):
        BiasConfig(targets=("food_aspect",), ref1="positive_sentiment", ref2="negative_sentiment", representation="pca")
    with pytest.raises(ValueError, match="valid rules"):
        BiasConfig(targets=("food_aspect",), ref1="positive_sentiment", ref2="negative_sentiment", layer_rule="best")
    with pytest.raises(ValueError, match="needs a non-negative layer"):
        BiasConfig(targets=("food_aspect",), ref1="positive_sentiment", ref2="negative_sentiment", layer_rule="layer")
    with pytest.raises(ValueError, match="two different"):
        BiasConfig(targets=("food_aspect",), ref1="positive_sentiment", ref2="positive_sentiment")
    with pytest.raises(ValueError, match="valid presets"):
        preset_config("nope")
    cfg = preset_config("review_sentiment", n_bootstrap=50)
    assert BiasConfig.from_dict(cfg.to_dict()) == cfg and hash(cfg)


def test_presets_name_shipped_concepts_with_mentions_and_words():
    concepts = load_concepts()
    for p in load_presets().values():
        for name in (*p.targets, p.ref1, p.ref2):
            assert name in concepts
        assert all(concepts[t].mentions for t in p.targets)
        assert concepts[p.ref1].words and concepts[p.ref2].words
        assert len(load_templates(p.templates)) >= 8


# ---------------------------------------------------------------- behaviour

def _set(name, mentions=(), words=()):
    texts = tuple(f"sample text number {i}" for i in range(10))
    return ConceptSet(name=name, title=name, description="", provenance="test", texts=texts,
                      mentions=tuple(mentions), words=tuple(words))


def test_behavioural_bias_scores_whole_words_like_a_manual_log_softmax(tiny_lm):
    """Oracle: one unbatched forward per prompt + word, float64 log-softmax, the word's tokens summed."""
    target = _set("tgt", mentions=["food", "service"])
    r1, r2 = _set("pos", words=["good", "very good"]), _set("neg", words=["bad", "terrible", "sad"])
    templates = ["the {target} was", "i love the {target} , it is very"]
    got = behavioural_bias(tiny_lm, target, r1, r2, templates)
    tok = tiny_lm.tokenizer
    assert max(len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in r1.words + r2.words) > 1  # word-level tokens: "very good" is two

    def word_logp(prompt, word):
        px = tok(prompt)["input_ids"]
        wy = tok(" " + word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm.model(torch.tensor([px + wy]))[0].double(), -1)
        return sum(float(logp[len(px) - 1 + j, t]) for j, t in enumerate(wy))

    diffs = []
    for template in templates:
        for mention in target.mentions:
            prompt = template.replace("{target}", mention)
            lme = lambda ws: math.log(sum(math.exp(word_logp(prompt, w)) for w in ws) / len(ws))  # noqa: E731
            diffs.append(lme(r1.words) - lme(r2.words))
    assert len(got.prompts) == 4
    # float32 forward vs float64 log-softmax of float32 logits: |logits| ~ 10, so 1e-4 is ample.
    np.testing.assert_allclose(got.per_prompt, diffs, rtol=1e-4, atol=1e-4)
    assert got.score == pytest.approx(np.mean(diffs), abs=1e-4)
    mean = behavioural_bias(tiny_lm, target, r1, r2, templates, aggregate="mean")
    assert mean.score != pytest.approx(got.score)
    paper = behavioural_bias(tiny_lm, target, r1, r2, templates, mode="paper")
    assert np.isfinite(paper.score) and len(paper.prompts) == 20


def test_word_aggregates_and_templates():
    logp = np.log(np.array([[0.2, 0.6]]))
    assert aggregate_words(logp, "logmeanexp")[0] == pytest.approx(math.log(0.4))
    assert aggregate_words(logp, "mean")[0] == pytest.approx((math.log(0.2) + math.log(0.6)) / 2)
    assert fill_templates(["a {target}", "b {target}"], ["x", "y"]) == ["a x", "a y", "b x", "b y"]
    with pytest.raises(ValueError, match="slot"):
        fill_templates(["no slot"], ["x"])
    with pytest.raises(ValueError, match="mentions"):
        fill_templates(["a {target}"], [])


def test_spearman_equals_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=11), rng.normal(size=11)
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    x, y = np.array([1, 2, 2, 3, 5.0, 5.0]), np.array([3, 1, 4, 1, 5, 9.0])  # ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, np.nan, 4], [1, 3, 2, 4]) == pytest.approx(spearmanr([1, 2, 4], [1, 3, 4]).statistic)
    assert np.isnan(spearman([1, 2], [2, 1]))


# ---------------------------------------------------------------- end to end (tiny model)

QUICK = dict(n_bootstrap=30, n_permutations=30, max_texts=12, max_background=40)


def test_compute_bias_end_to_end_on_tiny_model(tiny_lm):
    from analysis.bias import compute_bias, layer_frame, summary_frame

    cfg = BiasConfig(targets=("food_aspect", "service_aspect"), ref1="positive_sentiment",
                     ref2="negative_sentiment", acc_threshold=0.5, **QUICK)
    r = compute_bias(tiny_lm, cfg)
    assert r.bias.shape == (2, tiny_lm.n_layers) and r.accuracy.shape == (4, tiny_lm.n_layers)
    assert r.boot.shape == (2, 30) and r.perm.shape == (2, 30)
    for i in range(2):
        if r.chosen[i].any():
            assert r.ci_low[i] <= r.summary[i] <= r.ci_high[i]
            assert 1 / 31 <= r.p_value[i] <= 1 and r.minimum_detectable[i] > 0
        else:
            assert "no layer" in r.messages[cfg.targets[i]]
    assert len(layer_frame(r)) == 2 * tiny_lm.n_layers and list(summary_frame(r).target) == list(cfg.targets)
    strict = compute_bias(tiny_lm, BiasConfig(**{**cfg.to_dict(), "targets": cfg.targets, "acc_threshold": 1.0}))
    for i, t in enumerate(cfg.targets):  # nothing qualifies: every layer is used, and the message says so
        if "every layer instead" in strict.messages.get(t, ""):
            assert strict.chosen[i].all() and np.isfinite(strict.summary[i])
    with pytest.raises(ValueError, match="unknown concepts"):
        compute_bias(tiny_lm, BiasConfig(targets=("no_such_concept",), ref1="positive_sentiment", ref2="negative_sentiment"))


def test_figures_build_from_a_result(tiny_lm):
    from analysis.bias.compute import compute_bias
    from analysis.bias.behaviour import behaviour_data
    from analysis.bias.figures import behaviour_figure, heatmap_figure, shared_latents_figure, summary_figure

    r = compute_bias(tiny_lm, BiasConfig(targets=("food_aspect",), ref1="positive_sentiment",
                                         ref2="negative_sentiment", layer_rule="layer", layer=1, **QUICK))
    heat = heatmap_figure(r)
    assert heat.data[0].zmid == 0 and np.allclose(heat.data[0].z, r.bias, equal_nan=True)
    bars = summary_figure(r)
    assert bars.data[0].x[0] == pytest.approx(r.summary[0], nan_ok=True)
    # The tick label says what the test concludes, with its p (one target: no Holm).
    from analysis.bias.reading import decision
    from analysis.figures.theme import QUALITATIVE

    word = decision(r, 0)
    assert word in ("significant", "not significant") and bars.data[0].y[0].split("<br>")[1] == word
    assert "p " in bars.data[0].y[0] and "Holm" not in bars.data[0].y[0]
    # Each side has its own trace, named in the legend in the bar's colour.
    assert bars.layout.showlegend is True
    side = "Bias > 0" if r.summary[0] >= 0 else "Bias < 0"
    assert bars.data[0].name.startswith(side)
    assert bars.data[0].marker.color == (QUALITATIVE[0] if r.summary[0] >= 0 else QUALITATIVE[3])
    assert heat.layout.showlegend is True  # the dots and diamonds are named
    assert heat.data[1].name == "the layer the summary uses"  # layer_rule="layer"
    # the surviving-cell marker is in the legend, or the title says that no cell survives
    assert (any("correction" in t.name for t in heat.data[1:]) if r.surviving.any()
            else "no cell has p < 0.05 after max-|T| correction" in heat.layout.title.text.replace("<br>", " "))
    assert shared_latents_figure(None).layout.annotations
    assert r.shared is None or shared_latents_figure(r.shared).layout.height > 130
    data = behaviour_data([("p", "a", ("x", "y"), 0.1, 0.0, 0.2, 1.0, 0.1), ("p", "b", ("x", "y"), 0.3, 0.2, 0.4, 2.0, 0.1),
                           ("q", "c", ("x", "y"), -0.2, -0.3, 0.0, -1.0, 0.1)])
    assert data.rho == pytest.approx(1.0)
    assert "Spearman ρ = 1.00" in behaviour_figure(data).layout.title.text and data.n == 3


def test_shared_latents_table_is_tall_enough_for_its_wrapped_rows():
    from analysis.bias.alignment import SharedLatents
    from analysis.bias.figures import _TABLE_LINE_PX, _table_lines, shared_latents_figure

    def table(n_concepts, n_latents):
        names = [f"concept_{i}" for i in range(n_concepts)]
        ids = np.arange(1000, 1000 + n_latents)
        return SharedLatents(6, {c: ids for c in names}, {c: np.linspace(-0.6, 0.6, n_latents) for c in names},
                             {(c, "ref"): ids for c in names[:-1]})

    # Height grows with the rows, and with the lines a row wraps to.
    short, more_rows, longer = (shared_latents_figure(table(n, k)).layout.height for n, k in ((3, 2), (7, 2), (3, 20)))
    assert more_rows > short and longer > short
    # A cell of 8 "1234 (+0.12)," entries wraps (at the narrow reference width) to several lines.
    assert _table_lines(["x", ", ".join(["1234 (+0.12)"] * 8), "y"], [2, 6, 3]) >= 3
    assert _table_lines(["a", "b"], [1, 1]) == 1
    assert _TABLE_LINE_PX > 0


def test_cli_writes_figures_csv_and_json(tiny_lm, tmp_path, monkeypatch):
    import json

    from analysis import cli
    from analysis.commands import bias as bias_cmd

    monkeypatch.setattr(bias_cmd, "load_from_args", lambda args: tiny_lm)
    argv = ["bias", "--preset", "insurance_sentiment", "--acc-threshold", "0.5", "--out", str(tmp_path),
            "--formats", "svg", "--max-texts", "12", "--max-background", "40", "--n-bootstrap", "30",
            "--n-permutations", "30", "--compare", "insured_patient,uninsured_patient"]
    assert cli.main(argv) == 0
    for stem in ("bias_heatmap", "bias_summary", "bias_differential", "bias_shared_latents", "bias_behaviour"):
        assert (tmp_path / f"{stem}.svg").stat().st_size > 0
        assert (tmp_path / f"{stem}.recipe.json").exists()
    doc = json.loads((tmp_path / "bias.json").read_text())
    assert doc["targets"] == ["insured_patient", "uninsured_patient"]
    assert len(doc["bias"][0]) == tiny_lm.n_layers and len(doc["behaviour"]["behavioural"]) == 2
    assert (tmp_path / "bias_layers.csv").read_text().startswith("target,layer,bias")
    diff = doc["differential"]
    assert list(diff)[:7] == ["targets", "effect", "effect_size_d", "ci_low", "ci_high", "p_value", "n_permutations"]
    assert diff["targets"] == ["insured_patient", "uninsured_patient"] and diff["n_permutations"] == 30
    for t in doc["targets"]:
        assert 1 / 31 <= doc["per_target"][t]["p_value"] <= 1
    assert cli.main(["bias", "--targets", "food_aspect,service_aspect", "--refs", "positive_sentiment,negative_sentiment",
                     "--out", str(tmp_path / "two"), "--formats", "svg", "--max-texts", "12", "--max-background", "40",
                     "--n-bootstrap", "20", "--n-permutations", "19", "--acc-threshold", "0.5", "--no-behaviour"]) == 0
    assert json.loads((tmp_path / "two" / "bias.json").read_text())["differential"]["targets"] == [
        "food_aspect", "service_aspect"]  # two --targets: the differential runs by itself
    assert cli.main(["bias", "--targets", "food_aspect", "--refs", "positive_sentiment", "--out", str(tmp_path)]) == 2
    assert cli.main(["bias", "--preset", "nope", "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------- real model

@pytest.mark.real_model
def test_every_preset_end_to_end_on_the_real_model(real_lm):
    """Cheap settings (12 texts per concept, 40 background texts, 50 resamples); prints the numbers."""
    from analysis.bias import compute_bias, summary_frame
    from analysis.bias.behaviour import BehaviourConfig, compute_behaviour

    quick = dict(n_bootstrap=50, n_permutations=199, max_texts=12, max_background=40)
    results = {}
    for name in load_presets():
        r = compute_bias(real_lm, preset_config(name, **quick))
        results[name] = r
        print(f"\n{name}\n{summary_frame(r).drop(columns=['ref1', 'ref2']).to_string(index=False)}")
        assert np.isfinite(r.bias).all() and np.isfinite(r.accuracy).all()
        for i, t in enumerate(r.targets):
            assert np.isfinite([r.summary[i], r.ci_low[i], r.ci_high[i], r.p_value[i], r.minimum_detectable[i]]).all()
            assert r.ci_low[i] <= r.summary[i] <= r.ci_high[i]
    real_lm.assert_clean()
    data = compute_behaviour(real_lm, BehaviourConfig(bias=tuple(sorted(quick.items()))), results=results)
    print(data.to_frame().to_string(index=False))
    print(f"Spearman r (conceptual vs behavioural, {len(data.targets)} triples): {data.rho:.3f}")
    assert np.isfinite(data.behavioural).all() and len(data.targets) == 11


@pytest.mark.real_model
def test_bias_page_computes_and_rerenders_from_the_cache(real_lm):
    import time
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    page = Path(__file__).resolve().parent.parent / "pages" / "bias.py"
    at = AppTest.from_file(str(page), default_timeout=900).run()
    assert not at.exception
    at.selectbox(key="bias_preset").set_value("insurance_sentiment")
    at.number_input(key="bias_cap").set_value(12)
    at.number_input(key="bias_boot").set_value(50)
    at.number_input(key="bias_perm").set_value(50)
    at.run()
    at.button(key="bias_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.tabs) == 5
    start = time.perf_counter()
    at.checkbox(key="bias_show_table").check().run()  # a display option: served from st.cache_data
    warm = time.perf_counter() - start
    print(f"bias page warm re-render: {warm:.2f}s")
    assert not at.exception and at.dataframe
    assert warm < 5.0  # < 1 s on an idle machine; CI boxes are loaded


@pytest.mark.real_model
@pytest.mark.parametrize("representation", ["sae-diff", "sae-proj"])
def test_sae_representations_on_the_real_model(real_lm, representation):
    from analysis.bias import compute_bias, sae_view, summary_frame

    sae = sae_view(real_lm)
    if sae is None:
        pytest.skip("no SAE shipped for the default model")
    cfg = preset_config("insurance_sentiment", representation=representation, n_bootstrap=50, n_permutations=50,
                        max_texts=12, max_background=40, layer_rule="layer", layer=sae.layer)
    r = compute_bias(real_lm, cfg)
    print(f"\n{representation} at layer {sae.layer}\n{summary_frame(r).to_string(index=False)}")
    li = r.layers.index(sae.layer)
    assert np.isfinite(r.bias[:, li]).all() and np.isnan(np.delete(r.bias, li, axis=1)).all()
    assert np.isfinite(r.summary).all() and (r.ci_low <= r.summary).all() and (r.summary <= r.ci_high).all()
    assert r.shared is not None and all(len(ids) <= cfg.top_k for ids in r.shared.latents.values())


@pytest.mark.real_model
def test_whole_word_hook_matches_full_logits_on_the_real_model(real_lm):
    from analysis.bias.behaviour import word_logprobs
    from analysis.logprobs import target_logprobs

    prompts = ["The food was", "I thought the insured patient was really", "Honestly, the menu is"]
    words = ["good", "unremarkable", "overpriced"]
    got = word_logprobs(real_lm, prompts, words)
    tok = real_lm.tokenizer
    for i, prompt in enumerate(prompts):
        for j, word in enumerate(words):
            px, wy = tok(prompt)["input_ids"], tok(" " + word, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([px + wy])
            with torch.inference_mode(), real_lm.locked() as model:
                logits = model(ids)[0, len(px) - 1: -1]
            ref = float(target_logprobs(logits, torch.tensor(wy)).sum())
            # float32 logits of magnitude ~30 summed over ≤ 4 tokens: 2e-3 absolute.
            assert got[i, j] == pytest.approx(ref, abs=2e-3)
    real_lm.assert_clean()
