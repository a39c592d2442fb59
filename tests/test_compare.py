"""analysis.compare: state specs, the shift and ΔBias statistics (oracles, calibration, planted effects),
a planted weight edit found by the concepts comparison, steering without leaks, drift and the CLI."""

from __future__ import annotations

from pathlib import Path

import copy

import numpy as np
import pytest
import torch

from analysis.bias import BiasConfig
from analysis.compare import (
    CompareConfig,
    DriftConfig,
    StateSpec,
    activate,
    boot_weights,
    compare,
    delta_bias_from_arrays,
    excludes_zero,
    interval,
    module_activations,
    parse_state,
    project,
    shift,
)
from analysis.models import LoadedModel

SUBJECTS = ["the man", "the woman", "he", "she", "they", "we", "you", "i", "the cat", "the dog", "it", "the day"]
TINY_CONCEPTS = {
    "tiny_happy": [f"{s} was very happy" for s in SUBJECTS] + [f"{s} is happy" for s in SUBJECTS],
    "tiny_weather": [f"{s} was hot at night" for s in SUBJECTS] + [f"{s} is cold in the day" for s in SUBJECTS],
    "tiny_colour": [f"{s} is red and blue" for s in SUBJECTS] + [f"{s} was big and green" for s in SUBJECTS],
}


@pytest.fixture
def tiny_workspace(tmp_path, monkeypatch):
    """Concepts in the tiny vocabulary; 'happy' never occurs in the shipped background."""
    from analysis.concepts import background_texts, save_uploaded_concepts

    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    assert not any("happy" in t.split() for t in background_texts())
    save_uploaded_concepts(TINY_CONCEPTS)
    return tmp_path / "ws"


def edited(lm, word="happy", factor=3.0) -> LoadedModel:
    """A copy of ``lm`` whose embedding of ``word`` is scaled: moves only texts containing it."""
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        model.W_E[lm.tokenizer.convert_tokens_to_ids(word)] *= factor
    return LoadedModel(name=f"{lm.name}-edited", model=model, tokenizer=lm.tokenizer, device="cpu", backend="hooked")


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("text", ["base", "ckpt:run-1", "model:gpt2", "steer:/tmp/v.safetensors@alpha=-1.6",
                                  "steer:v.safetensors@alpha=2@layers=1,2"])
def test_state_specs_round_trip(text):
    assert str(parse_state(text)) == text


@pytest.mark.parametrize("text, needle", [
    ("nope", "valid kinds"), ("steer:v.safetensors", "non-zero alpha"), ("steer:v@alpha=x", "options are"),
    ("base:x", "takes no arguments"), ("ckpt:", "expected"), ("steer:v@alpha=1@layers=-1", "non-negative"),
])
def test_bad_state_specs_say_why(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_state(text)


# ---------------------------------------------------------------- shift statistic

def test_shift_matches_a_hand_computed_oracle():
    g = np.random.default_rng(0)
    pa, pb, na, nb = (g.normal(size=s) for s in [(2, 5, 3), (2, 5, 3), (2, 7, 3), (2, 7, 3)])
    u = g.normal(size=(2, 3))
    w_pos, w_neg = boot_weights(5, 30, 0, "c"), boot_weights(7, 30, 0, "bg")
    s = shift(project(pa, u), project(pb, u), project(na, u), project(nb, u), w_pos, w_neg)
    for l in range(2):
        un = u[l] / np.linalg.norm(u[l])
        want = ((pb[l] - pa[l]).mean(0) - (nb[l] - na[l]).mean(0)) @ un
        assert s.point[l] == pytest.approx(want, abs=1e-12)
        assert s.separation[l] == pytest.approx((pa[l].mean(0) - na[l].mean(0)) @ un, abs=1e-12)
        want_b = [(w_pos[b] @ (pb[l] - pa[l]) - w_neg[b] @ (nb[l] - na[l])) @ un for b in range(3)]
        assert s.boot[:3, l] == pytest.approx(want_b, abs=1e-12)


def test_shift_band_holds_its_false_positive_rate_on_null_changes():
    """Concept and background texts change by the same noise law: the 95% band excludes 0 about 5% of the time."""
    g = np.random.default_rng(1)
    flags = []
    for rep in range(300):
        d_pos, d_neg = g.normal(size=(1, 20)), g.normal(size=(1, 40))
        s = shift(np.zeros((1, 20)), d_pos, np.zeros((1, 40)), d_neg,
                  boot_weights(20, 200, rep, "c"), boot_weights(40, 200, rep, "bg"))
        flags.append(excludes_zero(*interval(s.boot[:, 0], 0.95)))
    assert 0.01 <= np.mean(flags) <= 0.10  # binomial(300, 0.05): sd 1.3 %; percentile bootstrap runs slightly liberal


# ---------------------------------------------------------------- ΔBias

def _bias_arrays(g, shift_target=0.0, noise=0.3, n=12, m=30, d=8, l=2):
    """A shared concept geometry and two states; ``shift_target`` moves the target toward r1 in B."""
    base = {"tt": np.eye(d)[0] + 0.5 * np.eye(d)[1], "r1": np.eye(d)[1], "r2": np.eye(d)[2]}
    x = {k: v + g.normal(scale=noise, size=(l, n, d)) for k, v in base.items()}
    bg = g.normal(scale=noise, size=(l, m, d))
    def state(move):
        pos = {k: v + g.normal(scale=0.05, size=v.shape) for k, v in x.items()}
        pos["tt"] = pos["tt"] + move * np.eye(d)[1]
        return pos, bg + g.normal(scale=0.05, size=bg.shape)
    return state(0.0), state(shift_target)


def _delta(pa, na, pb, nb, seed=0, n_perm=99):
    from analysis.bias import mean_diff

    cfg = BiasConfig(targets=("tt",), ref1="r1", ref2="r2", acc_threshold=0.5, n_bootstrap=50,
                     n_permutations=n_perm, seed=seed, cav_method="mean_diff")
    names = cfg.concepts
    va = np.stack([mean_diff(pa[c], na) for c in names])
    vb = np.stack([mean_diff(pb[c], nb) for c in names])
    acc = np.ones((3, va.shape[1]))
    return delta_bias_from_arrays(pa, na, pb, nb, va, acc, vb, acc, cfg, range(va.shape[1]))


def test_delta_bias_equals_the_difference_of_two_bias_estimates():
    from analysis.bias import bias_values, mean_diff

    g = np.random.default_rng(2)
    (pa, na), (pb, nb) = _bias_arrays(g, shift_target=0.5)
    r = _delta(pa, na, pb, nb)
    want = np.mean([bias_values(mean_diff(pb["tt"], nb)[l], mean_diff(pb["r1"], nb)[l], mean_diff(pb["r2"], nb)[l])
                    - bias_values(mean_diff(pa["tt"], na)[l], mean_diff(pa["r1"], na)[l], mean_diff(pa["r2"], na)[l])
                    for l in range(2)])
    assert r.delta[0] == pytest.approx(want, abs=1e-12)
    assert r.ci_low[0] < r.delta[0] < r.ci_high[0]


def test_delta_bias_finds_a_planted_move_and_is_one_for_identical_states():
    g = np.random.default_rng(3)
    (pa, na), (pb, nb) = _bias_arrays(g, shift_target=0.6)
    r = _delta(pa, na, pb, nb)
    assert r.delta[0] > 0 and r.ci_low[0] > 0 and r.p_value[0] <= 0.02
    same = _delta(pa, na, pa, na)
    assert same.delta[0] == 0 and same.p_value[0] == 1.0


def test_delta_bias_permutation_holds_its_false_positive_rate():
    """States exchangeable per text (each a noisy copy of the same texts): P(p ≤ 0.05) ≈ 0.05."""
    g = np.random.default_rng(4)
    ps = []
    for rep in range(120):
        (pa, na), (pb, nb) = _bias_arrays(g)
        ps.append(_delta(pa, na, pb, nb, seed=rep, n_perm=39).p_value[0])
    assert np.mean(np.asarray(ps) <= 0.05) <= 0.10  # nominal 0.05; binomial(120) sd 2 %


# ---------------------------------------------------------------- on the tiny model

def test_planted_weight_edit_moves_that_concept_and_no_other(tiny_lm, tiny_workspace):
    cfg = CompareConfig(a="base", b="model:edited", view="concepts", concepts=tuple(TINY_CONCEPTS),
                        acc_threshold=0.8, max_background=48, n_bootstrap=200)
    result = compare(tiny_lm, cfg, models={"edited": edited(tiny_lm)})
    moved = dict(zip(result.concepts, result.moved))
    assert moved == {"tiny_happy": True, "tiny_weather": False, "tiny_colour": False}
    # texts without the edited token are untouched: their shift is exactly zero
    assert result.shift[1] == 0 and result.shift[2] == 0
    assert result.acc_a.shape == result.acc_b.shape == (3, tiny_lm.n_layers)
    # with B = A nothing moves
    same = compare(tiny_lm, CompareConfig(a="base", b="base", view="concepts", concepts=tuple(TINY_CONCEPTS),
                                          acc_threshold=0.8, max_background=48))
    assert not same.moved.any() and np.all(same.acc_b == same.acc_a)


def test_steered_state_leaves_no_hook_and_lens_kl_starts_at_the_steered_layer(tiny_lm, tmp_path):
    from analysis.steering import SteeringVector

    g = np.random.default_rng(0)
    path = SteeringVector(model=tiny_lm.name, vectors=g.normal(size=(3, 32)).astype(np.float32), layers=(1,)).save(
        tmp_path / "v.safetensors")
    spec = f"steer:{path}@alpha=2"
    with activate(tiny_lm, spec) as view:
        assert view.model is tiny_lm.model and view.lock is tiny_lm.lock
        assert view.fingerprint != tiny_lm.fingerprint  # the activation cache keeps steered rows apart
    tiny_lm.assert_clean()
    r = compare(tiny_lm, CompareConfig(a="base", b=spec, view="lens", prompt="the cat is happy"))
    tiny_lm.assert_clean()
    assert np.all(r.kl[0] == 0)  # layer 0 comes before the vector
    assert np.all(r.kl[1:] > 1e-6)
    assert len(r.changed) == 10


def test_drift_step_zero_is_exactly_zero_and_stopping_keeps_steps(tiny_lm, tiny_workspace):
    from analysis.likelihood import trainable_copy
    from analysis.progress import Stopped

    texts = TINY_CONCEPTS["tiny_happy"][:5]
    policy, _ = trainable_copy(tiny_lm)
    got = module_activations(tiny_lm, policy, texts)
    from analysis.concepts import stacked_activations

    want = stacked_activations(tiny_lm, texts, range(tiny_lm.n_layers), "last", use_cache=False)
    assert got == pytest.approx(want, abs=1e-5)  # float32 forward of the same weights, batched vs batched

    cfg = DriftConfig(concepts=tuple(TINY_CONCEPTS), preset="review_sentiment", steps=(0, 1, 2), max_pairs=3,
                      acc_threshold=0.8, lr=1e-3, max_background=48, n_bootstrap=50)
    from analysis.compare import compute_drift

    full = compute_drift(tiny_lm, cfg)
    assert full.steps == [0, 1, 2] and not full.stopped
    assert np.all(full.drift[:, 0] == 0) and not full.flagged[:, 0].any()
    assert np.abs(full.drift[:, 2]).max() > 0

    def stop_after_first(fraction, stage):
        if "step 1" in stage and "measured" not in stage:
            raise Stopped(stage)

    part = compute_drift(tiny_lm, cfg, stop_after_first)
    assert part.stopped and part.steps == [0]


def test_cli_compare_lens_and_bad_state(tiny_bridge_lm, tmp_path, capsys):
    from analysis.cli import main

    lm, _ = tiny_bridge_lm
    bad = main(["compare", "--model", lm.name, "--view", "lens", "--b", "steer:/nope.safetensors@alpha=1",
                "--out", str(tmp_path)])
    assert bad == 2 and "not found" in capsys.readouterr().err
    assert main(["compare", "--model", lm.name, "--view", "nope", "--out", str(tmp_path)]) == 2
    code = main(["compare", "--model", lm.name, "--view", "lens", "--prompt", "the cat is happy", "--formats", "",
                 "--out", str(tmp_path / "o")])
    assert code == 0
    assert (tmp_path / "o" / "compare_lens.csv").is_file() and (tmp_path / "o" / "compare_lens.recipe.json").is_file()
    from analysis.compare.recipes import RECIPES
    from analysis.recipes import read_recipe

    recipe = read_recipe(tmp_path / "o" / "compare_lens.recipe.json")
    _, frame = RECIPES[recipe["figure"]](lm, recipe["config"])
    assert np.all(frame.kl == 0)  # base vs base


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown compare config keys"):
        CompareConfig.from_dict({"view": "bias", "colour": 1})
    with pytest.raises(ValueError, match="valid views"):
        CompareConfig(view="nope")
    assert StateSpec("base") == parse_state("base")


def test_checkpoint_state_runs_on_a_copy_and_finds_the_planted_edit(tiny_lm, tiny_workspace):
    """A DPO checkpoint (here: the edited weights saved through the checkpoint store) is loaded into a
    copy: the comparison sees the edit and the shared model keeps its weights."""
    from analysis.likelihood import save_checkpoint

    before = tiny_lm.model.W_E.detach().clone()
    save_checkpoint(edited(tiny_lm).model, {"model": tiny_lm.name, "backend": tiny_lm.backend}, "planted")
    result = compare(tiny_lm, CompareConfig(a="base", b="ckpt:planted", view="concepts", concepts=tuple(TINY_CONCEPTS),
                                            acc_threshold=0.8, max_background=48))
    assert dict(zip(result.concepts, result.moved)) == {"tiny_happy": True, "tiny_weather": False, "tiny_colour": False}
    assert torch.equal(tiny_lm.model.W_E, before)
    with pytest.raises(ValueError, match="unknown DPO checkpoint"):
        compare(tiny_lm, CompareConfig(a="base", b="ckpt:nope", view="lens", prompt="the cat"))


def test_audit_tells_a_targeted_vector_from_random_directions(tiny_lm, tiny_workspace, tmp_path):
    """A vector along tiny_happy's own direction shifts tiny_happy more than every random direction of its norm."""
    from analysis.compare import activations, compute_audit, pick_texts
    from analysis.steering import SteeringVector

    cfg = CompareConfig(view="concepts", concepts=tuple(TINY_CONCEPTS), acc_threshold=0.8, max_background=48)
    texts, background = pick_texts(cfg, cfg.concepts)
    pos, neg = activations(tiny_lm, texts, background)
    vectors = np.zeros((tiny_lm.n_layers, tiny_lm.d_model), np.float32)
    vectors[0] = pos["tiny_happy"][0].mean(0) - neg[0].mean(0)
    path = SteeringVector(model=tiny_lm.name, vectors=vectors, layers=(0,)).save(tmp_path / "happy.safetensors")
    result = compute_audit(tiny_lm, f"steer:{path}@alpha=1", cfg, n_random=9)
    tiny_lm.assert_clean()
    p = dict(zip(result.concepts, result.p_value))
    assert p["tiny_happy"] == pytest.approx(0.1)  # the smallest p nine random directions allow
    assert result.random.shape == (3, 9)


@pytest.mark.parametrize("kind, view", [("compare_bias", "bias"), ("compare_concepts", "concepts"),
                                        ("compare_likelihood", "likelihood")])
def test_recipes_rebuild_the_figure_headlessly(tiny_lm, tiny_workspace, kind, view):
    from analysis.compare.recipes import RECIPES
    from analysis.recipes import RECIPE_MODULES, make_recipe

    assert "analysis.compare.recipes" in RECIPE_MODULES  # what `repscope figure` runs

    cfg = CompareConfig(a="base", b="base", view=view, preset="review_sentiment", concepts=() if view == "bias"
                        else tuple(TINY_CONCEPTS), acc_threshold=0.5, max_texts=8, max_background=20,
                        n_bootstrap=20, n_permutations=19, max_pairs=3)
    recipe = make_recipe(kind, tiny_lm.name, cfg.to_dict())
    fig, frame = RECIPES[recipe["figure"]](tiny_lm, recipe["config"])
    assert len(fig.data) >= 1 and len(frame) > 0
    if view == "likelihood":
        assert np.all(frame.delta_logp_chosen == 0) and np.all(frame.ches_a == frame.ches_b)


def test_module_activations_of_a_bridge_copy_equal_the_shared_models(tiny_bridge_lm):
    """The DPO copy under the bridge is read through its own resid_post HookPoints: same numbers as extract."""
    from analysis.concepts import stacked_activations
    from analysis.likelihood import trainable_copy

    lm, _ = tiny_bridge_lm
    texts = ["the cat is happy", "she was very sad", "the day is hot and red"]
    policy, _ = trainable_copy(lm)
    got = module_activations(lm, policy, texts)
    want = stacked_activations(lm, texts, range(lm.n_layers), "last", use_cache=False)
    assert got == pytest.approx(want, abs=1e-5)  # float32, |resid| ~ 1: same weights, same kernels


def test_figure_titles_and_state_labels_name_a_steering_vector_by_its_file():
    from analysis.compare import short_spec
    from analysis.compare.figures import _title

    assert short_spec("steer:/w/steering/v.safetensors@alpha=2") == "steer:v.safetensors@alpha=2"
    assert short_spec("base") == "base" and short_spec("ckpt:run1") == "ckpt:run1"

    assert _title("base", "steer:/tmp/runs/x/vec.safetensors@alpha=-1.6@layers=6") == \
        "B = steer:vec.safetensors@alpha=-1.6@layers=6  vs  A = base"
    assert _title("ckpt:run1", "model:gpt2") == "B = model:gpt2  vs  A = ckpt:run1"


def test_a_bare_vector_name_resolves_in_the_workspace(tmp_path, monkeypatch):
    from analysis.compare.states import vector_path

    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path))
    (tmp_path / "steering").mkdir()
    (tmp_path / "steering" / "v.safetensors").write_bytes(b"x")
    assert vector_path("v.safetensors") == tmp_path / "steering" / "v.safetensors"
    assert vector_path("missing.safetensors") == Path("missing.safetensors")  # explained by check_state
    assert vector_path(str(tmp_path / "steering" / "v.safetensors")) == tmp_path / "steering" / "v.safetensors"
