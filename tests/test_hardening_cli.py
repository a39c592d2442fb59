"""Issue 14, "CLI": one line and exit 2 on bad input, BEFORE the model loads; no partial outputs.

``load_model`` is replaced by a tripwire: a bad argument must be reported
without reaching it. Good arguments reach it (exit 1 from the tripwire), which
shows the check is not simply refusing everything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from analysis import cli
from analysis.errors import ModelLoadError

REACHED = "tripwire: the model load was reached"


@pytest.fixture
def tripwire(monkeypatch, tmp_path):
    import analysis.models

    calls = []

    def load_model(*args, **kwargs):
        calls.append(args)
        raise ModelLoadError(REACHED)

    monkeypatch.setattr(analysis.models, "load_model", load_model)
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.chdir(tmp_path)
    return calls


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "surrogate.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\\ud800"}\n')
    (tmp_path / "caps.csv").write_bytes(b"Prompt,Positive,Negative\np,a,b\nq,c,d\nr,e,f\n")
    (tmp_path / "bad_prefs.jsonl").write_bytes(b'{"prompt": "q", "chosen": "a"}\n')
    return tmp_path


BAD = [
    (["cav", "--concepts", "no_such_concept"], r"--concepts: unknown concept 'no_such_concept'"),
    (["cav", "--concepts", "positive_sentiment", "--layers", "abc"], r"--layers 'abc'"),
    (["cav", "--concepts", "positive_sentiment", "--layers", "99"], r"layers must be within 0-17"),
    (["cav", "--concepts", "positive_sentiment", "--method", "bogus"], r"method 'bogus'"),
    (["cav", "--concepts", "positive_sentiment", "--background", "nope"], r"unknown background 'nope'"),
    (["cav", "--concepts", "positive_sentiment", "--formats", "gif"], r"--formats: unknown \['gif'\]"),
    (["steer", "--pairs", "sentiment", "--out", "o", "--alpha", "abc"], r"--alpha 'abc'"),
    (["steer", "--pairs", "sentiment", "--out", "o", "--alpha=1,nan"], r"finite numbers"),
    (["steer", "--pairs", "sentiment", "--out", "o", "--position", "bogus"], r"position 'bogus'"),
    (["steer", "--pairs", "missing.jsonl", "--out", "o"], r"neither a shipped set nor a file"),
    (["steer", "--pairs", "sentiment", "--out", "o", "--layer", "99"], r"--layer 99: layers must be within"),
    (["sae-probe", "no_such_concept"], r"unknown concept 'no_such_concept'"),
    (["sae-probe", "positive_sentiment", "--sae", "no_such_sae"], r"--sae 'no_such_sae': not a shipped SAE"),
    (["inspect", "--file", "missing.txt"], r"no such file"),
    (["inspect", "--file", "folder"], r"is a folder, not a file"),
    (["inspect", "--file", "surrogate.jsonl"], r"line 2 field 'text' holds a lone UTF-16 surrogate"),
    (["inspect", "--text", "\udcff"], r"--text: the text holds a lone UTF-16 surrogate"),
    (["inspect", "--text", "hello", "--formats", "bmp"], r"--formats: unknown"),
    (["inspect", "--text", "hello", "--layer", "40"], r"--layer 40"),
    (["ches", "missing.jsonl", "--out", "o"], r"no such (preference )?file"),
    (["ches", "folder", "--out", "o"], r"is a folder|no such preference file"),
    (["dpo", "bad_prefs.jsonl", "--out", "o"], r"line 1 has fields"),
    (["train-sae", "--layer", "99"], r"--layer 99"),
    (["bias", "--targets", "nope", "--refs", "male_coded,female_coded"], r"unknown concepts? \[?'nope'"),
    (["bias", "--preset", "bogus"], r"valid presets"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_argument_is_one_line_exit_2_before_the_model_loads(tripwire, files, capsys, argv, message):
    import re

    code, out, err = run(argv, capsys)
    assert code == 2, err
    assert tripwire == [], "the model was loaded before the bad argument was reported"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"repscope {argv[0]}: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (files / "o").exists(), "a failed command left an output folder"


@pytest.mark.parametrize("argv", [
    ["cav", "--concepts", "positive_sentiment,negative_sentiment", "--layers", "0-3"],
    ["steer", "--pairs", "caps.csv", "--out", "o", "--alpha=-1,0,1"],
    ["inspect", "--text", "hello"],
    ["sae-probe", "positive_sentiment"],
])
def test_good_arguments_reach_the_model_load(tripwire, files, capsys, argv):
    code, _, err = run(argv, capsys)
    assert code == 1 and REACHED in err
    assert len(tripwire) == 1


def test_no_tracebacks_for_files_that_are_folders_or_bad_sae_configs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    code, _, err = run(["concepts", "add", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err and "Traceback" not in err
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 6, "architecture": ["topk"]}))
    (sae / "sae_weights.safetensors").write_bytes(b"\x80" + b"\0" * 20)
    code, _, err = run(["sae-info", str(sae)], capsys)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and "'architecture' must be a string" in err and len(errors) == 1 and "Traceback" not in err


def test_failed_run_leaves_no_partial_outputs(tmp_path, capsys):
    out = tmp_path / "out"

    def half_then_fail(args):
        Path(args.out, "alpha_sweep.png").write_bytes(b"half")
        print(Path(args.out) / "alpha_sweep.png")
        raise ValueError("the run failed after writing a file")

    args = argparse.Namespace(command="steer", out=str(out), func=half_then_fail)
    with pytest.raises(ValueError):
        cli._run_staged(args)
    assert not out.exists()


def test_successful_run_prints_final_paths(tmp_path, capsys):
    out = tmp_path / "out"

    def writes(args):
        Path(args.out, "summary.json").write_text("{}")
        print(Path(args.out) / "summary.json")
        return 0

    assert cli._run_staged(argparse.Namespace(command="steer", out=str(out), func=writes)) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "summary.json") and (out / "summary.json").read_text() == "{}"
    assert [p.name for p in out.iterdir()] == ["summary.json"]
