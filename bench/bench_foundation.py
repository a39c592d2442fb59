"""Foundation benchmark: extraction throughput, backends, live-inspection latency, app start, memory.

Baseline: plain transformers ``AutoModelForCausalLM`` (default attention) over the
same right-padded batch with ``output_hidden_states=True``, timed in this run.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import yaml

from bench.timing import median_time

ROOT = Path(__file__).resolve().parent.parent
REPS = 3


def _texts(n: int = 32) -> list[str]:
    data = yaml.safe_load((ROOT / "assets" / "concepts" / "background.yaml").read_text())
    return data["texts"][:n]




def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run(report: dict) -> None:
    from transformers import AutoModelForCausalLM

    from analysis.activations import extract, resid_hooks
    from analysis.gguf_convert import converted_folder
    from analysis.models import load_model

    rss0 = _rss_mb()
    lm = load_model(device=os.environ.get("REPSCOPE_BENCH_DEVICE"))
    report["load_seconds_bridge"] = round(lm.load_seconds, 2)
    report["rss_after_bridge_mb"] = round(_rss_mb() - rss0)
    texts = _texts()
    ids, mask = lm.tokenize(texts)
    n_tokens = int(mask.sum())
    report["batch"] = {"texts": len(texts), "real_tokens": n_tokens, "padded_shape": list(ids.shape)}

    hf = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32).eval().to(lm.device)

    def baseline():
        with torch.inference_mode():
            hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    t_hf = median_time(baseline, REPS)
    all_layers = resid_hooks(lm)
    t_all = median_time(lambda: extract(lm, texts, all_layers, batch_size=len(texts), use_cache=False))
    t_l6 = median_time(lambda: extract(lm, texts, resid_hooks(lm, [6]), batch_size=len(texts), use_cache=False))
    t_cached = median_time(lambda: extract(lm, texts, all_layers, batch_size=len(texts)))
    report["extraction"] = {
        "transformers_tokens_per_s": round(n_tokens / t_hf),
        "repscope_all_layers_tokens_per_s": round(n_tokens / t_all),
        "ratio_all_layers": round(t_hf / t_all, 2),
        "repscope_layer6_stop_at_layer_tokens_per_s": round(n_tokens / t_l6),
        "ratio_layer6_stop_at_layer": round(t_hf / t_l6, 2),
        "disk_cache_hit_seconds": round(t_cached, 3),
    }

    # Backend comparison (the reason the bridge is the default).
    rss1 = _rss_mb()
    hooked = load_model(backend="hooked", device=os.environ.get("REPSCOPE_BENCH_DEVICE"))
    report["load_seconds_hooked"] = round(hooked.load_seconds, 2)
    report["rss_after_hooked_mb"] = round(_rss_mb() - rss1)

    def hooked_forward():
        with torch.inference_mode():
            hooked.model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in set(all_layers))

    def bridge_forward():
        with torch.inference_mode():
            lm.model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in set(all_layers))

    t_hooked, t_bridge = median_time(hooked_forward), median_time(bridge_forward)
    # Exactness oracle: transformers with eager attention (the bridge runs eager;
    # sdpa reorders float sums and differs by ~1e-3 from both backends).
    eager = AutoModelForCausalLM.from_pretrained(converted_folder(), dtype=torch.float32,
                                                 attn_implementation="eager").eval().to(lm.device)
    one = ids[:1, : int(mask[0].sum())]
    diffs = {}
    with torch.inference_mode():
        hidden = eager(input_ids=one, output_hidden_states=True).hidden_states
        for name, backend in (("bridge", lm), ("hooked", hooked)):
            _, cache = backend.model.run_with_cache(one, names_filter=lambda n: n in set(all_layers))
            diffs[name] = max(
                float((cache[all_layers[l]][0] - hidden[l + 1][0]).abs().max()) for l in range(lm.n_layers - 1)
            )
    report["backends"] = {
        "bridge_forward_cache_s": round(t_bridge, 3),
        "hooked_forward_cache_s": round(t_hooked, 3),
        "bridge_speedup_over_hooked": round(t_hooked / t_bridge, 2),
        "bridge_rss_mb": report.pop("rss_after_bridge_mb"),
        "hooked_rss_mb": report.pop("rss_after_hooked_mb"),
        "bridge_max_abs_diff_vs_transformers_eager": diffs["bridge"],
        "hooked_max_abs_diff_vs_transformers_eager": diffs["hooked"],
    }
    del hooked, hf, eager

    try:
        from analysis.inspection.lens import inspect_prompt
    except ModuleNotFoundError:
        report["live_inspection"] = "analysis.inspection.lens not present"
    else:
        report["live_inspection"] = live_inspection(lm)

    report["app_cold_start"] = _app_cold_start()
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


PROMPT = "The old lighthouse keeper climbed the stairs every evening to light the lamp for ships"


def live_inspection(lm) -> dict:
    """First figure (forward: norms, attention, next token), all four (+ fused lens), and the lens
    against the fp32 matmul roofline of the same shape (rows × d_model × vocab), measured here."""
    from analysis.inspection.lens import _logit_lens, add_lens, inspect_prompt
    from analysis.logprobs import unembedding

    n = len(lm.tokenizer(PROMPT)["input_ids"])
    t_first = median_time(lambda: inspect_prompt(lm, PROMPT, lens=False), reps=5)
    t_all = median_time(lambda: inspect_prompt(lm, PROMPT), reps=5)
    base = inspect_prompt(lm, PROMPT, lens=False)
    t_lens = median_time(lambda: add_lens(lm, base), reps=5)
    model = lm.model
    W, _, _ = unembedding(model)
    rows = lm.n_layers * n
    h = torch.randn(rows, W.shape[1], device=W.device)
    t_mm = median_time(lambda: h @ W.T, reps=5)
    flops = 2 * rows * W.shape[1] * W.shape[0]
    resid = torch.as_tensor(base.resid)
    ids = torch.as_tensor(base.token_ids)
    with torch.inference_mode():
        t_kernel = median_time(lambda: _logit_lens(model, resid, ids, 10), reps=5)
    return {
        "prompt_tokens": n, "first_figure_s": round(t_first, 3), "warm_latency_s": round(t_all, 3),
        "lens_s": round(t_lens, 3), "lens_kernel_s": round(t_kernel, 3),
        "matmul_floor_s": round(t_mm, 3), "matmul_gflops": round(flops / t_mm / 1e9, 1),
        "lens_gflop": round(flops / 1e9, 1), "lens_fraction_of_roofline": round(t_mm / t_kernel, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app_cold_start() -> dict:
    """Seconds from `streamlit run` to the home page rendered, and to the model facts shown."""
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        return {"skipped": "playwright not installed"}
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    out: dict = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            page = browser.new_page()
            deadline = time.time() + 60
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                    break
                except Exception:  # noqa: BLE001 - server not up yet
                    if time.time() > deadline:
                        raise
                    time.sleep(0.25)
            page.get_by_text("RepScope", exact=False).first.wait_for(timeout=60000)
            out["first_render_s"] = round(time.perf_counter() - start, 2)
            page.get_by_text("d_model", exact=False).first.wait_for(timeout=300000)
            out["model_facts_shown_s"] = round(time.perf_counter() - start, 2)
            browser.close()
    except Exception as err:  # noqa: BLE001 - report, don't crash the whole bench
        out["error"] = f"{type(err).__name__}: {err}"[:300]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
    return out


if __name__ == "__main__":
    import json

    r: dict = {}
    run(r)
    print(json.dumps(r, indent=2))
