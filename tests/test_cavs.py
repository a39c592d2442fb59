"""CAV fitting (Methods §1): fitters, k-fold accuracy, TCAV null, I/O, projection."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.concepts import cavs, fitters
from analysis.concepts.cavs import CavConfig, CavResult, cosine_matrix, cv_accuracy, fit_cavs, fit_cavs_arrays
from analysis.concepts.sets import ConceptSet
from analysis.concepts.projection import project


def _planted(seed=0, n=400, d=16, shift=3.0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    x = np.concatenate([rng.normal(size=(n, d)) + shift * u, rng.normal(size=(n, d))])
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return x, y, u


@pytest.mark.parametrize("method", ["logistic", "mean_diff"])
def test_fitter_recovers_planted_direction(method):
    x, y, u = _planted(n=2000)
    w, b = cavs.FITTERS[method](x, y, C=1.0, seed=0)
    assert float(cavs.unit(w) @ u) > 0.99
    # the decision boundary sits near the midpoint between the two clusters (projection 1.5)
    assert -b / np.linalg.norm(w) == pytest.approx(1.5, abs=0.15)


def test_mean_diff_by_hand():
    x = np.array([[2.0, 0.0], [4.0, 2.0], [0.0, 0.0], [0.0, 2.0]])
    y = np.array([1, 1, 0, 0])
    w, b = fitters.fit_mean_diff(x, y)
    assert w == pytest.approx([3.0, 0.0])  # (3, 1) - (0, 1)
    assert b == pytest.approx(-4.5)  # -w·((3,1)+(0,1))/2


def test_logistic_cv_accuracy_equals_sklearn_cross_val_score():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, y, _ = _planted(seed=1, n=60, d=20, shift=1.2)
    ours, _ = cv_accuracy(x, y, "logistic", n_folds=5, C=0.5, seed=3)
    folds = StratifiedKFold(5, shuffle=True, random_state=3)
    ref = cross_val_score(LogisticRegression(C=0.5, solver="newton-cg", max_iter=1000), x, y, cv=folds).mean()
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0.6 < ours < 1.0  # a non-trivial case, not a saturated one


def test_mean_diff_cv_accuracy_equals_nearest_centroid():
    # mean-difference with a midpoint threshold is the Euclidean nearest-centroid rule
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import NearestCentroid

    x, y, _ = _planted(seed=2, n=50, d=10, shift=0.7)
    ours, _ = cv_accuracy(x, y, "mean_diff", n_folds=4, C=1.0, seed=5)
    ref = cross_val_score(NearestCentroid(), x, y, cv=StratifiedKFold(4, shuffle=True, random_state=5)).mean()
    assert ours == pytest.approx(ref, abs=1e-12)


def _synthetic_sets(seed=0, layers=2, d=16, n=60, m=200):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    negatives = rng.normal(size=(layers, m, d)).astype(np.float32)
    planted = (rng.normal(size=(layers, n, d)) + 3.0 * u).astype(np.float32)
    noise = rng.normal(size=(layers, n, d)).astype(np.float32)
    return {"planted": planted, "noise": noise}, negatives, u


@pytest.mark.parametrize("method", ["logistic", "mean_diff"])
def test_random_split_band_flags_only_the_planted_concept(method):
    positives, negatives, u = _synthetic_sets()
    config = CavConfig(("planted", "noise"), method=method, n_random=8, n_folds=4)
    r = fit_cavs_arrays(positives, negatives, config, [3, 7])
    assert r.vectors.shape == (2, 2, 16) and r.accuracy.shape == (2, 2)
    assert r.random_accuracy.shape == (2, 2, 8)
    assert np.linalg.norm(r.vectors, axis=-1) == pytest.approx(np.ones((2, 2)), abs=1e-5)
    assert (r.vectors[0] @ u > 0.8).all()
    assert r.significant[0].all() and (r.accuracy[0] > 0.85).all()
    # the noise concept is a null concept: it beats all 8 runs with chance 1/9 per layer,
    # so one of 2 layers may be flagged by chance; both flagged has chance ~1 %
    assert r.significant[1].sum() <= 1
    assert (r.accuracy[1] < 0.7).all()
    # p = (1 + #{null >= acc}) / (1 + runs), by hand
    expected = (1 + (r.random_accuracy >= r.accuracy[..., None]).sum(-1)) / 9
    assert r.p_value == pytest.approx(expected)
    assert r.p_value[0] == pytest.approx(np.full(2, 1 / 9))
    # both concepts have 60 texts: they share the same null runs
    assert r.random_accuracy[0] == pytest.approx(r.random_accuracy[1])
    assert r.best_layer("planted") in (3, 7)


def test_classes_are_balanced_by_sampling():
    positives, negatives, _ = _synthetic_sets(n=60, m=200)
    r = fit_cavs_arrays(positives, negatives, CavConfig(("planted",), method="mean_diff", n_random=2, max_texts=30), [0, 1])
    assert r.n_texts.tolist() == [30]
    with pytest.raises(ValueError, match="random splits need"):
        fit_cavs_arrays({"planted": positives["planted"]}, negatives[:, :50], CavConfig(("planted",), n_random=2), [0, 1])


def test_save_load_round_trip(tmp_path):
    positives, negatives, _ = _synthetic_sets()
    r = fit_cavs_arrays(positives, negatives, CavConfig(("planted", "noise"), method="mean_diff", n_random=3), [0, 5], model="toy")
    r.save(tmp_path / "cavs")
    back = CavResult.load(tmp_path / "cavs")
    assert back.concepts == r.concepts and back.layers == r.layers and back.model == "toy"
    assert back.config == r.config
    for key in cavs._ARRAYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(r, key))
    assert CavConfig.from_dict(back.config) == CavConfig(("planted", "noise"), method="mean_diff", n_random=3)
    with pytest.raises(ValueError, match="not a saved CAV result"):
        CavResult.load(tmp_path / "nothing_here")


def test_cosine_matrix():
    positives, negatives, _ = _synthetic_sets()
    r = fit_cavs_arrays(positives, negatives, CavConfig(("planted", "noise"), method="mean_diff", n_random=2), [2, 4])
    m = cosine_matrix(r, 4)
    a, b = r.vectors[0, 1].astype(float), r.vectors[1, 1].astype(float)
    assert m[0, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert np.diag(m) == pytest.approx([1.0, 1.0])
    assert m == pytest.approx(m.T)
    with pytest.raises(ValueError, match="fitted layers are"):
        cosine_matrix(r, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"concepts": ()}, "non-empty"),
    ({"concepts": ("a_b", "a_b")}, "duplicates"),
    ({"concepts": ("Bad Name",)}, "snake_case"),
    ({"pooling": "all"}, "valid poolings"),
    ({"method": "svm"}, "valid methods are \\('logistic', 'mean_diff'\\)"),
    ({"n_folds": 1}, "at least 2 folds"),
    ({"n_random": 0}, "at least 1"),
    ({"C": 0.0}, "must be positive"),
    ({"layers": (-1,)}, "non-negative"),
    ({"max_texts": 2}, "at least n_folds"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CavConfig(**{"concepts": ("pos_a",), **kwargs})


def _tiny_set(name, texts):
    return ConceptSet(name=name, title=name, description="", provenance="test", texts=tuple(texts))


TINY_POS = [f"{a} {b} food was great !" for a in ("the", "a", "my", "his", "her", "our") for b in ("good", "very", "happy")]
TINY_BG = [f"{a} {b} went to {c} ." for a in ("the man", "a dog", "she", "we", "they", "it") for b in ("day", "night", "cat")
           for c in ("paris", "france")]


def test_fit_cavs_one_extraction_per_text_set(tiny_lm, monkeypatch):
    calls = []
    real_extract = cavs.extract

    def counting(lm, texts, hooks, **kw):
        calls.append((len(texts), tuple(hooks)))
        return real_extract(lm, texts, hooks, **kw)

    monkeypatch.setattr(cavs, "extract", counting)
    config = CavConfig(("tasty",), method="logistic", n_random=3, n_folds=3)
    seen = []
    r = fit_cavs(tiny_lm, [_tiny_set("tasty", TINY_POS)], TINY_BG, config, progress=lambda f, m: seen.append(f))
    all_hooks = tuple(f"blocks.{l}.hook_resid_post" for l in range(tiny_lm.n_layers))
    assert calls == [(len(TINY_BG), all_hooks), (len(TINY_POS), all_hooks)]
    assert r.layers == (0, 1, 2) and r.model == "tiny"
    assert seen[-1] == pytest.approx(1.0) and all(0 <= f <= 1 for f in seen)
    # the same numbers as fitting the arrays extracted directly
    pos = real_extract(tiny_lm, TINY_POS, list(all_hooks)).layer_stack()
    neg = real_extract(tiny_lm, TINY_BG, list(all_hooks)).layer_stack()
    direct = fit_cavs_arrays({"tasty": pos}, neg, config, [0, 1, 2])
    np.testing.assert_allclose(r.accuracy, direct.accuracy)
    np.testing.assert_allclose(r.vectors, direct.vectors, atol=1e-6)
    tiny_lm.assert_clean()
    # max_texts caps the texts before extraction: 6 per concept, 2×6 background for the null
    calls.clear()
    capped = fit_cavs(tiny_lm, [_tiny_set("tasty", TINY_POS)], TINY_BG, CavConfig(("tasty",), method="mean_diff",
                      n_random=2, n_folds=3, max_texts=6))
    assert calls == [(12, all_hooks), (6, all_hooks)] and capped.n_texts.tolist() == [6]
    with pytest.raises(ValueError, match="out of range"):
        fit_cavs(tiny_lm, [_tiny_set("tasty", TINY_POS)], TINY_BG, CavConfig(("tasty",), layers=(5,)))
    with pytest.raises(ValueError, match="unknown concepts"):
        fit_cavs(tiny_lm, [_tiny_set("tasty", TINY_POS)], TINY_BG, CavConfig(("other",)))


def test_recipes_rebuild_figures(tiny_lm):
    # The module RECIPES directly: analysis.recipes.registry() imports every other module too.
    from analysis.concepts.recipes import RECIPES
    from analysis.recipes import make_recipe

    recipes = RECIPES

    def run_recipe(recipe, lm):
        return recipes[recipe["figure"]](lm, recipe["config"])

    base = {"concepts": ["positive_sentiment", "food_aspect"], "layers": [0, 2], "method": "mean_diff",
            "n_random": 2, "n_folds": 3, "max_texts": 20}
    fig, frame = run_recipe(make_recipe("cav_accuracy", "tiny", base), tiny_lm)
    assert len(frame) == 4 and set(frame.columns) >= {"concept", "layer", "accuracy", "random_max", "significant"}
    # concepts capped to the same size share one null, drawn as one grey band, plus a line per concept
    assert [t.name for t in fig.data] == ["random-split band", "positive_sentiment", "food_aspect"]
    fig, frame = run_recipe(make_recipe("cav_similarity", "tiny", {**base, "layer": 2}), tiny_lm)
    assert fig.data[0].zmid == 0 and frame.shape == (2, 3)
    fig, frame = run_recipe(make_recipe("concept_projection", "tiny", {
        "concepts": ["positive_sentiment"], "layer": 1, "method": "pca", "max_texts": 15}), tiny_lm)
    assert len(frame) == 30 and [t.name for t in fig.data] == ["background", "positive_sentiment"]
    assert fig.data[0].marker.color == "#9E9E9E"


def test_pca_projection_equals_svd_oracle():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    ours = project(x, "pca", seed=0)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:2].T
    signs = np.sign((ours * ref).sum(0))  # components are defined up to sign
    np.testing.assert_allclose(ours * signs, ref, atol=1e-8)


def test_umap_shape_and_seed_determinism():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 6])
    a, b = project(x, "umap", seed=3), project(x, "umap", seed=3)
    assert a.shape == (40, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # the two well-separated clusters stay apart: each point's nearest neighbour is in its own cluster
    dist = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(40) * 1e9
    assert ((dist.argmin(1) < 20) == (np.arange(40) < 20)).all()
    small = project(x[:6], "umap", seed=0)  # n_neighbors shrinks below n
    assert small.shape == (6, 2)
    with pytest.raises(ValueError, match="valid methods"):
        project(x, "tsne")


@pytest.mark.real_model
def test_sentiment_cavs_on_real_model(real_lm):
    """Issue criterion + Methods §1 on Gemma-3-270M, from one extraction of 200 texts."""
    from threadpoolctl import threadpool_limits

    from analysis.activations import extract, resid_hooks
    from analysis.concepts.sets import background_texts, load_concepts

    sets = load_concepts()
    rng = np.random.default_rng(0)
    pick = lambda texts, k: [texts[i] for i in rng.choice(len(texts), k, replace=False)]  # noqa: E731
    pos, neg = pick(sets["positive_sentiment"].texts, 60), pick(sets["negative_sentiment"].texts, 60)
    bg = pick(background_texts(), 80)
    hooks = resid_hooks(real_lm)
    acts = extract(real_lm, pos + neg + bg, hooks, pooling="last").layer_stack(hooks)  # (18, 200, 640)
    real_lm.assert_clean()
    assert acts.shape == (18, 200, 640)

    # Issue criterion: a CAV trained on positive vs negative texts separates HELD-OUT sentences.
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    train = np.r_[np.arange(40), 60 + np.arange(40)]
    test = np.setdiff1d(np.arange(120), train)
    held_out = []
    with threadpool_limits(1):
        for layer in range(18):
            x = acts[layer, :120]
            w, b = fitters.fit_logistic(x[train], y[train])
            held_out.append(float(np.mean(((x[test] @ w + b) > 0) == y[test])))
    print("held-out pos-vs-neg accuracy by layer:", [round(a, 3) for a in held_out])
    # Oracle: sklearn's LogisticRegression (same C) on the same real activations. Where sklearn
    # reaches the optimum (its objective within 1e-6 of ours) the CAVs agree to cosine 0.999;
    # where it stops short (very large norms), ours must have the lower objective.
    from sklearn.linear_model import LogisticRegression

    def objective(w, b, x, yy):
        return 0.5 * w @ w + np.logaddexp(0, -(2 * yy - 1) * (x @ w + b)).sum()

    agreed = 0
    for layer in (0, 6, 12, 17):
        x = acts[layer, :120].astype(np.float64)
        w, b = fitters.fit_logistic(x[train], y[train])
        clf = LogisticRegression(C=1.0, solver="newton-cg", tol=1e-10, max_iter=10_000).fit(x[train], y[train])
        ours, ref = objective(w, b, x[train], y[train]), objective(clf.coef_[0], clf.intercept_[0], x[train], y[train])
        assert ours <= ref * (1 + 1e-6)
        if ref <= ours * (1 + 1e-6):
            agreed += 1
            assert float(cavs.unit(w) @ cavs.unit(clf.coef_[0])) >= 0.999
        assert abs(np.mean(((x[test] @ w + b) > 0) == y[test]) - clf.score(x[test], y[test])) <= 1 / len(test)
    assert agreed >= 2
    assert max(held_out) >= 0.9
    assert min(held_out) > 0.5  # sentiment is linearly readable at every layer, if weakly early on

    # Methods §1: each sentiment vs background (40 texts each), TCAV null from random background splits.
    config = CavConfig(("positive_sentiment", "negative_sentiment"), method="logistic", n_folds=4, n_random=4)
    layers = [0, 3, 6, 9, 12, 15, 17]
    r = fit_cavs_arrays({"positive_sentiment": acts[layers, :40], "negative_sentiment": acts[layers, 60:100]},
                        acts[layers, 120:], config, layers)
    for ci, name in enumerate(r.concepts):
        print(f"{name} vs background by layer:", dict(zip(layers, r.accuracy[ci].round(3).tolist())),
              "random max:", r.random_max[ci].round(3).tolist())
        li = int(np.argmax(r.accuracy[ci]))
        assert r.accuracy[ci, li] >= 0.9 and r.significant[ci, li]
        assert r.random_mean[ci].max() < 0.7  # background halves are not separable
