"""The ``repscope`` command line: every analysis the app runs, headless.

Subcommands live in ``analysis/commands/<noun>.py``; each module defines
``register(subparsers)`` adding its parsers with ``set_defaults(func=...)``.
A command returns an exit code; bad input prints one clear line to stderr
and exits non-zero (2 for bad input, 1 for a failed load/run).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = (
    "analysis.commands.core",      # models, app, figure
    "analysis.commands.inspect",   # inspect
    "analysis.commands.concepts",  # concepts, cav
    "analysis.commands.saes",      # train-sae, sae-info, sae-probe
    "analysis.commands.bias",      # bias
    "analysis.commands.steer",     # steer
    "analysis.commands.ches",      # ches, dpo
    "analysis.commands.compare",   # compare, drift, audit
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repscope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from analysis.models import ModelLoadError
    from analysis.uploads import UploadError

    try:
        return int(args.func(args) or 0)
    except (UploadError, ValueError, FileNotFoundError) as err:
        print(f"repscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModelLoadError as err:
        print(f"repscope {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
