"""Scale benchmark: corpus extraction on Ray Data actors (1 and 2 workers) against
single-process ``extract``, on the default model, in this run.

Same texts, hooks (resid_post of every layer, last-token pooling) and batch size
everywhere. Ray starts once, before the timed runs. Reported per path:

* ``end_to_end_texts_per_s``: texts / wall time of ``extract_corpus``, which includes
  each actor loading the model (a fixed cost a long corpus amortises);
* ``steady_texts_per_s``: texts of the shards finished after the first one / the
  time between the first and the last shard finishing (the rate once warm).

Ratios divide by single-process ``extract`` (warm model) at its best thread count (1 or all cores).
On a 2-core machine two 1-thread actors compete with one 2-thread process for
the same cores, so ~1x is the ceiling here; on a GPU node each actor has its own GPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
N_TEXTS = 128
SHARD = 16
BATCH = 16


def _texts(n: int) -> list[str]:
    data = yaml.safe_load((ROOT / "assets" / "concepts" / "background.yaml").read_text())["texts"]
    return [data[i % len(data)] + ("" if i < len(data) else f" ({i})") for i in range(n)]


def _steady(run) -> float:
    times = run.details.get("finish_seconds") or []
    if len(times) < 2:
        return 0.0
    order = sorted(range(len(times)), key=times.__getitem__)
    sizes = [min(SHARD, run.n_texts - i * SHARD) for i in sorted(run.computed)]
    texts_after_first = sum(sizes[i] for i in order[1:])
    return texts_after_first / max(1e-9, times[order[-1]] - times[order[0]])


def run(report: dict) -> None:
    import ray
    import torch

    from analysis.activations import extract, resid_hooks
    from analysis.models import load_model
    from analysis.scale.ray_extract import ExtractJob, extract_corpus, start_local_ray

    lm = load_model(device=os.environ.get("REPSCOPE_BENCH_DEVICE"))  # python -m bench --device ...
    texts = _texts(N_TEXTS)
    hooks = resid_hooks(lm)
    report["setup"] = {"texts": len(texts), "hooks": len(hooks), "batch_size": BATCH, "shard_size": SHARD,
                       "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "model": lm.name}
    extract(lm, texts[:BATCH], hooks, batch_size=BATCH, use_cache=False)  # warm-up
    default_threads = torch.get_num_threads()
    rates = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        extract(lm, texts, hooks, batch_size=BATCH, use_cache=False)
        rates[threads] = len(texts) / (time.perf_counter() - start)
    torch.set_num_threads(default_threads)
    # The baseline is single-process extract at its best thread count: on a loaded machine
    # torch's multi-thread barriers can collapse (measured 0.7 vs 9 texts/s here).
    single = max(rates.values())
    report["single_process_texts_per_s"] = {f"{t}_threads": round(r, 2) for t, r in rates.items()}

    start_local_ray(os.cpu_count() or 2)
    try:
        job = ExtractJob(model=lm.name, hook_names=tuple(hooks), batch_size=BATCH, device=lm.device)
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                res = extract_corpus(job, texts, out, workers=workers, shard_size=SHARD)
                wall = time.perf_counter() - t0
            assert res.complete, res
            steady = _steady(res)
            report[f"ray_{workers}_workers"] = {
                "end_to_end_texts_per_s": round(len(texts) / wall, 2), "steady_texts_per_s": round(steady, 2),
                "wall_seconds": round(wall, 1), "actors": len(res.details.get("actor_pids", [])),
                "cpus_per_actor": res.details.get("cpus_per_actor"),
            }
    finally:
        ray.shutdown()
    r1, r2 = report["ray_1_workers"], report["ray_2_workers"]
    report["ratios"] = {
        "ray1_steady_vs_single": round(r1["steady_texts_per_s"] / single, 2),
        "ray2_steady_vs_single": round(r2["steady_texts_per_s"] / single, 2),
        "ray2_vs_ray1_steady": round(r2["steady_texts_per_s"] / max(1e-9, r1["steady_texts_per_s"]), 2),
        "ray2_end_to_end_vs_single": round(r2["end_to_end_texts_per_s"] / single, 2),
    }
