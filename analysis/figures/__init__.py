"""Figure builders, the shared Plotly theme, and export to PNG/SVG/PDF/CSV."""

from analysis.figures.export import ExportError, export_figure, frame_to_csv
from analysis.figures.theme import TEMPLATE_NAME, apply_theme

__all__ = ["TEMPLATE_NAME", "ExportError", "apply_theme", "export_figure", "frame_to_csv"]
