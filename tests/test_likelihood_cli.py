"""``repscope dpo`` / ``repscope ches`` headless on the tiny model: files written, bad input refused
with exit status 2 before any model is loaded, a checkpoint saved."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.cli import main
from tests.conftest import make_tiny_lm


@pytest.fixture()
def tiny_cli(monkeypatch, tmp_path):
    import analysis.commands.ches as cmd

    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    loads = []

    def load(args, **kw):
        loads.append(args)
        return make_tiny_lm(seed=0)

    monkeypatch.setattr(cmd, "load_from_args", load)
    return loads


def test_dpo_command_writes_the_page_figures_and_a_checkpoint(tiny_cli, tmp_path):
    from analysis.likelihood import list_checkpoints, load_checkpoint

    out = tmp_path / "out"
    rc = main(["dpo", "displacement_demo", "--out", str(out), "--preset", "paper", "--steps", "2", "--lr", "1e-3",
               "--seeds", "0-1", "--pairs", "0,5", "--formats", "", "--save-checkpoint", "demo-run"])
    assert rc == 0 and len(tiny_cli) == 1
    for kind in ("dpo_curves", "dpo_indicators", "dpo_gainers", "dpo_rank"):
        recipe = json.loads((out / f"displacement_demo.dpo.{kind}.recipe.json").read_text())
        assert recipe["figure"] == kind and recipe["config"]["pairs"] == [0, 5]
        assert recipe["config"]["optimizer"] == "rmsprop" and recipe["config"]["seeds"] == [0, 1]
    summary = pd.read_csv(out / "displacement_demo.dpo.summary.csv")
    assert list(summary["step"]) == [0, 1, 2] and (summary["runs"] == 2).all()
    assert not pd.read_csv(out / "displacement_demo.dpo.gainers.csv").empty
    (info,) = list_checkpoints()
    assert info.name == "demo-run" and info.recipe["seed"] == 1 and info.recipe["steps_done"] == 2
    state, recipe = load_checkpoint("demo-run")
    assert recipe["dpo"]["lr"] == 1e-3 and len(state) > 0


@pytest.mark.parametrize("argv", [
    ["--seeds", "a,b"], ["--optimizer", "rmsprop", "--lr", "-1"], ["--save-checkpoint", "../bad"],
    ["--pairs", "x"], ["--minibatch", "-2"],
])
def test_dpo_bad_input_exits_2_before_loading(tiny_cli, tmp_path, argv, capsys):
    assert main(["dpo", "displacement_demo", "--out", str(tmp_path), *argv]) == 2
    assert tiny_cli == [] and "error" in capsys.readouterr().err


def test_missing_file_exits_2_before_loading(tiny_cli, tmp_path):
    assert main(["dpo", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert main(["ches", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert tiny_cli == []


def test_ches_command_filters_and_writes_geometry(tiny_cli, tmp_path):
    from analysis.likelihood import parse_preferences

    assert main(["ches", "mixed_pairs", "--out", str(tmp_path), "--fraction", "0.05"]) == 0
    kept = parse_preferences("k.jsonl", (tmp_path / "mixed_pairs.ches_lowest.jsonl").read_bytes())
    assert len(kept) == 6  # round(0.05 * 120)
    scores = pd.read_csv(tmp_path / "mixed_pairs.ches.csv")
    lowest = scores.nsmallest(6, "ches_length_normalised")
    assert sorted(p.prompt for p in kept.pairs) == sorted(lowest["prompt"])
    geo = pd.read_csv(tmp_path / "mixed_pairs.token_geometry.csv")
    assert len(geo) == 120 and {"inner", "proj_coeff", "orth_norm", "may_displace"} <= set(geo.columns)
    assert main(["ches", "displacement_demo", "--out", str(tmp_path), "--filter", "window", "--window", "5"]) == 0
    assert len(parse_preferences("k.jsonl", (tmp_path / "displacement_demo.ches_window.jsonl").read_bytes())) == 5
