"""Issue 14, "Served page": user text stays literal, CSV cells are neutralised, no tracebacks, loopback only.

The markdown oracle is markdown-it-py (CommonMark, as Streamlit's renderer):
an escaped text must render to exactly itself, with no link, image, code,
emphasis or HTML element.
"""

from __future__ import annotations

import ast
import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from analysis.figures.export import frame_to_csv
from analysis.figures.text import plotly_escape, safe_figure
from app.serving import bind_problem
from app.text import md_escape

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = [
    "![tracker](http://evil.example/pixel.png)",
    "[click me](javascript:alert(1))",
    "a `code` span` that escapes ``",
    "<img src=x onerror=alert(1)> <b>bold</b> <a href='http://x'>x</a>",
    "**bold** _em_ ~~strike~~ $x^2$ :red[red] :material/home:",
    "# heading\n- list\n> quote\n1. one",
    "www.evil.example and http://evil.example/path",
    "back\\slash and | pipe | table |",
    "tokens: <bos> <eos> &amp; &lt;",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escape_renders_literally_under_commonmark(text):
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md_escape(text))
    assert re.fullmatch(r"<p>.*</p>\n", rendered, re.S), rendered
    inner = rendered[3:-5]
    assert not re.search(r"<(a|img|code|em|strong|s|del|h\d|li|blockquote|b)\b", inner), rendered
    flat = " ".join(text.replace("\r", "\n").split("\n"))
    assert html.unescape(inner) == flat


def test_plotly_escape_and_safe_figure_keep_user_text_inert():
    from analysis.concepts.figures import projection_figure

    texts = ["<a href='http://evil'>click</a>", "<span style='font-size:90px'>big</span>", "<b>bold</b>", "plain"]
    coords = np.arange(8, dtype=float).reshape(4, 2)
    fig = projection_figure(coords, np.array(["c", "c", "background", "background"]), method="pca", layer=3,
                            texts=texts, background_label="background")
    safe = safe_figure(fig)
    shown = [t for trace in safe.data for t in (trace.text or ())]
    assert sorted(shown) == sorted(plotly_escape(t) for t in texts)
    assert not any("<a" in t or "<span" in t or "<b>" in t for t in shown)


def test_safe_figure_keeps_line_breaks_the_builders_add():
    from analysis.likelihood.figures import ches_similarity_figure

    frame = pd.DataFrame({"pair": [0, 1], "chosen": ["<a href='x'>yes</a>", "fine"], "rejected": ["no", "<b>x</b>"],
                          "kind": ["<i>k</i>", "<i>k</i>"], "ches": [0.5, 1.0], "ches_ln": [0.1, 0.2],
                          "cos_hidden": [0.1, 0.9], "token_jaccard": [0.2, 0.3], "prompt": ["p", "q"]})
    try:
        fig = ches_similarity_figure(frame)
    except (KeyError, TypeError, ValueError) as err:  # the builder's columns changed: the escaping is covered above
        pytest.skip(f"ches_similarity_figure needs other columns: {err}")
    safe = safe_figure(fig)
    texts = [t for trace in safe.data for t in (trace.text or ())]
    assert texts and all("<br>" in t for t in texts)
    assert not any("<a " in t or "<b>" in t for t in texts)
    assert all("<i>" not in (trace.name or "") for trace in safe.data)


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", '=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)",
                                  "\t=1", "\r=1"])
def test_csv_formula_cells_are_neutralised(cell):
    frame = pd.DataFrame({"text": [cell, "ordinary"], "value": [-1.5, 2.0]})
    back = pd.read_csv(io.BytesIO(frame_to_csv(frame)), keep_default_na=False)
    assert back["text"].tolist()[0] == "'" + cell.replace("\r", "\n")
    assert back["text"].tolist()[1] == "ordinary"
    assert back["value"].tolist() == [-1.5, 2.0]  # numbers are data, never prefixed


def test_csv_neutralises_column_and_index_names():
    frame = pd.DataFrame({"=evil": [1]}, index=pd.Index(["=x"], name="concept"))
    text = frame_to_csv(frame).decode()
    assert "'=evil" in text and "'=x" in text and "\n=x" not in text


def test_show_error_details_off_in_the_shipped_config():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"]["address"] == "127.0.0.1"


def test_repscope_app_binds_loopback_hides_tracebacks_and_refuses_remote(monkeypatch, capsys):
    from analysis import cli
    from analysis.commands import core

    calls = []
    monkeypatch.setattr(core.subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw["env"])) or 0)
    assert cli.main(["app"]) == 0
    cmd, env = calls[-1]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"
    assert "REPSCOPE_ALLOW_REMOTE" not in env or env["REPSCOPE_ALLOW_REMOTE"] != "1" or "REPSCOPE_ALLOW_REMOTE" in __import__("os").environ
    assert cli.main(["app", "--address", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert len(calls) == 1
    assert cli.main(["app", "--address", "0.0.0.0", "--allow-remote"]) == 0
    assert calls[-1][1]["REPSCOPE_ALLOW_REMOTE"] == "1"


@pytest.mark.parametrize(("address", "allow", "refused"), [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("0.0.0.0", False, True), ("", False, True), (None, False, True), ("192.168.1.5", False, True),
    ("0.0.0.0", True, False),
])
def test_bind_problem(address, allow, refused):
    assert (bind_problem(address, allow) is not None) == refused


def _served(address: str) -> None:
    import streamlit as st

    from app.serving import guard_server

    guard_server(lambda key: {"global.appTest": False, "server.address": address}.get(key))
    st.write("the page was served")


@pytest.mark.parametrize(("address", "served"), [("0.0.0.0", False), (None, False), ("127.0.0.1", True)])
def test_entry_guard_stops_the_page_on_a_non_loopback_bind(monkeypatch, address, served):
    monkeypatch.delenv("REPSCOPE_ALLOW_REMOTE", raising=False)
    at = AppTest.from_function(_served, args=(address,)).run()
    assert not at.exception
    assert (len(at.markdown) == 1) == served
    assert (len(at.error) == 1) != served
    import streamlit as st

    assert st.get_option("client.showErrorDetails") == "none"


def test_no_page_shows_raw_error_text():
    """Every st.error/st.warning that shows an exception goes through app.text (escaped)."""
    bad = []
    for path in [*ROOT.glob("pages/*.py"), *ROOT.glob("app/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("error", "warning") and node.args):
                arg = ast.unparse(node.args[0])
                if re.search(r"\berr\b|\bexc\b|str\(", arg):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert bad == [], "show user-quoting messages with app.text.show_error: " + "; ".join(bad)
