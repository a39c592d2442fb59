"""SAE loading, encoding, quality, probes and training, against plain-torch oracles."""

from __future__ import annotations

import io
import json
import pickle
import struct
import time

import numpy as np
import pytest
import torch

from analysis.saes.loading import (
    SAELoadError, decode, encode, load_sae, load_sae_upload, safetensors_header, shipped_saes,
)
from analysis.saes.training import build_sae

SHIPPED = "gemma-3-270m-offline-res6-2k"


def _hand_state(d_in=4, d_sae=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


def _save(sae, folder):
    sae.save_model(folder)
    return (folder / "cfg.json").read_bytes(), (folder / "sae_weights.safetensors").read_bytes()


def test_topk_encode_decode_match_plain_torch():
    st = _hand_state()
    sae = build_sae(st, k=2, hook_name="blocks.1.hook_resid_post", model_name="tiny")
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    pre = (x - st["b_dec"]) @ st["W_enc"] + st["b_enc"]
    vals, idx = pre.topk(2, dim=-1)
    z = torch.zeros(5, 6).scatter(-1, idx, vals.relu())
    assert torch.allclose(encode(sae, x), z, atol=1e-6)
    assert torch.allclose(decode(sae, z), z @ st["W_dec"] + st["b_dec"], atol=1e-6)
    assert ((encode(sae, x) > 0).sum(-1) <= 2).all()
    # numpy input and extra leading dims keep their shape
    assert encode(sae, x.numpy().reshape(1, 5, 4)).shape == (1, 5, 6)


def test_standard_sae_encode_matches_relu_oracle(tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig

    st = _hand_state()
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=6))
    sae.load_state_dict(st)
    x = torch.randn(3, 4)
    assert torch.allclose(encode(sae, x), torch.relu((x - st["b_dec"]) @ st["W_enc"] + st["b_enc"]), atol=1e-6)


def test_local_folder_round_trip(tmp_path):
    st = _hand_state()
    _save(build_sae(st, 3, "blocks.2.hook_resid_post", "tiny"), tmp_path / "mine")
    loaded = load_sae(str(tmp_path / "mine"))
    assert loaded.source == "folder" and loaded.hook_name == "blocks.2.hook_resid_post" and loaded.layer == 2
    assert loaded.sae.cfg.architecture() == "topk" and loaded.sae.cfg.k == 3
    for name, t in st.items():
        assert torch.equal(getattr(loaded.sae, name).detach(), t)


def test_upload_valid_pair_loads(tmp_path):
    st = _hand_state()
    cfg, w = _save(build_sae(st, 2, "blocks.0.hook_resid_post", "tiny"), tmp_path / "s")
    loaded = load_sae_upload(cfg, w, name="mine.safetensors")
    assert loaded.source == "upload" and loaded.layer == 0
    assert torch.equal(loaded.sae.W_dec.detach(), st["W_dec"])


def test_upload_rejects_garbage_pickles_and_bad_shapes(tmp_path):
    from safetensors.torch import save

    st = _hand_state()
    cfg, w = _save(build_sae(st, 2, "blocks.0.hook_resid_post", "tiny"), tmp_path / "s")
    with pytest.raises(SAELoadError, match="not valid JSON"):
        load_sae_upload(b"{not json", w)
    with pytest.raises(SAELoadError, match="d_sae"):
        load_sae_upload(json.dumps({"d_in": 4, "architecture": "topk"}).encode(), w)
    with pytest.raises(SAELoadError, match="architecture"):
        load_sae_upload(json.dumps({**json.loads(cfg), "architecture": "mystery"}).encode(), w)
    buf = io.BytesIO()
    torch.save(st, buf)
    with pytest.raises(SAELoadError, match="pickle"):
        load_sae_upload(cfg, buf.getvalue())
    with pytest.raises(SAELoadError, match="pickle"):
        load_sae_upload(cfg, pickle.dumps({"W_enc": [1, 2]}))
    with pytest.raises(SAELoadError, match="too short|header"):
        load_sae_upload(cfg, b"garbage")
    with pytest.raises(SAELoadError, match="outside the file"):
        load_sae_upload(cfg, w[:-64])
    bad = dict(st, W_enc=st["W_enc"].T.contiguous())
    with pytest.raises(SAELoadError, match=r"W_enc has shape \[6, 4\]"):
        load_sae_upload(cfg, save(bad))
    with pytest.raises(SAELoadError, match="lacks"):
        load_sae_upload(cfg, save({"W_enc": st["W_enc"]}))
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [4, 6], "data_offsets": [0, 10**9]}}).encode()
    with pytest.raises(SAELoadError, match="outside the file"):
        safetensors_header(struct.pack("<Q", len(header)) + header + b"\0" * 96)


def test_missing_folder_files_and_unknown_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="has no cfg.json"):
        load_sae(str(tmp_path / "empty"))
    with pytest.raises(SAELoadError, match="shipped SAE"):
        load_sae("no-such-sae")


def test_pretrained_offline_fails_fast_with_clear_message():
    start = time.perf_counter()
    with pytest.raises(SAELoadError) as err:
        load_sae("gpt2-small-res-jb:blocks.8.hook_resid_pre")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "gpt2-small-res-jb" in msg and "unreachable" in msg
    for name in shipped_saes():
        assert name in msg
    with pytest.raises(SAELoadError, match="unknown sae-lens release"):
        load_sae("no-such-release:x")
    with pytest.raises(SAELoadError, match="not found in release"):
        load_sae("gpt2-small-res-jb:no-such-id")


# ---------------------------------------------------------------- probes on synthetic codes

def test_concept_latents_and_probe_find_planted_latent():
    from analysis.saes.probes import compute_concept_latents, compute_sparse_probe

    rng = np.random.default_rng(0)
    neg = rng.exponential(0.5, (60, 50)) * (rng.random((60, 50)) < 0.2)
    pos = rng.exponential(0.5, (60, 50)) * (rng.random((60, 50)) < 0.2)
    pos[:, 7] += 3.0  # planted
    data = compute_concept_latents(pos, neg, "planted")
    assert data.top(1)[0] == 7
    assert data.diff[7] == pytest.approx(pos[:, 7].mean() - neg[:, 7].mean())
    curve = compute_sparse_probe(pos, neg, ks=(1, 2, 4), concept="planted")
    assert list(curve.ks) == [1, 2, 4] and curve.latents[0] == 7
    assert curve.accuracy[0] > 0.95 and curve.chance == pytest.approx(0.5)
    # without the planted latent the first latent is noise: near chance
    pos[:, 7] -= 3.0
    assert compute_sparse_probe(pos, neg, ks=(1,)).accuracy[0] < 0.75


def test_token_codes_pooling():
    from analysis.saes.probes import TokenCodes

    codes = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]], dtype=np.float32)
    tc = TokenCodes(codes, np.array([0, 2, 3]), np.array([1, 2, 3]))
    np.testing.assert_allclose(tc.pooled("max"), [[3, 2], [0, 5]])
    np.testing.assert_allclose(tc.pooled("mean"), [[2, 1], [0, 5]])
    with pytest.raises(ValueError, match="valid poolings"):
        tc.pooled("median")


# ---------------------------------------------------------------- tiny model: codes, quality, card

def _identity_sae(d, hook):
    """ReLU SAE with latents +e_i and -e_i: reconstructs every input exactly."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    eye = torch.eye(d)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=hook)))
    sae.load_state_dict({"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d),
                         "W_dec": torch.cat([eye, -eye], 0), "b_dec": torch.zeros(d)})
    return sae.eval()


def _loaded(sae, hook):
    from analysis.saes.loading import LoadedSAE

    return LoadedSAE(sae, "hand", "folder", hook, int(hook.split(".")[1]))


def test_quality_identity_sae_on_tiny_model(tiny_lm):
    from analysis.saes.quality import measure_quality

    texts = ["the cat is happy .", "the dog went to paris", "good food and bad service !"]
    q = measure_quality(tiny_lm, _identity_sae(32, "blocks.1.hook_resid_post"), texts, 1)
    assert q["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert q["ce_spliced"] == pytest.approx(q["ce_clean"], abs=1e-5)
    assert q["ce_zero_ablated"] != pytest.approx(q["ce_clean"], abs=1e-3)
    assert q["mean_l0"] == pytest.approx(32, abs=1.0)  # one of +e_i / -e_i per dimension
    # clean loss oracle: plain forward, plain cross-entropy over real next tokens
    ids, mask = tiny_lm.tokenize(texts)
    with tiny_lm.locked() as model:
        logits = model(ids, attention_mask=mask, return_type="logits")
    m = mask[:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][m], ids[:, 1:][m])
    assert q["ce_clean"] == pytest.approx(float(ce), rel=1e-5)
    tiny_lm.assert_clean()


def test_token_codes_and_latent_card_on_tiny_model(tiny_lm):
    from analysis.activations import extract
    from analysis.saes.probes import compute_latent_card, token_codes

    hook = "blocks.2.hook_resid_post"
    st = _hand_state(32, 16, seed=3)
    loaded = _loaded(build_sae(st, 4, hook, "tiny"), hook)
    texts = ["the cat is happy .", "he went to paris", "cold night"]
    tc = token_codes(tiny_lm, loaded, texts)
    acts = extract(tiny_lm, texts, [hook], pooling="all")
    x = torch.cat([torch.from_numpy(acts.text(hook, i)[1:]) for i in range(3)])
    pre = (x - st["b_dec"]) @ st["W_enc"] + st["b_enc"]
    vals, idx = pre.topk(4, dim=-1)
    np.testing.assert_allclose(tc.codes, torch.zeros_like(pre).scatter(-1, idx, vals.relu()), atol=1e-5)
    assert list(tc.offsets) == [0, 5, 9, 11]
    latent = int(np.argmax(tc.codes.sum(0)))
    card = compute_latent_card(tiny_lm, loaded, latent, texts, n_top=2, codes=tc)
    assert card.top_texts["max_activation"].iloc[0] == pytest.approx(float(tc.codes[:, latent].max()))
    logits = st["W_dec"][latent] @ tiny_lm.model.W_U.detach()
    want = [tiny_lm.tokenizer.decode([int(i)]) for i in logits.topk(10).indices]
    assert card.promoted_tokens == want
    with pytest.raises(ValueError, match="out of range"):
        compute_latent_card(tiny_lm, loaded, 99, texts, codes=tc)


def test_train_topk_recovers_planted_dictionary():
    from analysis.saes.training import SAETrainConfig, train_topk_sae

    g = torch.Generator().manual_seed(0)
    D = torch.randn(64, 16, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    idx = torch.randint(0, 64, (3000, 2), generator=g)
    z = torch.zeros(3000, 64).scatter_(1, idx, torch.rand(3000, 2, generator=g) * 3 + 1)
    x = z @ D * 40 + 5  # raw scale far from 1: checks the folded normalisation
    cfg = SAETrainConfig(d_sae=128, k=4, steps=400, batch_size=256, lr=3e-3)
    st, rep = train_topk_sae(x, cfg, progress=lambda m: None)
    sae = build_sae(st, 4, "blocks.0.hook_resid_post", "synthetic")
    x_hat = decode(sae, encode(sae, x))
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < 0.1 and rep.n_tokens == 3000
    with pytest.raises(ValueError, match="k must be"):
        SAETrainConfig(k=0)


def test_figures_build(tiny_lm):
    from analysis.saes.figures import concept_latents_figure, probe_accuracy_figure
    from analysis.saes.probes import compute_concept_latents, compute_sparse_probe

    rng = np.random.default_rng(1)
    pos, neg = rng.random((20, 10)), rng.random((20, 10))
    data = compute_concept_latents(pos, neg, "c")
    fig = concept_latents_figure(data, top=5)
    assert len(fig.data[0].y) == 5
    # One category per latent (a numeric axis of ids drew hairline bars), named by id and top tokens.
    top = [int(i) for i in data.top(5)]
    fig = concept_latents_figure(data, top=5, tokens={top[0]: (" good", "great")})
    assert fig.layout.yaxis.type == "category"
    assert fig.data[0].y[-1] == f"#{top[0]}: ' good' 'great'" and fig.data[0].y[0] == f"#{top[4]}"
    assert list(data.frame(5, {top[0]: ("a", "b")})["top_tokens"]) == ["a | b", "", "", "", ""]
    fig = probe_accuracy_figure(compute_sparse_probe(pos, neg, ks=(1, 2)))
    assert list(fig.data[0].x) == [1, 2]


def test_latent_top_tokens_are_distinct_peaks_where_the_latent_fires():
    from analysis.saes.probes import TokenCodes, latent_top_tokens

    # 6 tokens of two texts, 3 latents. Latent 0 peaks on token 7 (twice), then 9, then 5;
    # latent 1 fires only on token 5; latent 2 never fires.
    codes = np.array([[0.9, 0.0, 0.0], [0.5, 0.0, 0.0], [0.8, 0.0, 0.0],
                      [0.2, 0.3, 0.0], [0.0, 0.0, 0.0], [0.7, 0.0, 0.0]])
    ids = np.array([7, 9, 7, 5, 3, 7])
    tc = TokenCodes(codes, np.array([0, 3, 6]), ids)
    got = latent_top_tokens(tc, [0, 1, 2], lambda i: f"t{i}", n=3)
    assert got == {0: ("t7", "t9", "t5"), 1: ("t5",), 2: ()}
    assert latent_top_tokens(tc, [0], str, n=1) == {0: ("7",)}


# ---------------------------------------------------------------- the shipped SAE on the real model

def test_default_sae_is_shipped():
    loaded = load_sae(SHIPPED)
    assert loaded.hook_name == "blocks.6.hook_resid_post" and loaded.layer == 6
    assert loaded.d_in == 640 and loaded.d_sae == 2048


@pytest.mark.parametrize("name", sorted(shipped_saes()))
def test_shipped_sae_loads_with_sae_lens(name):
    from sae_lens import SAE

    from analysis.saes.loading import SAES_DIR

    sae = SAE.load_from_disk(str(SAES_DIR / name))
    loaded = load_sae(name)
    assert loaded.hook_name == f"blocks.{loaded.layer}.hook_resid_post" and loaded.model_name
    assert torch.equal(sae.W_enc, loaded.sae.W_enc)
    assert (SAES_DIR / name / "sae_weights.safetensors").stat().st_size < 15e6
    q = loaded.quality
    assert q["fvu"] < 0.2
    assert q["ce_spliced"] - q["ce_clean"] < 0.5 * (q["ce_zero_ablated"] - q["ce_clean"])


def test_sae_info_command(capsys):
    from analysis.cli import main

    assert main(["sae-info", SHIPPED]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quality"]["fvu"] < 0.2 and out["layer"] == 6


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(shipped_saes()))
def test_shipped_sae_quality_reproduces(real_lm, name):
    from analysis.saes.quality import measure_quality
    from analysis.saes.loading import SAES_DIR
    from analysis.saes.training import CHECK_TEXTS, Corpus

    loaded = load_sae(name)
    corpus_json = json.loads((SAES_DIR / name / "corpus.json").read_text())
    corpus = Corpus((), tuple(corpus_json["held_out"]), (), (), {})
    texts = corpus.quality_texts(loaded.quality["n_texts"])[:CHECK_TEXTS]
    q = measure_quality(real_lm, loaded.sae, texts, loaded.layer)
    print({k: q[k] for k in ("fvu", "mean_l0", "ce_clean", "ce_spliced", "ce_zero_ablated")})
    want = loaded.quality["check_subset"]
    for key in ("fvu", "mean_l0", "ce_clean", "ce_spliced", "ce_zero_ablated"):
        assert q[key] == pytest.approx(want[key], rel=2e-3, abs=1e-4), key
    # the small check set tells the same story as the full held-out numbers
    assert q["fvu"] == pytest.approx(loaded.quality["fvu"], abs=0.08)
    assert q["ce_clean"] < q["ce_spliced"] < q["ce_zero_ablated"]
    real_lm.assert_clean()


def test_train_and_save_end_to_end_on_tiny_model(tiny_lm, tmp_path):
    from sae_lens import SAE

    from analysis.saes.training import SAETrainConfig, shipped_texts, train_and_save

    cfg = SAETrainConfig(layer=1, d_sae=64, k=4, steps=30, batch_size=128, n_samples=1, gen_tokens=3,
                         eval_texts=8)
    q = train_and_save(tiny_lm, cfg, tmp_path / "sae", progress=lambda m: None)
    assert q["n_texts"] == 8 and q["mean_l0"] <= 4 and q["check_subset"]["n_texts"] == 8
    loaded = load_sae(str(tmp_path / "sae"))
    assert loaded.quality == q and loaded.layer == 1 and "Corpus" in loaded.readme
    assert SAE.load_from_disk(str(tmp_path / "sae")).cfg.k == 4
    corpus = json.loads((tmp_path / "sae" / "corpus.json").read_text())
    texts, _ = shipped_texts()
    assert len(corpus["generated"]) > 0 and set(corpus["held_out"]) <= set(texts) | set(corpus["generated"])
    assert corpus["n_train_texts"] + len(corpus["held_out"]) == len(set(texts)) + len(corpus["generated"])
    tiny_lm.assert_clean()


def test_recipe_kinds_are_registered():
    from analysis.saes import recipes
    from analysis.saes.recipes import RECIPES

    assert set(RECIPES) == {"sae_concept_latents", "sae_probe_accuracy", "sae_latent_histogram",
                            "sae_promoted_tokens"}
    for fn in ("concept_latents_recipe", "probe_recipe", "latent_histogram_recipe", "promoted_tokens_recipe"):
        assert callable(getattr(recipes, fn))


def test_concept_latents_recipe_names_each_latent_by_its_peak_tokens(tiny_lm, tmp_path):
    from analysis.concepts import load_concepts
    from analysis.saes.probes import token_codes
    from analysis.saes.recipes import concept_latents_recipe

    hook = "blocks.1.hook_resid_post"
    build_sae(_hand_state(32, 64, seed=5), 4, hook, "tiny").save_model(tmp_path / "sae")
    fig, frame = concept_latents_recipe(tiny_lm, {"sae": str(tmp_path / "sae"), "concept": "food_aspect", "top": 5})
    assert fig.layout.yaxis.type == "category" and len(frame) == 5
    # Oracle for the strongest latent: its largest per-token code over the concept's texts, found directly.
    codes = token_codes(tiny_lm, load_sae(str(tmp_path / "sae")), list(load_concepts()["food_aspect"].texts))
    latent = int(frame["latent"][0])
    peak = tiny_lm.tokenizer.decode([int(codes.token_ids[int(np.argmax(codes.codes[:, latent]))])])
    assert frame["top_tokens"][0].split(" | ")[0] == peak
    assert fig.data[0].y[-1].startswith(f"#{latent}: {peak!r}")  # bars run bottom-up: the strongest is last


def test_truncated_weights_in_a_folder_are_rejected(tmp_path):
    st = _hand_state()
    _, w = _save(build_sae(st, 2, "blocks.0.hook_resid_post", "tiny"), tmp_path / "s")
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(w[:-8])
    with pytest.raises(SAELoadError, match="outside the file"):
        load_sae(str(tmp_path / "s"))
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(pickle.dumps(st))
    with pytest.raises(SAELoadError, match="pickle"):
        load_sae(str(tmp_path / "s"))
