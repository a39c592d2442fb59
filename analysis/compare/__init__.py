"""Before and after: two model states compared in every view, concept drift during DPO, steering audit.

Public API of ``analysis.compare``; figure builders live in ``figures`` and
recipes in ``recipes`` (imported on demand, so importing the package stays light).
"""

from __future__ import annotations

from analysis.compare.states import (  # noqa: F401
    KINDS,
    StateSpec,
    parse_state,
    short_spec,
    check_state,
    activate,
    check_same_tokenizer,
)
from analysis.compare.shifts import (  # noqa: F401
    Shift,
    project,
    boot_weights,
    shift,
    summary,
    relative,
    interval,
    excludes_zero,
)
from analysis.compare.delta_bias import (  # noqa: F401
    DeltaBias,
    delta_bias_from_arrays,
)
from analysis.compare.views import (  # noqa: F401
    VIEWS,
    CompareConfig,
    ConceptDelta,
    LensDelta,
    pick_texts,
    activations,
    fit_state_cavs,
    concept_delta_from_arrays,
    compare_bias,
    compare_concepts,
    compare_lens,
    compare_likelihood,
    compare,
)
from analysis.compare.drift import (  # noqa: F401
    DriftConfig,
    DriftResult,
    AuditResult,
    axes,
    module_activations,
    compute_drift,
    random_like,
    compute_audit,
)

__all__ = [
    "AuditResult",
    "CompareConfig",
    "ConceptDelta",
    "DeltaBias",
    "DriftConfig",
    "DriftResult",
    "KINDS",
    "LensDelta",
    "Shift",
    "StateSpec",
    "VIEWS",
    "activate",
    "activations",
    "axes",
    "boot_weights",
    "check_same_tokenizer",
    "check_state",
    "compare",
    "compare_bias",
    "compare_concepts",
    "compare_lens",
    "compare_likelihood",
    "compute_audit",
    "compute_drift",
    "concept_delta_from_arrays",
    "delta_bias_from_arrays",
    "excludes_zero",
    "fit_state_cavs",
    "interval",
    "module_activations",
    "parse_state",
    "short_spec",
    "pick_texts",
    "project",
    "random_like",
    "relative",
    "shift",
    "summary",
]
