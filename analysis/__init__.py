"""RepScope analysis library: models, activations, concepts and figures (never imports streamlit)."""
