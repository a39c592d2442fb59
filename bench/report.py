"""Print bench/results/latest.json as the README's markdown table: ``python -m bench.report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"

# (suite, dotted key, label); a missing key prints "n/a".
ROWS = [
    ("foundation", "extraction.ratio_all_layers", "Activation extraction, all 18 layers: throughput / transformers forward"),
    ("foundation", "extraction.ratio_layer6_stop_at_layer", "Activation extraction, layer 6 only (stops early): throughput / transformers"),
    ("foundation", "extraction.transformers_tokens_per_s", "transformers forward (output_hidden_states), tokens/s"),
    ("foundation", "extraction.disk_cache_hit_seconds", "Activation disk-cache hit, 32 texts × 18 layers (s)"),
    ("foundation", "backends.bridge_speedup_over_hooked", "TransformerBridge speed / HookedTransformer (hooked forward + cache)"),
    ("foundation", "backends.bridge_max_abs_diff_vs_transformers_eager", "Bridge residuals vs transformers (eager), max abs diff"),
    ("foundation", "backends.hooked_max_abs_diff_vs_transformers_eager", "HookedTransformer residuals vs transformers (eager), max abs diff"),
    ("foundation", "live_inspection.first_figure_s", "Live inspection, 16-token prompt: first figures (forward, norms, attention, next token) (s; target ≤ 0.3)"),
    ("foundation", "live_inspection.warm_latency_s", "Live inspection, 16-token prompt: all four figures incl. logit lens (s; target ≤ 0.9)"),
    ("foundation", "live_inspection.matmul_gflops", "fp32 matmul throughput, lens shape (rows × d_model × vocab), this run (GFLOP/s)"),
    ("foundation", "live_inspection.lens_kernel_s", "Logit lens alone, 18 layers × 16 tokens × 262,144 words (s)"),
    ("foundation", "live_inspection.matmul_floor_s", "fp32 matmul of the lens's shape, this run: the lens's floor (s)"),
    ("foundation", "live_inspection.lens_fraction_of_roofline", "Logit lens (fused, one pass): fraction of the matmul roofline of the same shape (target ≥ 0.75)"),
    ("foundation", "app_cold_start.first_render_s", "App cold start to first rendered page (s)"),
    ("foundation", "app_cold_start.model_facts_shown_s", "App cold start to model loaded and shown (s)"),
    ("foundation", "peak_rss_mb", "Peak RSS of the foundation bench, two backends loaded (MB)"),
    ("cavs", "cold_s", "CAVs: 3 concepts × 18 layers × 100 texts, cold (s)"),
    ("cavs", "warm_s", "CAVs: same, warm activation cache, logistic, 5 folds + 10 random splits (s; target ≤ 2)"),
    ("cavs", "warm_mean_diff_s", "CAVs: same, warm, mean-difference (s)"),
    ("cavs", "sklearn_oracle.seconds", "CAVs: the same logistic fits with sklearn newton-cg, this run (s)"),
    ("cavs", "ratio_warm_vs_sklearn_fits", "CAVs: sklearn fit time / our warm time (higher is better)"),
    ("cavs", "sklearn_oracle.accuracy_diff_samples", "CAVs: max held-out accuracy difference vs sklearn (test samples)"),
    ("bias", "cold_s", "Bias preset (5 targets × 2 refs × 18 layers, bootstrap 200), cold (s)"),
    ("bias", "warm_s", "Bias preset, warm, incl. 1,000 permutations per test (s; target ≤ 5)"),
    ("bias", "rerender_s", "Bias figures re-render, warm (s)"),
    ("bias", "logistic_preset_warm_s", "Bias preset with logistic CAVs (batched logistic bootstrap + 1,000-permutation null), warm (s)"),
    ("steering", "pipeline.stages.steer_default_cold.seconds", "Steering: default `repscope steer`, sentiment, cold activation cache (s; target ≤ 60)"),
    ("steering", "pipeline.stages.steer_default_cold.ratio", "Steering: default steer, cold / plain transformers forward over the same batches"),
    ("steering", "pipeline.stages.steer_default_warm.seconds", "Steering: default steer, warm activation cache (s)"),
    ("steering", "pipeline.stages.behavioural_search.seconds", "Steering: behavioural search, first half of the layers (s; target ≤ 120)"),
    ("steering", "pipeline.stages.behavioural_search.ratio", "Steering: behavioural search / plain transformers forward, same batches"),
    ("steering", "pipeline.stages.page_sweep.seconds", "Steering page: α sweep with null band and side effects (s; target ≤ 20)"),
    ("steering", "pipeline.stages.page_sweep.ratio", "Steering page: α sweep / plain transformers forward, same batches"),
    ("steering", "generation.ratio_steered_hf_vs_transformers", "Steered generation tokens/s / transformers generate"),
    ("steering", "generation.tokens_per_second.transformers", "transformers generate, tokens/s (32 new tokens)"),
    ("likelihood", "ches.ratio_vs_transformers", "CHES time / plain transformers forward time, same pairs (lower is better)"),
    ("likelihood", "ches.pairs_per_second", "CHES pairs/s"),
    ("likelihood", "dpo_step_1_pair.seconds_per_step", "DPO step on a copy of the model, 1 pair (s)"),
    ("likelihood", "dpo_step_4_pairs.seconds_per_step", "DPO step, 4 pairs (s)"),
    ("rerender", "worst_s", "Slowest display-only re-render of any page (AppTest script rerun, s; target ≤ 0.2)"),
    ("rerender", "forward_passes", "Forward passes run by display-only re-renders, every page (target 0)"),
]


def _get(report: dict, suite: str, dotted: str):
    node = report.get(suite, {})
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "n/a"
        node = node[part]
    return node


def table(report: dict) -> str:
    machine = report.get("machine", {})
    lines = [
        f"Measured {report.get('started', '?')} on {machine.get('cpus', '?')} CPU cores "
        f"({machine.get('platform', '?')}, torch {machine.get('torch', '?')}, GPU: {machine.get('cuda') or 'none'}).",
        ("Suites re-run since: " + ", ".join(f"{k} {v}" for k, v in sorted(report["updated"].items())) + "."
         if report.get("updated") else "Every suite in that one run."),
        "",
        "| what | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_get(report, suite, key)} |" for suite, key, label in ROWS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads((Path(sys.argv[1]) if len(sys.argv) > 1 else LATEST).read_text())))
