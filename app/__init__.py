"""RepScope Streamlit app: the entry, cached resources and shared UI pieces."""
