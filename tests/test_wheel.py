"""A built wheel works outside the checkout: CLI, catalogue, assets and a page.

The wheel is built from this checkout and installed (without dependencies)
into a scratch venv that sees the test environment's site-packages through
a ``.pth`` line, so nothing is downloaded. A plain path line in a ``.pth``
file does not run the ``.pth`` files inside that folder, so the checkout's
editable-install hook stays off and every import must come from the wheel;
the test checks that explicitly. Everything runs from a temporary folder, so
the checkout's ``./pages`` or ``./assets`` cannot be picked up by accident.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True, cwd=work, timeout=600)
    wheel = next(dist.glob("repscope-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "repscope-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=work, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return {"py": py, "bin": venv / "bin", "cwd": work, "env": env, "site": site}


def _run(installed, *cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), cwd=installed["cwd"], env=installed["env"], text=True,
                          capture_output=True, timeout=timeout)


def test_imports_come_from_the_wheel(installed):
    code = "import analysis, app, repscope_pages; print(analysis.__file__); print(app.__file__)"
    out = _run(installed, installed["py"], "-c", code)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert str(installed["site"]) in line, f"imported from outside the wheel: {line}"


def test_cli_help_and_models_from_the_wheel(installed):
    out = _run(installed, installed["bin"] / "repscope", "--help")
    assert out.returncode == 0, out.stderr
    for command in ("models", "app", "figure", "inspect", "concepts", "bias", "steer", "dpo"):
        assert command in out.stdout, command
    out = _run(installed, installed["bin"] / "repscope", "models")
    assert out.returncode == 0, out.stderr
    assert "gemma-3-270m" in out.stdout


def test_assets_and_concepts_from_the_wheel(installed):
    code = textwrap.dedent("""
        from analysis.paths import ASSETS
        from analysis.concepts import load_concepts
        print(ASSETS)
        print(len(load_concepts()))
    """)
    out = _run(installed, installed["py"], "-c", code)
    assert out.returncode == 0, out.stderr
    assets, n = out.stdout.split()
    assert "repscope_assets" in assets and str(installed["site"]) in assets
    assert int(n) >= 17


def test_a_page_runs_from_the_wheel(installed):
    code = textwrap.dedent("""
        from streamlit.testing.v1 import AppTest
        from app.paths import MAIN_SCRIPT, PAGES_DIR
        assert "repscope_pages" in str(PAGES_DIR), PAGES_DIR
        at = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        print("pages-ok", len(at.title) + len(at.header) + len(at.markdown))
    """)
    out = _run(installed, installed["py"], "-c", code, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pages-ok" in out.stdout
