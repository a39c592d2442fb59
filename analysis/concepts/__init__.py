"""Concept sets, concept activation vectors (CAVs) and 2-D projections of concept activations.

Public API of ``analysis.concepts``; figure builders live in ``figures`` and
recipes in ``recipes`` (imported on demand, so importing the package stays light).
"""

from __future__ import annotations

from analysis.concepts.sets import (  # noqa: F401
    SHIPPED_DIR,
    KINDS,
    SOURCES,
    REQUIRED_FIELDS,
    MIN_CHARS,
    MAX_CHARS,
    MIN_TEXTS,
    DEFAULT_BACKGROUND,
    ConceptSet,
    check_name,
    check_texts,
    workspace_dir,
    parse_concept_file,
    load_all_sets,
    load_concepts,
    background_set,
    background_texts,
    save_uploaded_concepts,
    delete_workspace_concept,
    WorkspaceWarning,
    workspace_problems,
)
from analysis.concepts.fitters import (  # noqa: F401
    fit_logistic,
    fit_mean_diff,
    FITTERS,
    unit,
    cv_accuracy,
)
from analysis.concepts.cavs import (  # noqa: F401
    POOLINGS,
    CavConfig,
    CavResult,
    null_accuracies,
    fit_cavs_arrays,
    stacked_activations,
    resolve_layers,
    fit_cavs,
    cosine_matrix,
    accuracy_frame,
    similarity_frame,
    fit_from_config,
)
from analysis.concepts.logistic import (  # noqa: F401
    fit_logistic_batched,
    fit_logistic_gram,
)
from analysis.concepts.pooled import (  # noqa: F401
    fit_logistic_rows,
)
from analysis.concepts.projection import (  # noqa: F401
    METHODS,
    project,
    ProjectionConfig,
    ProjectionData,
    compute_projection,
    projection_frame,
)

__all__ = [
    "CavConfig",
    "CavResult",
    "ConceptSet",
    "DEFAULT_BACKGROUND",
    "FITTERS",
    "KINDS",
    "MAX_CHARS",
    "METHODS",
    "MIN_CHARS",
    "MIN_TEXTS",
    "POOLINGS",
    "ProjectionConfig",
    "ProjectionData",
    "REQUIRED_FIELDS",
    "SHIPPED_DIR",
    "SOURCES",
    "WorkspaceWarning",
    "accuracy_frame",
    "background_set",
    "background_texts",
    "check_name",
    "check_texts",
    "compute_projection",
    "cosine_matrix",
    "cv_accuracy",
    "delete_workspace_concept",
    "fit_cavs",
    "fit_cavs_arrays",
    "fit_from_config",
    "fit_logistic",
    "fit_logistic_batched",
    "fit_logistic_gram",
    "fit_logistic_rows",
    "fit_mean_diff",
    "load_all_sets",
    "load_concepts",
    "null_accuracies",
    "parse_concept_file",
    "project",
    "projection_frame",
    "resolve_layers",
    "save_uploaded_concepts",
    "similarity_frame",
    "stacked_activations",
    "workspace_problems",
    "unit",
    "workspace_dir",
]
