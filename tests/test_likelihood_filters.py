"""CHES filters (paper §5/§6) and single-token geometry, on numbers checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis.likelihood import (
    FilterConfig, export_jsonl, filter_pairs, keep_lowest, load_shipped, parse_preferences, pushed_tokens,
    quantile_window, select_pairs, single_token_geometry, token_geometry,
)


def test_keep_lowest_fraction_by_hand():
    s = np.array([0.3, -1.0, 2.0, -0.5, 0.1, 5.0, 4.0, -2.0, 0.0, 1.0])
    np.testing.assert_array_equal(keep_lowest(s, 0.2), [1, 7])  # round(0.2*10) = 2 lowest: -2.0 (7), -1.0 (1)
    np.testing.assert_array_equal(keep_lowest(s, 0.01), [7])  # never fewer than one
    assert FilterConfig().score_name == "ches_length_normalised" and FilterConfig().fraction == 0.05


def test_quantile_window_follows_the_authors_rule():
    s = np.array([5.0, 1.0, 4.0, 2.0, 3.0])  # ascending order of indices: 1, 3, 4, 2, 0
    # q = 0.5: idx = round(0.5 * 4) = 2, start = 2 - 3 // 2 = 1, end = 4 -> sorted[1:4] = indices 3, 4, 2
    np.testing.assert_array_equal(quantile_window(s, 0.5, 3), [2, 3, 4])
    # q = 1: idx = 4, start = 3, end = min(5, 6) = 5 -> indices 2, 0 (a shorter window, not shifted)
    np.testing.assert_array_equal(quantile_window(s, 1.0, 3), [0, 2])
    # q = 0: start clipped at 0
    np.testing.assert_array_equal(quantile_window(s, 0.0, 2), [1, 3])
    assert FilterConfig(mode="window").score_name == "ches"


def test_percentile_mode_and_validation():
    s = np.arange(10, dtype=float)
    np.testing.assert_array_equal(select_pairs(s, FilterConfig(mode="percentile", percentile=50)), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="filter mode"):
        FilterConfig(mode="top")
    with pytest.raises(ValueError, match="fraction"):
        FilterConfig(fraction=0)
    with pytest.raises(ValueError, match="NaN"):
        keep_lowest([0.0, float("nan")], 0.5)
    with pytest.raises(ValueError, match="unknown CHES filter config keys"):
        FilterConfig.from_dict({"pct": 3})


@pytest.mark.parametrize("mode", ["lowest", "window"])
def test_filtered_export_keeps_input_layout_and_order(mode):
    data = load_shipped("conversational_example")
    scores = np.array([3.0, -1.0, 2.0, 0.5, -4.0, 1.0])
    kept = filter_pairs(data, scores, FilterConfig(mode=mode, fraction=0.5, window=3, quantile=0.0))
    want = [1, 3, 4] if mode == "lowest" else [1, 3, 4]  # three lowest are 4, 1, 3 in input order 1, 3, 4
    assert kept.pairs == tuple(data.pairs[i] for i in want)
    out = export_jsonl(kept)
    assert [json.loads(line) for line in out.decode().splitlines()] == [data.records[i] for i in want]
    assert parse_preferences("x.jsonl", out).layout == "conversational"
    with pytest.raises(ValueError, match="one score per pair"):
        filter_pairs(data, scores[:-1])


def test_token_geometry_by_hand():
    W = torch.tensor([[2.0, 0.0], [3.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    g = token_geometry(W, [0, 2], [1, 0])
    # pair 0: W+ = (2,0), W- = (3,1): inner 6 > |W+|^2 = 4; proj 6/2 = 3; gap 2 - 3 = -1; W- - (3/2) W+ = (0, 1)
    assert g["inner"][0] == 6 and g["norm_plus_sq"][0] == 4 and g["proj_coeff"][0] == 3
    assert g["gap"][0] == -1 and g["orth_norm"][0] == pytest.approx(1.0, abs=1e-15)
    assert g["cosine"][0] == pytest.approx(6 / (2 * np.sqrt(10)), rel=1e-15)
    # pair 1: W+ = (1,-1), W- = (2,0): inner 2 = |W+|^2 -> not above; proj 2/sqrt2; orth |(2,0) - (1,-1)| = sqrt2
    assert g["inner"][1] == pytest.approx(2) and g["proj_coeff"][1] == pytest.approx(np.sqrt(2), rel=1e-15)
    assert g["orth_norm"][1] == pytest.approx(np.sqrt(2), rel=1e-15)
    ids, vals = pushed_tokens(W, 0, 1, 2)  # <W_z, W+ - W-> with W+ - W- = (-1, -1): 2 -> 0, 3 -> 0, 0 -> -2, 1 -> -4
    assert set(ids.tolist()) == {2, 3} and np.allclose(vals, [0, 0])


def test_single_token_geometry_on_tiny_model(tiny_lm):
    from analysis.likelihood import PreferencePair

    pairs = [PreferencePair("the cat is", " happy", " sad"), PreferencePair("a dog", " is big", " was small")]
    frame = single_token_geometry(tiny_lm, pairs)
    assert list(frame["single_token"]) == [True, False]
    W = tiny_lm.model.W_U.detach().T.double()
    tok = tiny_lm.tokenizer
    a, b = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" happy", " sad"))
    assert frame["inner"][0] == pytest.approx(float(W[a] @ W[b]), rel=1e-12)
    assert frame["may_displace"][0] == bool(W[a] @ W[b] > W[a] @ W[a])
    assert frame["pushed_tokens"][0]
