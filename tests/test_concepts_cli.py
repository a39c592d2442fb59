"""``repscope concepts`` and ``repscope cav`` on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.commands import concepts as cmd


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws" / "concepts"


@pytest.mark.parametrize("spec, expected", [
    ("0-3", (0, 1, 2, 3)), ("5,2,2", (2, 5)), ("0-1,7", (0, 1, 7)), ("all", None), (None, None),
])
def test_parse_layers(spec, expected):
    assert cmd.parse_layers(spec, 18) == expected


@pytest.mark.parametrize("spec", ["0-18", "x", "3-a"])
def test_parse_layers_rejects(spec):
    with pytest.raises(ValueError, match="--layers"):
        cmd.parse_layers(spec, 18)


def test_concepts_list_add_remove(workspace, tmp_path, capsys):
    assert main(["concepts"]) == 0
    listing = capsys.readouterr().out
    assert "positive_sentiment" in listing and "shipped" in listing and "486" in listing
    upload = tmp_path / "upload.csv"
    upload.write_text("text,concept\n" + "".join(f"example sentence {i} here,my_idea\n" for i in range(11)))
    assert main(["concepts", "add", str(upload)]) == 0
    assert (workspace / "my_idea.yaml").exists()
    assert main(["concepts"]) == 0
    assert "my_idea" in capsys.readouterr().out
    assert main(["concepts", "remove", "my_idea"]) == 0
    assert not (workspace / "my_idea.yaml").exists()


def test_concepts_add_bad_files_exit_2(workspace, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("just one line\n")
    assert main(["concepts", "add", str(short)]) == 2
    assert "at least 10" in capsys.readouterr().err
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02")
    assert main(["concepts", "add", str(binary)]) == 2
    assert "binary" in capsys.readouterr().err
    clash = tmp_path / "positive_sentiment.txt"
    clash.write_text("\n".join(f"another happy sentence {i}" for i in range(12)))
    assert main(["concepts", "add", str(clash)]) == 2
    assert "shipped concept" in capsys.readouterr().err


def test_cav_command_writes_figures_csv_and_result(tmp_path, monkeypatch, tiny_lm):
    from analysis.concepts.cavs import CavResult

    monkeypatch.setattr(cmd, "load_from_args", lambda args: tiny_lm)
    out = tmp_path / "out"
    rc = main(["cav", "--concepts", "positive_sentiment,food_aspect", "--layers", "0-2", "--method", "mean_diff",
               "--random", "2", "--folds", "3", "--max-texts", "20", "--out", str(out), "--formats", ""])
    assert rc == 0
    frame = pd.read_csv(out / "cav_accuracy.csv")
    result = CavResult.load(out / "cavs")
    assert result.layers == (0, 1, 2) and result.concepts == ("positive_sentiment", "food_aspect")
    np.testing.assert_allclose(frame["accuracy"].to_numpy(), result.accuracy.ravel())
    recipe = json.loads((out / "cav_accuracy.recipe.json").read_text())
    assert recipe["figure"] == "cav_accuracy" and recipe["config"]["method"] == "mean_diff"
    assert list(out.glob("cav_similarity_L*.csv"))
    assert main(["cav", "--concepts", "no_such_concept", "--out", str(out)]) == 2
