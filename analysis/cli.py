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
import warnings
from pathlib import Path

COMMAND_MODULES = (
    "analysis.commands.core",      # models, app, figure
    "analysis.commands.inspect",   # inspect
    "analysis.commands.concepts",  # concepts, cav
    "analysis.commands.saes",      # train-sae, sae-info, sae-probe
    "analysis.commands.bias",      # bias
    "analysis.commands.steer",     # steer
    "analysis.commands.ches",      # ches, dpo
    "analysis.commands.extract",   # extract (corpus -> shards; Ray Data)
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


# Commands whose --out folder is staged: files appear there only when the run succeeds.
STAGED_COMMANDS = ("figure", "inspect", "cav", "sae-probe", "bias", "steer", "ches", "dpo")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from analysis.figures.export import ExportError
    from analysis.models import ModelLoadError

    def one_line(what: str, err: BaseException) -> str:
        text = " ".join(str(err).split()) or type(err).__name__
        return f"repscope {args.command}: {what}: {text}"

    shown: set[str] = set()
    default_show = warnings.showwarning

    def warn(message, category, *rest, **kw) -> None:
        if not issubclass(category, UserWarning):  # library deprecations: Python's usual display
            return default_show(message, category, *rest, **kw)
        line = one_line("warning", message)  # ours (e.g. a skipped workspace file): one line, once
        if line not in shown:
            shown.add(line)
            print(line, file=sys.stderr)

    warnings.showwarning = warn
    try:
        if args.command in STAGED_COMMANDS and isinstance(getattr(args, "out", None), str):
            return _run_staged(args)
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input (UploadError, SAELoadError ...), unreadable paths
        print(one_line("error", err), file=sys.stderr)
        return 2
    except ModelLoadError as err:
        print(one_line("error", err), file=sys.stderr)
        return 1
    except ExportError as err:  # the numbers were computed; the browser that draws images failed
        print(one_line("error", err), file=sys.stderr)
        return 1
    except RecursionError as err:
        print(one_line("error", err), file=sys.stderr)
        return 2


def _run_staged(args) -> int:
    """Run with ``args.out`` pointed at a staging folder; move the files into place only on success."""
    from analysis.atomic import staged_dir

    out = args.out
    try:
        with staged_dir(out) as stage:
            args.out = str(stage)
            real_stdout = sys.stdout
            sys.stdout = _Rewriting(real_stdout, str(stage), str(Path(out)))
            try:
                code = int(args.func(args) or 0)
            finally:
                sys.stdout = real_stdout
                args.out = out
            if code != 0:
                raise _Failed(code)  # a failed run keeps nothing
    except _Failed as failed:
        return failed.code
    return code


class _Failed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"exit {code}")
        self.code = code


class _Rewriting:
    """stdout that prints final paths instead of staging paths."""

    def __init__(self, stream, old: str, new: str) -> None:
        self._stream, self._old, self._new = stream, old, new

    def write(self, text: str) -> int:
        return self._stream.write(text.replace(self._old, self._new))

    def __getattr__(self, name):
        return getattr(self._stream, name)


if __name__ == "__main__":
    sys.exit(main())
