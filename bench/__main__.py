"""Run every benchmark in one process and write bench/results/latest.json.

Each ``bench/bench_*.py`` module has ``run(report: dict)`` filling its own
section. Ratios are against a plain transformers baseline measured in the same
run, on the same machine, so they are comparable across machines; absolute
times are not. ``python -m bench foundation steering`` runs a subset;
``--device cuda`` (or cpu) picks the device of the suites that load a model
(default: the models module's choice, cuda > mps > cpu).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUITES = ("foundation", "cavs", "bias", "steering", "likelihood", "scale", "rerender")
OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str]) -> int:
    import torch

    argv = list(argv)
    if "--device" in argv:
        i = argv.index("--device")
        if i + 1 >= len(argv):
            print("--device needs a value: cpu, cuda, cuda:N or mps", file=sys.stderr)
            return 2
        from analysis.models import pick_device

        try:
            os.environ["REPSCOPE_BENCH_DEVICE"] = pick_device(argv[i + 1])
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        del argv[i: i + 2]
    chosen = argv or list(SUITES)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        print(f"unknown suites {unknown}; valid: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    report: dict = {
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": os.environ.get("REPSCOPE_BENCH_DEVICE", "auto"),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    failed = []
    for name in chosen:
        try:
            module = importlib.import_module(f"bench.bench_{name}")
        except ModuleNotFoundError:
            report[name] = {"skipped": "bench module not present"}
            continue
        section: dict = {}
        start = time.perf_counter()
        try:
            module.run(section)
        except Exception:  # noqa: BLE001 - one failing suite must not hide the others
            section["error"] = traceback.format_exc(limit=5)
            failed.append(name)
        section["suite_seconds"] = round(time.perf_counter() - start, 1)
        report[name] = section
        print(f"== {name}\n{json.dumps(section, indent=2)}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if argv and OUT.exists():  # a subset run replaces only its own sections
        merged = json.loads(OUT.read_text())
        merged.update({k: report[k] for k in chosen})
        merged.setdefault("updated", {}).update({k: report["started"] for k in chosen})
        report = merged
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
