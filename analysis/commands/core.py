"""Core subcommands: ``models``, ``app``, ``figure``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path



def _app_main() -> Path:
    """app/main.py of this install, found without importing the app (analysis never imports it)."""
    import importlib.util

    spec = importlib.util.find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the RepScope app package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "main.py"


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model options every model-using command shares."""
    p.add_argument("--model", default=None, help="catalogue key, hub id or local HF folder (default: offline Gemma-3-270M)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")


def load_from_args(args):
    from analysis.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def write_figure(fig, frame, recipe: dict, out: Path, stem: str, formats: list[str]) -> list[Path]:
    """Write ``stem``.{formats}, ``stem``.csv and ``stem``.recipe.json into ``out``."""
    from analysis.figures.export import export_figure, frame_to_csv

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        path.write_bytes(export_figure(fig, fmt))
        written.append(path)
    if frame is not None:
        path = out / f"{stem}.csv"
        path.write_bytes(frame_to_csv(frame))
        written.append(path)
    path = out / f"{stem}.recipe.json"
    path.write_text(json.dumps(recipe, indent=2))
    written.append(path)
    return written


def _models(args) -> int:
    from analysis.models import CATALOGUE, DEFAULT_MODEL, describe, load_model

    if args.load:
        print(json.dumps(describe(load_model(args.load, device=args.device)), indent=2))
        return 0
    for key, spec in CATALOGUE.items():
        flag = "*" if key == DEFAULT_MODEL else " "
        where = "offline" if spec.offline else "hub"
        saes = ", ".join(spec.sae_releases) or "-"
        print(f"{flag} {key:24s} {where:8s} layers={spec.n_layers:<3d} d_model={spec.d_model:<5d} SAEs: {saes}")
    return 0


def _app(args) -> int:
    env = dict(os.environ)
    if args.model:
        env["REPSCOPE_MODEL"] = args.model
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(_app_main()),
        "--server.address", args.address, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]
    return subprocess.call(cmd, env=env, cwd=str(_app_main().parent.parent))


def _figure(args) -> int:
    from analysis.recipes import read_recipe, run_recipe

    recipe = read_recipe(args.recipe)
    fig, frame = run_recipe(recipe)
    stem = args.name or Path(args.recipe).name.split(".")[0]
    for path in write_figure(fig, frame, recipe, Path(args.out), stem, args.formats.split(",")):
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model catalogue, or load one and describe it")
    p.add_argument("--load", metavar="NAME", help="load this model and print its facts")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_models)

    p = sub.add_parser("app", help="start the dashboard (Streamlit) on 127.0.0.1")
    p.add_argument("--model", default=None, help="model to preselect")
    p.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=_app)

    p = sub.add_parser("figure", help="re-create a figure headlessly from its exported recipe")
    p.add_argument("recipe", help="a .recipe.json file downloaded with a figure")
    p.add_argument("--out", default=".", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default: the recipe's)")
    p.add_argument("--formats", default="png,svg,pdf", help="comma-separated: png,svg,pdf")
    p.set_defaults(func=_figure)
