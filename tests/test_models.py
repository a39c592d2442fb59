"""Catalogue, device/dtype choice, offline failure, and the shared-model lock."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from analysis import models
from analysis.models import ModelLoadError, ModelSpec, load_model, pick_device, pick_dtype


def test_catalogue_is_consistent():
    cat = models.catalogue()
    assert models.DEFAULT_MODEL in cat and cat[models.DEFAULT_MODEL].offline
    for name in ("gpt2", "pythia-70m", "gemma-2-2b", "gemma-3-270m", "qwen2.5-0.5b", "llama-3.2-1b"):
        assert name in cat and not cat[name].offline
    assert "gpt2-small-res-jb" in cat["gpt2"].sae_releases


def test_spec_validation_names_valid_values():
    with pytest.raises(ValueError, match="gguf_package"):
        ModelSpec(key="x", title="x", source="ftp", hf_id="x", n_layers=1, d_model=1, n_ctx=1)


def test_device_and_dtype_choice():
    assert pick_device() in ("cpu", "cuda", "mps")
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="valid devices"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cuda", n_params_billion=7) is torch.bfloat16
    assert pick_dtype("cpu", "bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="valid dtypes"):
        pick_dtype("cpu", "float8")


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/pythia-70m", "no-such-org/no-such-model-xyz"])
def test_hub_names_fail_fast_offline(name):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 10, f"offline failure took {elapsed:.1f}s"
    spec = models.CATALOGUE.get(name)
    assert (spec.hf_id if spec else name) in message
    assert "offline" in message.lower() and models.DEFAULT_MODEL in message


def test_hooks_live_only_inside_the_block(tiny_lm):
    seen = []
    ids, _ = tiny_lm.tokenize(["the cat"])
    with tiny_lm.hooked([("blocks.0.hook_resid_post", lambda x, hook: seen.append(1))]) as model:
        model(ids)
    model(ids)
    assert seen == [1]
    tiny_lm.assert_clean()


def test_hooks_removed_after_an_exception(tiny_lm):
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_lm.hooked([("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
            raise RuntimeError("boom")
    tiny_lm.assert_clean()


def test_hooked_block_excludes_other_threads(tiny_lm):
    """While one caller is inside a hooked block, another cannot run a locked pass."""
    inside, order = threading.Event(), []

    def holder():
        with tiny_lm.hooked([]):
            inside.set()
            time.sleep(0.2)
            order.append("holder done")

    def other():
        inside.wait()
        with tiny_lm.locked():
            order.append("other ran")

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order == ["holder done", "other ran"]


@pytest.mark.real_model
def test_default_model_loads_from_the_converted_cache(real_lm):
    from analysis.gguf_convert import converted_folder, is_converted

    assert is_converted() and (converted_folder() / "model.safetensors").is_file()
    assert real_lm.n_layers == models.CATALOGUE[models.DEFAULT_MODEL].n_layers
    assert real_lm.d_model == models.CATALOGUE[models.DEFAULT_MODEL].d_model
    assert load_model() is real_lm  # one model per process
    facts = models.describe(real_lm)
    assert facts["parameters_millions"] == pytest.approx(268, abs=5)
