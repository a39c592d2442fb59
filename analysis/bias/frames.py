"""Tables of a ``BiasResult``: one row per target, one per (target, layer)."""

from __future__ import annotations


def summary_frame(result):
    """One row per target: summary Bias, CI, p (raw and Holm), minimum detectable effect, verdict."""
    import pandas as pd

    return pd.DataFrame([{
        "target": t, "ref1": result.refs[0], "ref2": result.refs[1], "bias": result.summary[i],
        "ci_low": result.ci_low[i], "ci_high": result.ci_high[i], "p_value": result.p_value[i],
        "p_holm": result.p_holm[i], "minimum_detectable": result.minimum_detectable[i],
        "n_permutations": result.n_permutations, "layers": " ".join(map(str, result.chosen_layers(t))),
        "layers_surviving": " ".join(str(l) for l, s in zip(result.layers, result.surviving[i]) if s),
        "n_units": result.n_units.get(t, 0), "verdict": result.verdict(i), "message": result.messages.get(t, ""),
    } for i, t in enumerate(result.targets)])


def layer_frame(result):
    """One row per (target, layer): Bias, its bootstrap CI, p (raw and max-|T|), whether chosen, accuracies."""
    import pandas as pd

    idx = {c: i for i, c in enumerate(result.concepts)}
    rows = []
    for ti, t in enumerate(result.targets):
        for li, layer in enumerate(result.layers):
            rows.append({
                "target": t, "layer": layer, "bias": result.bias[ti, li], "ci_low": result.bias_low[ti, li],
                "ci_high": result.bias_high[ti, li], "p_value": result.layer_p[ti, li],
                "p_adjusted": result.layer_p_adjusted[ti, li], "survives": bool(result.surviving[ti, li]),
                "chosen": bool(result.chosen[ti, li]),
                "acc_target": result.accuracy[idx[t], li], "acc_ref1": result.accuracy[idx[result.refs[0]], li],
                "acc_ref2": result.accuracy[idx[result.refs[1]], li],
            })
    return pd.DataFrame(rows)
