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
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help='split the model over devices: auto, balanced, or a JSON map {"model.layers.0": 0, ...}')
    p.add_argument("--max-memory", default=None, metavar="BUDGET",
                   help="per-device budget for the split, e.g. 0=20GiB,1=20GiB,cpu=64GiB (implies --device-map auto)")


def load_from_args(args, *, batch_size: int | None = None, seq_len: int = 256, n_hooks: int = 1):
    """Check every option (:func:`analysis.commands.checks.check_args`) and the memory estimate, then load."""
    from analysis.commands.checks import check_args
    from analysis.models import load_model
    from analysis.scale import check_fits, parse_device_map, parse_max_memory

    check_args(args)  # bad input exits with one line before the 10-20 s model load
    device_map = parse_device_map(getattr(args, "device_map", None))
    max_memory = parse_max_memory(getattr(args, "max_memory", None))
    check_fits(args.model, device=args.device, dtype=args.dtype, device_map=device_map, max_memory=max_memory,
               batch_size=batch_size or getattr(args, "batch_size", None) or 16, seq_len=seq_len, n_hooks=n_hooks)
    return load_model(args.model, device=None if device_map or max_memory else args.device, dtype=args.dtype,
                      device_map=device_map, max_memory=max_memory)


def write_figure(fig, frame, recipe: dict, out: Path, stem: str, formats: list[str]) -> list[Path]:
    """Write ``stem``.{formats}, ``stem``.csv and ``stem``.recipe.json into ``out`` (each atomically)."""
    from analysis.atomic import write_atomic
    from analysis.figures.export import export_figure, frame_to_csv

    written = [write_atomic(out / f"{stem}.{fmt}", export_figure(fig, fmt)) for fmt in formats if fmt]
    if frame is not None:
        written.append(write_atomic(out / f"{stem}.csv", frame_to_csv(frame)))
    written.append(write_atomic(out / f"{stem}.recipe.json", json.dumps(recipe, indent=2)))
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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _app(args) -> int:
    address = args.address.strip()
    if address not in LOOPBACK and not args.allow_remote:
        raise ValueError(f"--address {address!r} would serve the app beyond this machine; the app has no login. "
                         f"Use {' or '.join(LOOPBACK)}, or add --allow-remote if you really mean it")
    env = dict(os.environ)
    if args.model:
        env["REPSCOPE_MODEL"] = args.model
    if args.allow_remote:
        env["REPSCOPE_ALLOW_REMOTE"] = "1"  # app/main.py refuses a non-loopback address without it
    if args.dev:
        env["REPSCOPE_DEV"] = "1"  # app/main.py shows tracebacks only then
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(_app_main()),
        "--server.address", address, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "full" if args.dev else "none",
    ]
    return subprocess.call(cmd, env=env, cwd=str(_app_main().parent.parent))


def _figure(args) -> int:
    from analysis.recipes import read_recipe, run_recipe

    from analysis.commands.checks import check_formats

    check_formats(args.formats)
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
    p.add_argument("--allow-remote", action="store_true",
                   help="allow an --address other than 127.0.0.1/localhost/::1 (the app has no login)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--dev", action="store_true", help="development: show full tracebacks in the page")
    p.set_defaults(func=_app)

    p = sub.add_parser("figure", help="re-create a figure headlessly from its exported recipe")
    p.add_argument("recipe", help="a .recipe.json file downloaded with a figure")
    p.add_argument("--out", default=".", help="output folder")
    p.add_argument("--name", default=None, help="file stem (default: the recipe's)")
    p.add_argument("--formats", default="png,svg,pdf", help="comma-separated: png,svg,pdf")
    p.set_defaults(func=_figure)
