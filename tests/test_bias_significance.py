"""Bias significance: closed-form permutations against brute force, calibration on null data,
planted associations, word units, Holm / max-|T| against their definitions.

Calibration uses synthetic activations (Gaussian, a few layers and dimensions) and the
closed-form mean-difference estimator — the default point estimate — so 200+ repetitions
with 199 permutations each run in seconds. Tolerances: float64 throughout, so exact
identities are checked at 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.bias import significance as sig
from analysis.bias.compute import BiasConfig, bias_from_arrays
from analysis.bias.units import text_units
from analysis.vectors import cosine

L, D = 2, 12


def _draw(rng, n, mu, sd=1.0):
    return rng.normal(scale=sd, size=(L, n, D)) + mu


def _direction(*idx):
    v = np.zeros(D)
    v[list(idx)] = 1.0
    return v


# ---------------------------------------------------------------- exactness

def test_closed_form_permutations_equal_refitting_each_split():
    rng = np.random.default_rng(1)
    pos = {"tt": _draw(rng, 15, 2 * _direction(0)), "aa": _draw(rng, 11, _direction(0, 1)),
           "bb": _draw(rng, 13, _direction(2))}
    neg = _draw(rng, 40, 0.0) * 3
    for baseline in ("background", "contrast"):
        for standardise in (False, True):
            space = sig.make_space(pos, neg, baseline=baseline, standardise=standardise)
            null = sig.reference_null(space, ["tt"], "aa", "bb", 20, 0)
            w1, w2 = sig.split_weights(np.arange(24), 11, 20, 0, "refs", "aa", "bb")
            pooled = np.concatenate([space.texts["aa"], space.texts["bb"]], 1)
            t = space.vector("tt")
            for b in (0, 7, 20):
                v1, v2 = np.einsum("n,lnd->ld", w1[b], pooled), np.einsum("n,lnd->ld", w2[b], pooled)
                np.testing.assert_allclose(null[b, 0], cosine(t, v1) - cosine(t, v2), atol=1e-10)
            # Row 0 is the observed split: the mean-difference Bias computed by hand.
            mu = neg.mean(1, keepdims=True)
            sd = neg.std(1, keepdims=True) if standardise else 1.0
            z = {c: (x - mu) / sd for c, x in pos.items()}
            origin = np.concatenate(list(z.values()), 1).mean(1) if baseline == "contrast" else 0.0
            v = {c: x.mean(1) - origin for c, x in z.items()}
            np.testing.assert_allclose(null[0, 0], cosine(v["tt"], v["aa"]) - cosine(v["tt"], v["bb"]), atol=1e-10)
            # Differential: X ∪ Y re-partitioned, references fixed.
            dn = sig.differential_null(space, "aa", "bb", "tt", "tt", 3, 0)
            np.testing.assert_allclose(dn, 0.0, atol=1e-12)  # Bias against (r, r) is 0 for any split


def test_split_weights_keep_unit_counts_and_units_together():
    units = np.repeat(np.arange(10), 4)  # 10 words × 4 templates
    w1, w2 = sig.split_weights(units, 4, 50, 3, "x")
    for a, b in zip(w1, w2):
        on = a > 0
        assert on.sum() == 16 and (b > 0).sum() == 24 and not np.any(on & (b > 0))
        assert np.all(on.reshape(10, 4).all(1) | (~on).reshape(10, 4).all(1))  # a word moves whole
        np.testing.assert_allclose([a.sum(), b.sum()], 1.0)


def test_p_value_holm_and_max_t_follow_their_definitions():
    null = np.array([[0.1], [-0.3], [0.2], [0.5]])
    # (1 + #{|null| ≥ 0.3}) / (1 + 4): 0.3 and 0.5 count.
    assert sig.p_two_sided(np.array([0.3]), null)[0] == pytest.approx(3 / 5)
    assert sig.p_two_sided(np.array([-0.6]), null)[0] == pytest.approx(1 / 5)
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.2])
    # Holm by hand: sorted 0.01·4, 0.03·3, 0.04·2, 0.2·1 with running max.
    np.testing.assert_allclose(sig.holm(p), [0.04, 0.09, 0.09, np.nan, 0.2])
    statsmodels = pytest.importorskip("statsmodels.stats.multitest")
    keep = np.isfinite(p)
    np.testing.assert_allclose(sig.holm(p)[keep], statsmodels.multipletests(p[keep], method="holm")[1])
    # max-|T|: cells standardised by their null sd; the adjusted p is never below the raw one.
    rng = np.random.default_rng(0)
    null = rng.normal(size=(999, 3, 4)) * np.array([1.0, 5.0, 0.2])[None, :, None]
    obs = np.array([[3.0, 0.1, 0.0, 1.0], [15.0, 2.0, 0.0, 0.0], [0.6, 0.0, 0.0, 0.1]])
    adj, raw = sig.max_t_adjusted(obs, null), sig.p_two_sided(obs, null)
    assert np.all(adj >= raw - 1e-12)
    t_obs = np.abs(obs / null.std(0))
    peak = np.abs(null / null.std(0)).reshape(999, -1).max(1)
    np.testing.assert_allclose(adj, (1 + (peak[:, None] >= t_obs.ravel()[None]).sum(0)).reshape(3, 4) / 1000)


# ---------------------------------------------------------------- calibration

def _flag_rate(make, n_reps, alpha=0.05):
    return float(np.mean([make(rep) < alpha for rep in range(n_reps)]))


@pytest.mark.parametrize("standardise", [False, True])
def test_per_target_test_holds_its_level_when_the_references_are_one_concept(standardise):
    """A/B = random halves of one concept: 'flagged at 0.05' must be 2–8 % over 240 repetitions."""
    def p_of(rep):
        rng = np.random.default_rng(rep)
        ref = _draw(rng, 40, _direction(1, 2))
        pos = {"tt": _draw(rng, 20, _direction(0, 1)), "aa": ref[:, :20], "bb": ref[:, 20:]}
        space = sig.make_space(pos, _draw(rng, 60, 0.0), standardise=standardise)
        null = sig.reference_null(space, ["tt"], "aa", "bb", 199, rep)
        summary = null[:, 0].mean(-1)
        return sig.p_two_sided(summary[0], summary[1:])

    assert 0.02 <= _flag_rate(p_of, 240) <= 0.08


@pytest.mark.parametrize("baseline", ["background", "contrast"])
def test_differential_holds_its_level_when_the_targets_are_one_concept(baseline):
    """X/Y = random halves of one concept, real (different) references: flagged share 2–8 %."""
    def p_of(rep):
        rng = np.random.default_rng(1000 + rep)
        target = _draw(rng, 40, _direction(0, 1))
        pos = {"xx": target[:, :20], "yy": target[:, 20:], "aa": _draw(rng, 20, _direction(1, 3)),
               "bb": _draw(rng, 20, _direction(2))}
        space = sig.make_space(pos, _draw(rng, 60, 0.0), baseline=baseline)
        null = sig.differential_null(space, "xx", "yy", "aa", "bb", 199, rep).mean(-1)
        return sig.p_two_sided(null[0], null[1:])

    assert 0.02 <= _flag_rate(p_of, 240) <= 0.08


def _word_sets(rng, n_words, mu, templates=4, word_sd=1.0):
    """Texts that share a word share its offset: within-word correlation, as in template benchmarks."""
    words = rng.normal(scale=word_sd, size=(L, n_words, 1, D))
    texts = rng.normal(scale=0.5, size=(L, n_words, templates, D)) + words + mu
    return texts.reshape(L, n_words * templates, D), np.repeat(np.arange(n_words), templates)


def test_word_units_keep_the_level_where_text_level_permutation_does_not():
    """Words × 4 templates: permuting words holds the level; permuting sentences is anti-conservative."""
    def p_of(rep, by_word):
        rng = np.random.default_rng(5000 + rep)
        x, ux = _word_sets(rng, 16, _direction(0))
        a, ua = _word_sets(rng, 8, _direction(1))
        b, ub = _word_sets(rng, 8, _direction(2))
        pos = {"xx": x[:, :32], "yy": x[:, 32:], "aa": a, "bb": b}
        units = {"xx": ux[:32], "yy": ux[32:] - 8, "aa": ua, "bb": ub} if by_word else None
        space = sig.make_space(pos, _draw(rng, 60, 0.0), units=units)
        null = sig.differential_null(space, "xx", "yy", "aa", "bb", 199, rep).mean(-1)
        return sig.p_two_sided(null[0], null[1:])

    assert 0.02 <= _flag_rate(lambda r: p_of(r, True), 200) <= 0.08
    assert _flag_rate(lambda r: p_of(r, False), 200) > 0.15  # why units matter: measured 0.245 (200 reps)


# ---------------------------------------------------------------- planted effects

def test_planted_association_gives_small_p_d_and_ci_on_the_right_side():
    rng = np.random.default_rng(7)
    pos = {"xx": _draw(rng, 30, 2 * _direction(0, 3)), "yy": _draw(rng, 30, 2 * _direction(1, 3)),
           "aa": _draw(rng, 30, 2 * _direction(0, 4)), "bb": _draw(rng, 30, 2 * _direction(1, 4))}
    cfg = BiasConfig(targets=("xx", "yy"), ref1="aa", ref2="bb", differential=("xx", "yy"), n_permutations=499,
                     n_bootstrap=200)
    result = bias_from_arrays(pos, _draw(rng, 80, 0.0), None, np.ones((4, L)), cfg, range(L))
    assert result.summary[0] > 0 > result.summary[1]
    assert np.all(result.p_value <= 0.01) and np.all(result.p_holm <= 0.02)
    assert result.surviving.all()
    diff = result.differential
    assert diff.effect > 0 and diff.p_value <= 1 / 500 + 1e-12 and diff.n_permutations == 499
    assert diff.effect_size_d > 0.5 and 0 < diff.ci_low < diff.effect_size_d < diff.ci_high
    assert diff.effect_ci_low < diff.effect < diff.effect_ci_high
    assert "survive" in result.verdict(0) and "p ≤ 0.002 (499 permutations)" in result.verdict(0)


def test_no_effect_reports_the_minimum_detectable_effect_and_it_is_detectable():
    rng = np.random.default_rng(11)
    ref = _draw(rng, 60, _direction(1, 2))
    pos = {"tt": _draw(rng, 30, _direction(0, 1)), "aa": ref[:, :30], "bb": ref[:, 30:]}
    cfg = BiasConfig(targets=("tt",), ref1="aa", ref2="bb", n_permutations=499, n_bootstrap=50)
    result = bias_from_arrays(pos, _draw(rng, 80, 0.0), None, np.ones((3, L)), cfg, range(L))
    mde = result.minimum_detectable[0]
    assert 0 < mde < 1
    if result.p_value[0] >= 0.05:
        assert "detectable |Bias| ≥" in result.verdict(0)
    # A planted effect larger than the MDE is detected most of the time: move r1 towards t.
    hits = 0
    for rep in range(20):
        g = np.random.default_rng(100 + rep)
        shift = _direction(0)
        pos = {"tt": _draw(g, 30, _direction(0, 1)), "aa": _draw(g, 30, _direction(1, 2) + 1.5 * shift),
               "bb": _draw(g, 30, _direction(1, 2))}
        r = bias_from_arrays(pos, _draw(g, 80, 0.0), None, np.ones((3, L)), cfg, range(L))
        hits += bool(r.p_value[0] < 0.05 and r.summary[0] > mde)
    assert hits >= 14


# ---------------------------------------------------------------- units

def test_text_units_group_a_words_template_sentences_only():
    templates = ["This is a {}.", "I saw a {} today.", "Here is the {} again.", "Everyone likes the {}."]
    words = {"flowers": ["rose", "tulip", "daisy", "lily of the valley"], "insects": ["ant", "wasp", "moth"]}
    texts = {c: [t.format(w) for w in ws for t in templates] for c, ws in words.items()}
    texts["free"] = ["The soup was rich and perfectly seasoned.", "Our waiter was friendly.",
                     "Great value for the money.", "The location is perfect, right by the river."]
    units = text_units(texts)
    np.testing.assert_array_equal(units["flowers"], np.repeat(np.arange(4), 4))
    np.testing.assert_array_equal(units["insects"], np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(units["free"], np.arange(4))


# ---------------------------------------------------------------- the logistic null (cav_method="logistic")

def _logistic_p(rep: int, shift: float, n_perm: int = 99) -> float:
    """p of the summary Bias(tt) under the logistic null; refs share a concept when shift = 0."""
    from analysis.bias.logistic_null import logistic_reference_null

    rng = np.random.default_rng(1000 + rep)
    ref = _draw(rng, 60, 4 * _direction(2, 3))
    pos = {"tt": _draw(rng, 30, 4 * _direction(0, 1)), "aa": ref[:, :30] + shift * _direction(0), "bb": ref[:, 30:]}
    neg = _draw(rng, 90, 0.0)
    cfg = BiasConfig(targets=("tt",), ref1="aa", ref2="bb", cav_method="logistic", n_permutations=n_perm, seed=rep)
    from analysis.concepts import fit_logistic_batched

    def cav(x):  # as fit_cavs_arrays: each concept against its own background sample of its size
        y = np.r_[np.ones(x.shape[1]), np.zeros(x.shape[1])]
        bg = neg[:, np.sort(rng.choice(neg.shape[1], x.shape[1], replace=False))]
        return np.stack([fit_logistic_batched(np.concatenate([x[l], bg[l]])[None], y[None])[0][0].numpy()
                         for l in range(L)])

    point = {c: cav(pos[c]) for c in pos}
    units = {c: np.arange(pos[c].shape[1]) for c in pos}
    null = logistic_reference_null(pos, neg, point, cfg, units).mean(-1)[:, 0]  # (B,) summary over layers
    observed = (cosine(point["tt"], point["aa"]) - cosine(point["tt"], point["bb"])).mean()
    return float(sig.p_two_sided(observed, null))


def test_logistic_null_holds_its_level_when_the_references_are_one_concept():
    """The batched logistic refits make this test affordable: 'flagged at 0.05' in 1–10 % of 120 null data sets
    (binomial s.d. of the rate at 5 %: 2 %)."""
    assert 0.01 <= _flag_rate(lambda rep: _logistic_p(rep, 0.0), 120) <= 0.10


def test_logistic_null_finds_a_planted_association():
    # ref aa moved towards the target's own direction: Bias(tt) > 0 with p at the resolution of 199 permutations
    assert max(_logistic_p(rep, 4.0, 199) for rep in range(3)) <= 0.01
