"""The evaluation report: PNG plots, an HTML page and its Markdown twin, and metrics.json."""

from vigil.training.report.write import PLOTS, write_bundle_report, write_report

__all__ = ["PLOTS", "write_bundle_report", "write_report"]
