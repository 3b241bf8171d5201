"""Dataset-level analysis of attributions (docs/datasets.md): `summarize` a dataset run's statistics and
`write_report`, one self-contained HTML page of them with the best and worst examples.

Example:
    >>> from seqattr.analysis import summarize
    >>> summarize(out).num_examples               # or summarize("runs/ig"), a dataset run's folder
    1
"""

from seqattr.analysis.report import report_html, write_report
from seqattr.analysis.statistics import DatasetSummary, step_table, summarize

__all__ = ["DatasetSummary", "report_html", "step_table", "summarize", "write_report"]
