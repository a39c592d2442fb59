"""DPO checkpoints: safetensors + recipe.json in the workspace, atomic, tied weights kept tied."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.likelihood.checkpoints import (
    check_name, checkpoint_model, checkpoints_root, delete_checkpoint, get_checkpoint, list_checkpoints,
    load_checkpoint, load_checkpoint_into, save_checkpoint,
)
from tests.conftest import make_tiny_lm


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 3)
        self.head = torch.nn.Linear(3, 7, bias=False)
        self.head.weight = self.embed.weight


def test_round_trip_restores_weights_and_recipe():
    lm = make_tiny_lm(seed=1)
    state = {k: v + 1.0 for k, v in lm.model.state_dict().items() if v.is_floating_point()}
    recipe = {"model": lm.name, "backend": lm.backend, "pairs": [0, 3], "seed": 5}
    path = save_checkpoint(state, recipe, "run-a")
    assert path == checkpoints_root() / "run-a"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "recipe.json"]
    assert json.loads((path / "recipe.json").read_text()) == recipe
    got, rec = load_checkpoint("run-a")
    assert rec == recipe and set(got) == set(state)
    for k in state:
        assert torch.equal(got[k], state[k])
    infos = list_checkpoints()
    assert [i.name for i in infos] == ["run-a"] and infos[0].model == "tiny"
    assert list_checkpoints(model="other") == []


def test_load_into_a_copy_changes_its_outputs_to_the_trained_ones():
    lm = make_tiny_lm(seed=2)
    trained = make_tiny_lm(seed=3)  # same architecture, other weights: stands in for a trained copy
    save_checkpoint(trained.model, {"model": lm.name, "backend": lm.backend}, "run-b")
    twin, recipe = checkpoint_model(lm, "run-b")
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.equal(twin.model(ids), trained.model(ids))
        assert not torch.equal(lm.model(ids), trained.model(ids))  # the shared model is untouched
    assert twin.name == "tiny+run-b" and recipe["model"] == "tiny"


def test_tied_weights_stored_once_and_tied_after_load():
    m = Tied()
    save_checkpoint(m, {"model": "x"}, "tied")
    state, _ = load_checkpoint("tied")
    assert state["head.weight"] is state["embed.weight"]
    fresh = Tied()
    load_checkpoint_into(fresh, "tied")
    assert torch.equal(fresh.embed.weight, m.embed.weight) and fresh.head.weight is fresh.embed.weight


def test_refuses_wrong_model_bad_shapes_and_names():
    lm = make_tiny_lm(seed=0)
    save_checkpoint(lm.model, {"model": "gpt2", "backend": "hooked"}, "other-model")
    with pytest.raises(ValueError, match="trained from"):
        load_checkpoint_into(lm.model, "other-model", lm=lm)
    save_checkpoint(Tied(), {"model": "tiny", "backend": "hooked"}, "wrong-shape")
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint_into(lm.model, "wrong-shape")
    for bad in ("", "../x", ".hidden", "a/b", "x" * 65, "a.partial"):
        with pytest.raises(ValueError, match="not valid"):
            check_name(bad)
    with pytest.raises(FileNotFoundError, match="saved checkpoints"):
        get_checkpoint("missing")


def test_overwrite_delete_and_atomic_failure(monkeypatch):
    save_checkpoint({"w": torch.zeros(2)}, {"v": 1}, "c")
    with pytest.raises(FileExistsError):
        save_checkpoint({"w": torch.ones(2)}, {"v": 2}, "c")
    save_checkpoint({"w": torch.ones(2)}, {"v": 2}, "c", overwrite=True)
    state, rec = load_checkpoint("c")
    assert rec == {"v": 2} and torch.equal(state["w"], torch.ones(2))

    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(2)}, {"v": 3}, "c", overwrite=True)
    assert load_checkpoint("c")[1] == {"v": 2}  # the old one survives a failed overwrite
    assert sorted(p.name for p in checkpoints_root().iterdir()) == ["c"]  # no partial folder left
    with pytest.raises(TypeError):
        save_checkpoint({"w": torch.zeros(2)}, {"bad": object()}, "d")
    assert not (checkpoints_root() / "d").exists()
    delete_checkpoint("c")
    assert list_checkpoints() == [] and sorted(checkpoints_root().iterdir()) == []
