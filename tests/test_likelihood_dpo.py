"""DPO as the paper ran it, against a plain-PyTorch oracle on float64 tiny models.

Oracle: a deep copy of the same module, the same torch optimizer at its
defaults, full logits -> log_softmax -> gather over the response positions,
the DPO loss written out, one backward and one step per update. float64
throughout, so agreement to 1e-9 tests the code (float64 rounding on these
sizes is ~1e-13), not the CPU.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis.likelihood import (
    DPOConfig, PreferencePair, discovery_frame, forward_positions, gainers_frame, history_frame, pushed_tokens,
    run_dpo, run_plan, summary_frame, trajectory_frame, unembedding,
)
from analysis.models import LoadedModel
from analysis.progress import Stopped
from tests.conftest import make_tiny_lm, make_tiny_tokenizer
from tests.test_likelihood import TINY_PAIRS

PAIRS = TINY_PAIRS
EXACT = dict(rtol=1e-9, atol=1e-9)


def _tiny64(seed: int = 0) -> LoadedModel:
    lm = make_tiny_lm(seed=seed, name=f"tiny64-{seed}")
    lm.model.to(torch.float64)
    lm.model.cfg.dtype = torch.float64
    return lm


class _Bridge(torch.nn.Module):
    """Stands in for a TransformerBridge: an HF model under ``original_model``, logits from forward."""

    def __init__(self, hf):
        super().__init__()
        self.original_model = hf
        self.cfg = type("Cfg", (), {"n_layers": hf.config.num_hidden_layers, "d_model": hf.config.hidden_size})()

    def forward(self, ids, attention_mask=None):
        return self.original_model(input_ids=ids, attention_mask=attention_mask).logits


def _tiny_hf64() -> LoadedModel:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                           sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                           pad_token_id=tok.pad_token_id)
    hf = Gemma3ForCausalLM(cfg).to(torch.float64).eval()
    return LoadedModel(name="tiny-hf64", model=_Bridge(hf), tokenizer=tok, device="cpu", backend="bridge")


def _full_logits(module, ids):
    if hasattr(module, "config"):
        return module(input_ids=ids).logits
    return module(ids)


def _oracle_logp(module, tok, prompt, response):
    px, py = tok(prompt)["input_ids"], tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([px + py])
    logp = _full_logits(module, ids)[0].log_softmax(-1)
    pos = torch.arange(len(px) - 1, len(px) + len(py) - 1)
    return logp[pos, torch.tensor(py)].sum()


def _oracle_dpo(lm, pairs, optimizer, lr, steps, beta=0.1, batches=None, sft_epochs=0):
    """Plain DPO: returns per recorded step (0..steps) the mean log p(y+) and log p(y-)."""
    source = getattr(lm.model, "original_model", lm.model)
    model = copy.deepcopy(source)
    ctor = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    tok = lm.tokenizer
    if sft_epochs:
        opt = ctor(model.parameters(), lr=lr)
        for _ in range(sft_epochs):
            opt.zero_grad()
            loss = sum(-_oracle_logp(model, tok, p.prompt, p.chosen) / len(tok(p.chosen, add_special_tokens=False)["input_ids"])
                       for p in pairs) / len(pairs)
            loss.backward()
            opt.step()
    opt = ctor(model.parameters(), lr=lr)
    with torch.no_grad():
        ref = [(_oracle_logp(model, tok, p.prompt, p.chosen), _oracle_logp(model, tok, p.prompt, p.rejected)) for p in pairs]
    out = []
    for step in range(steps + 1):
        with torch.no_grad():
            lp = [(_oracle_logp(model, tok, p.prompt, p.chosen), _oracle_logp(model, tok, p.prompt, p.rejected)) for p in pairs]
        out.append((float(np.mean([float(a) for a, _ in lp])), float(np.mean([float(b) for _, b in lp]))))
        if step == steps:
            break
        idx = list(range(len(pairs))) if batches is None else batches[step]
        opt.zero_grad()
        terms = []
        for i in idx:
            c = _oracle_logp(model, tok, pairs[i].prompt, pairs[i].chosen)
            r = _oracle_logp(model, tok, pairs[i].prompt, pairs[i].rejected)
            terms.append(-F.logsigmoid(beta * ((c - ref[i][0]) - (r - ref[i][1]))))
        (sum(terms) / len(idx)).backward()
        opt.step()
    return np.array(out)


@pytest.mark.parametrize("optimizer,lr", [("rmsprop", 1e-3), ("adam", 1e-3), ("sgd", 1e-1)])
def test_full_batch_dpo_matches_plain_torch_for_each_optimizer(optimizer, lr):
    lm = _tiny64()
    result = run_dpo(lm, PAIRS, DPOConfig(optimizer=optimizer, lr=lr, steps=3, chunk_size=3))
    got = history_frame(result)[["logp_chosen", "logp_rejected"]].to_numpy()
    want = _oracle_dpo(lm, PAIRS, optimizer, lr, 3)
    np.testing.assert_allclose(got, want, **EXACT)
    assert abs(got[-1, 0] - got[0, 0]) > 1e-4  # the run moved: agreement is not trivial
    assert history_frame(result)["loss"].iloc[0] == pytest.approx(np.log(2), abs=1e-12)


def test_hf_model_positions_path_matches_plain_torch():
    """The HF path (logits_to_keep, under ``original_model``) trains exactly like full logits."""
    lm = _tiny_hf64()
    result = run_dpo(lm, PAIRS, DPOConfig(optimizer="rmsprop", lr=1e-3, steps=2))
    got = history_frame(result)[["logp_chosen", "logp_rejected"]].to_numpy()
    np.testing.assert_allclose(got, _oracle_dpo(lm, PAIRS, "rmsprop", 1e-3, 2), **EXACT)


def test_forward_positions_equals_slicing_full_logits():
    ids = torch.tensor([[1, 5, 9, 12, 7, 8], [1, 6, 6, 3, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    cols = torch.tensor([1, 3, 4])
    for lm in (_tiny64(), _tiny_hf64()):
        module = getattr(lm.model, "original_model", lm.model)
        with torch.no_grad():
            full = (module(input_ids=ids, attention_mask=mask).logits if hasattr(module, "config")
                    else module(ids, attention_mask=mask))
            torch.testing.assert_close(forward_positions(module, ids, mask, cols), full[:, cols], rtol=1e-12, atol=1e-12)


def test_minibatch_and_sft_match_plain_torch():
    lm = _tiny64()
    cfg = DPOConfig(optimizer="sgd", lr=1e-1, steps=3, minibatch=2, seeds=(4,))
    result = run_dpo(lm, PAIRS, cfg)
    from analysis.sampling import rng

    # The documented rule: epoch e's batches are rng(seed, "dpo-epoch", e).permutation(n) cut in pieces.
    batches = []
    for e in range(2):
        perm = rng(4, "dpo-epoch", e).permutation(4).tolist()
        batches += [perm[:2], perm[2:]]
    got = history_frame(result)[["logp_chosen", "logp_rejected"]].to_numpy()
    np.testing.assert_allclose(got, _oracle_dpo(lm, PAIRS, "sgd", 1e-1, 3, batches=batches), **EXACT)

    sft = run_dpo(lm, PAIRS, DPOConfig(optimizer="sgd", lr=1e-1, steps=1, sft_epochs=1))
    got = history_frame(sft)[["logp_chosen", "logp_rejected"]].to_numpy()
    np.testing.assert_allclose(got, _oracle_dpo(lm, PAIRS, "sgd", 1e-1, 1, sft_epochs=1), **EXACT)
    assert len(sft.runs[0].sft_loss) == 1 and got[0, 0] > history_frame(result)["logp_chosen"].iloc[0]


def test_discovery_finds_a_planted_token_that_gains_mass():
    """Plant token z with W_U[:, z] = 2 (W+ - W-): DPO on (y+, y-) pushes the last prompt position's hidden
    state along W+ - W-, so z must gain the most probability, be found without being watched, and be the
    theory's top candidate."""
    lm = _tiny64(seed=1)
    tok = lm.tokenizer
    plus, minus, z = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" happy", " sad", " price"))
    with torch.no_grad():
        W = lm.model.W_U
        W[:, z] = 2 * (W[:, plus] - W[:, minus])
    pair = [PreferencePair("the cat is", " happy", " sad")]
    result = run_dpo(lm, pair, DPOConfig(optimizer="sgd", lr=0.5, steps=4, discover=5))
    disc = discovery_frame(result)
    last = disc[(disc["step"] == 4) & (disc["order"] == "p")].sort_values("rank")
    assert int(last["token_id"].iloc[0]) == z and last["token"].iloc[0] == tok.decode([z])
    gain = gainers_frame(result)
    assert int(gain["token_id"].iloc[0]) == z and gain["p_change_mean"].iloc[0] > 0
    traj = trajectory_frame(result)
    pz = traj[traj["token_id"] == z].sort_values("step")["p_change"].to_numpy()
    assert pz[0] == 0 and np.all(np.diff(pz) > 0)
    hist = history_frame(result)
    assert np.isnan(hist["rank_chosen_by_p_gain"].iloc[0]) and hist["rank_chosen_by_p_gain"].iloc[-1] > 1
    assert hist["top_gainer"].iloc[-1] == tok.decode([z])
    ids, _ = pushed_tokens(unembedding(lm), plus, minus, 3)
    assert int(ids[0]) == z
    # the discovery's p is the model's own next-token probability after the prompt
    px = tok("the cat is")["input_ids"]
    with torch.no_grad():
        p0 = lm.model(torch.tensor([px]))[0, -1].softmax(-1)
    assert hist["p_first_chosen"].iloc[0] == pytest.approx(float(p0[plus]), rel=1e-12)


def test_seeds_draw_pairs_reproducibly_and_summary_is_mean_over_runs():
    lm = _tiny64()
    cfg = DPOConfig(optimizer="adam", lr=1e-3, steps=2, seeds=(0, 1, 2), pairs_per_run=1)
    plan = run_plan(len(PAIRS), cfg)
    assert plan == run_plan(len(PAIRS), cfg) and all(len(p) == 1 for _, p in plan)
    result = run_dpo(lm, PAIRS, cfg, pairs=[0, 1, 2, 3])
    assert [r.pairs for r in result.runs] == [p for _, p in plan]
    hist = history_frame(result)
    summ = summary_frame(result)
    for step in range(3):
        vals = hist[hist["step"] == step]["logp_chosen"]
        row = summ[summ["step"] == step].iloc[0]
        assert row["runs"] == 3
        assert row["logp_chosen_mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert row["logp_chosen_std"] == pytest.approx(vals.std(ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="pairs must be indices"):
        run_dpo(lm, PAIRS, cfg, pairs=[7])


def test_progress_stop_keeps_finished_steps():
    lm = _tiny64()

    def progress(fraction, stage):
        if "step 2/" in stage:
            raise Stopped("user")

    result = run_dpo(lm, PAIRS, DPOConfig(lr=1e-3, steps=5, seeds=(0, 1)), progress=progress)
    assert result.partial and len(result.runs) == 1
    assert list(history_frame(result)["step"]) == [0, 1, 2]
    assert not trajectory_frame(result).empty and result.module is None


def test_dpo_recipe_reproduces_the_figure_numbers(monkeypatch):
    from analysis.likelihood.recipes import RECIPES, dpo_figures, dpo_recipe_config
    from analysis.likelihood.preferences import load_shipped

    lm = _tiny64()
    data = load_shipped("displacement_demo", lm.tokenizer)
    cfg = DPOConfig(optimizer="rmsprop", lr=1e-3, steps=2, seeds=(0, 1), pairs_per_run=1, watch_tokens=(" yes",))
    result = run_dpo(lm, data, cfg, pairs=[2, 5, 9])
    config = dpo_recipe_config("displacement_demo", [2, 5, 9], cfg)
    assert config["pairs"] == [2, 5, 9] and config["seeds"] == [0, 1] and config["optimizer"] == "rmsprop"
    for kind in ("dpo_curves", "dpo_gainers"):
        _, want = dpo_figures(result)[kind]
        fig, got = RECIPES[kind](lm, config)
        cols = [c for c in want.columns if c != "seconds"]
        pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), want[cols].reset_index(drop=True), rtol=1e-12)
        assert len(fig.data) >= 1


def test_sparse_embedding_only_for_tied_weights():
    from analysis.likelihood.training import sparse_input_embedding

    lm = _tiny_hf64()
    hf = copy.deepcopy(lm.model.original_model)
    assert sparse_input_embedding(hf) and hf.get_input_embeddings().sparse
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone())  # untie
    hf.get_input_embeddings().sparse = False
    assert not sparse_input_embedding(hf) and not hf.get_input_embeddings().sparse


def _non_leaf_tensors(module):
    return [f"{name}.{attr}" for name, m in module.named_modules() for attr, v in vars(m).items()
            if isinstance(v, torch.Tensor) and not v.is_leaf]


def test_a_trainable_copy_of_a_bridge_model_leaves_the_original_alone(tiny_bridge_lm):
    """The bridge wires capture pre-hooks on its first forward, closing over its own attention
    modules; a deep copy keeps those closures. Unremoved, the copy's training forwards wrote their
    residuals (autograd graph included) into the ORIGINAL, and the next copy failed to deepcopy."""
    from analysis.likelihood.dpo import trainable_copy

    lm, _ = tiny_bridge_lm
    ids, mask = lm.tokenize(["the cat is happy", "the dog"])
    with torch.inference_mode():
        lm.model(ids, attention_mask=mask)  # wires the capture hooks on the original
    for _ in range(2):
        policy, _fn = trainable_copy(lm)
        policy(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert _non_leaf_tensors(lm.model) == []
        del policy
    with torch.inference_mode():  # and the original still runs (its own hooks untouched)
        lm.model(ids, attention_mask=mask)
