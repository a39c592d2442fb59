"""Shared fixtures: a tiny random model (fast, offline) and the real default model.

Set HF_HUB_OFFLINE before transformers is imported anywhere, so a test that
accidentally reaches for the hub fails fast instead of hanging.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_WORDS = (
    "the a an is was and or but not very good bad great terrible food service price "
    "movie film day night cat dog man woman he she it they we you i happy sad love hate "
    "yes no never maybe paris france capital of in on at to be will did went go came "
    "red blue green big small hot cold . , ! ?"
).split()


def make_tiny_tokenizer():
    """A whitespace word-level fast tokenizer with BOS/PAD/UNK, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(dict.fromkeys(TINY_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="right",
    )


def make_tiny_lm(seed: int = 0, n_layers: int = 3, d_model: int = 32, name: str = "tiny"):
    """A tiny random HookedTransformer wrapped as a LoadedModel (no weight processing)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from analysis.models import LoadedModel

    tok = make_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
        n_ctx=64, d_vocab=len(tok), act_fn="gelu", normalization_type="LN", seed=seed,
        default_prepend_bos=False,
    )
    model = HookedTransformer(cfg)
    # set_tokenizer would re-load the tokenizer by name from the hub; assign directly.
    model.tokenizer = tok
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tok, device="cpu", backend="hooked")


@pytest.fixture(scope="session")
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Activation caches go to a temp folder; converted weights stay in the user cache.

    The real model's converted folder is expensive (~90 s), so REPSCOPE_CACHE is
    left alone for real-model tests; everything else gets a private cache.
    """
    if "real_model" not in request.keywords:
        monkeypatch.setenv("REPSCOPE_CACHE", str(tmp_path_factory.mktemp("repscope-cache")))
    yield


@pytest.fixture(scope="session")
def real_lm():
    """The offline default model (Gemma-3-270M), loaded once for the session."""
    from analysis.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_bridge_lm(tmp_path_factory):
    """A tiny random Gemma-3 HF model saved to a folder and loaded by path through
    ``load_model`` (the bridge backend), with the raw HF model as an oracle: ``(lm, hf)``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from analysis.models import load_model

    tok = make_tiny_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
        sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    hf.config._attn_implementation = "eager"  # the bridge runs eager attention too
    return load_model(str(folder)), hf
