"""The scale-out checks that need a GPU, in one run on a single-GPU machine (< 10 min).

    .venv/bin/python tests/gpu/run_gpu_checks.py            # on a machine with CUDA
    .venv/bin/python tests/gpu/run_gpu_checks.py --dry-run  # the same flow on CPU (no offload asserts)

Checks, on the default model (Gemma-3-270M, float32, TF32 off):
1. the memory estimate is >= what loading and one planned batch really take;
2. extraction on CUDA equals extraction on CPU (|diff| <= 1e-4 * max|x|: float32
   kernels differ in summation order, 18 layers deep);
3. device_map="auto" on one GPU: the bridge's split model equals the plain CUDA one;
4. max_memory forcing CPU offload: the estimate refuses for the bridge (which cannot
   mix CPU and GPU), and the nnsight backend runs the offloaded model with the same
   residuals as the bridge on CUDA (same tolerance);
5. steering on CUDA: the hook adds alpha*v on the layer's device (logits equal to a
   hand-made addition);
6. a Ray GPU actor: ``extract_corpus(workers=1)`` asks for one GPU per actor and
   writes the shards CUDA extraction computes.
Prints one JSON summary; exit status 1 when any check fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DRY = "--dry-run" in sys.argv
DEV = "cpu" if DRY else "cuda"
RESULTS: dict = {"device": DEV}
HOOKS = [f"blocks.{l}.hook_resid_post" for l in (0, 6, 12, 17)]


def texts(n: int = 48) -> list[str]:
    import yaml

    data = yaml.safe_load((ROOT / "assets" / "concepts" / "background.yaml").read_text())["texts"]
    return data[:n]


def close(a, b, name: str, rel: float = 1e-4) -> float:
    tol = rel * float(np.abs(b).max())
    diff = float(np.abs(a - b).max())
    assert diff <= tol, f"{name}: |diff| {diff:.3g} > {tol:.3g}"
    return diff


def check(name: str):
    def wrap(fn):
        start = time.perf_counter()
        try:
            RESULTS[name] = {"ok": True, **(fn() or {})}
        except Exception as err:  # noqa: BLE001 - report every check, fail at the end
            RESULTS[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                             "trace": traceback.format_exc(limit=4)}
        RESULTS[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(RESULTS[name])[:400], flush=True)
        return fn
    return wrap


def main() -> int:
    from analysis.activations import extract
    from analysis.models import load_model
    from analysis.scale import InsufficientMemory, check_fits

    if not DRY and not torch.cuda.is_available():
        print("no CUDA GPU: run with --dry-run for the CPU flow", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    corpus = texts()
    state: dict = {}

    @check("1_estimate_covers_real_use")
    def _():
        plan = check_fits(None, device=DEV, dtype="float32", batch_size=16, seq_len=64, n_hooks=len(HOOKS))
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        lm = load_model(device=DEV)
        state["cuda"] = lm
        out = extract(lm, corpus[:16], HOOKS, batch_size=16, use_cache=False)
        state["cuda_acts"] = extract(lm, corpus, HOOKS, batch_size=16, use_cache=False)
        peak = torch.cuda.max_memory_allocated() if DEV == "cuda" else 0
        if DEV == "cuda":
            assert plan.need.total_bytes >= peak, f"estimate {plan.need.total_bytes} < peak {peak}"
        return {"estimate_gb": round(plan.need.total_bytes / 1e9, 3), "peak_gb": round(peak / 1e9, 3),
                "n_texts": len(out.n_tokens)}

    @check("2_cuda_equals_cpu")
    def _():
        cpu = load_model(device="cpu")
        ref = extract(cpu, corpus, HOOKS, batch_size=16, use_cache=False)
        state["cpu_acts"] = ref
        return {"max_abs_diff": {h: close(state["cuda_acts"].values[h], ref.values[h], h) for h in HOOKS}}

    @check("3_device_map_auto_equals_single_device")
    def _():
        split = load_model(device_map="auto")
        devices = sorted({str(p.device) for p in split.model.parameters()})
        got = extract(split, corpus, HOOKS, batch_size=16, use_cache=False)
        return {"devices": devices,
                "max_abs_diff": {h: close(got.values[h], state["cuda_acts"].values[h], h, 1e-5) for h in HOOKS}}

    @check("4_cpu_offload")
    def _():
        budget = {0: "300MB", "cpu": "16GiB"}
        try:
            check_fits(None, device=None, dtype="float32", device_map="auto", max_memory=budget)
            refused = None
        except InsufficientMemory as err:
            refused = str(err)
        if DEV == "cuda":
            assert refused and "would not fit" in refused, "the estimate let a 1 GB model into 300 MB of GPU"
        from analysis.gguf_convert import converted_folder
        from analysis.scale import extract_nnsight

        kw = {"device_map": "auto", "max_memory": budget} if DEV == "cuda" else {}
        got = extract_nnsight(str(converted_folder()), corpus, HOOKS, batch_size=16, dispatch=True,
                              dtype=torch.float32, **kw)
        diffs = {h: close(got.values[h], state["cuda_acts"].values[h], h) for h in HOOKS}
        return {"refusal": (refused or "")[:300], "max_abs_diff": diffs}

    @check("5_steering_on_the_layers_device")
    def _():
        from analysis import steering
        from analysis.activations import resid_hook

        lm = state["cuda"]
        v = np.random.default_rng(0).normal(size=(lm.n_layers, lm.d_model)).astype(np.float32)
        vec = steering.SteeringVector(model=lm.name, vectors=v, layers=(6,))
        ids, mask = lm.tokenize(corpus[:4])
        with torch.inference_mode():
            with steering.apply(lm, vec, 2.0):
                got = lm.model(ids, attention_mask=mask)
            delta = torch.as_tensor(2.0 * v[6], device=DEV)
            with lm.hooked([(resid_hook(6), lambda r, hook: r + delta)]) as model:
                want = model(ids, attention_mask=mask)
        diff = float((got - want).abs().max())
        assert diff == 0.0, f"steered logits differ from the hand-made addition by {diff}"
        return {"max_abs_diff": diff}

    @check("6_ray_gpu_actor")
    def _():
        import ray

        from analysis.scale import load_shards
        from analysis.scale.ray_extract import ExtractJob, extract_corpus, start_local_ray

        start_local_ray(os.cpu_count() or 2)
        try:
            with tempfile.TemporaryDirectory() as out:
                job = ExtractJob(model="", hook_names=tuple(HOOKS), batch_size=16, device=DEV)
                run = extract_corpus(job, corpus, out, workers=1, shard_size=16)
                got = load_shards(out)
        finally:
            ray.shutdown()
        if DEV == "cuda":
            assert run.details["gpus_per_actor"] == 1.0, run.details
        diffs = {h: close(got.values[h], state["cuda_acts"].values[h], h) for h in HOOKS}
        return {"details": {k: v for k, v in run.details.items() if k != "finish_seconds"},
                "texts_per_s": round(run.texts_per_second, 1), "max_abs_diff": diffs}

    failed = [k for k, v in RESULTS.items() if isinstance(v, dict) and not v.get("ok")]
    RESULTS["failed"] = failed
    out = Path(os.environ.get("OUT") or tempfile.gettempdir()) / "gpu_checks.json"
    out.write_text(json.dumps(RESULTS, indent=2))
    print(json.dumps({"failed": failed, "written": str(out)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
