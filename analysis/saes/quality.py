"""How well an SAE reconstructs a residual stream: FVU, L0 and spliced-in LM loss.

* FVU (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², over every
  real token except BOS, x̄ the mean over those tokens.
* L0 = mean number of non-zero latents per token.
* LM loss = mean next-token cross-entropy over real tokens, three ways:
  clean; with ``resid_post[layer]`` replaced by the SAE reconstruction; with it
  set to zero. BOS is left untouched in both interventions (the SAE never saw
  BOS, and every SAE benchmark keeps it), so the only change is at the
  positions the SAE is meant for.
* loss recovered = (zero − spliced) / (zero − clean): 1 is perfect.
"""

from __future__ import annotations

from typing import Any

import torch

from analysis.activations import resid_hook
from analysis.logprobs import nll_sum
from analysis.models import LoadedModel


@torch.inference_mode()
def measure_quality(lm: LoadedModel, sae, texts: list[str], layer: int,
                    batch_size: int = 8) -> dict[str, Any]:
    """FVU, L0 and clean / spliced / zero-ablated LM loss of ``sae`` on ``texts``."""
    if not texts:
        raise ValueError("measure_quality needs at least one text")
    hook = resid_hook(layer)
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    err_sq, l0, xs = 0.0, 0.0, []
    for start in range(0, len(texts), batch_size):
        ids, mask = lm.tokenize(texts[start: start + batch_size])
        real = mask.bool().clone()
        real[:, 0] = False  # BOS
        seen: dict[str, torch.Tensor] = {}

        def record(act, hook):
            seen["x"] = act.detach().clone()

        def splice(act, hook):
            x = act[:, 1:]
            act[:, 1:] = sae.decode(sae.encode(x.to(sae.dtype))).to(act.dtype)
            return act

        def zero(act, hook):
            act[:, 1:] = 0.0
            return act

        for name, fn in (("clean", record), ("spliced", splice), ("zero", zero)):
            with lm.hooked([(hook, fn)]) as model:
                logits = model(ids, attention_mask=mask, return_type="logits")
            total, count = nll_sum(logits, ids, mask)
            sums[name] += total
        n_pred += count
        x = seen["x"][real].float()
        z = sae.encode(x.to(sae.dtype)).float()
        x_hat = sae.decode(z.to(sae.dtype)).float()
        err_sq += float(((x - x_hat) ** 2).sum())
        l0 += float((z > 0).sum())
        xs.append(x)
    x_all = torch.cat(xs)
    var = float(((x_all - x_all.mean(0)) ** 2).sum())
    ce = {k: v / n_pred for k, v in sums.items()}
    return {
        "hook_name": hook,
        "n_texts": len(texts),
        "n_tokens": int(x_all.shape[0]),
        "fvu": err_sq / var,
        "mean_l0": l0 / x_all.shape[0],
        "ce_clean": ce["clean"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablated": ce["zero"],
        "loss_recovered": (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]),
    }
