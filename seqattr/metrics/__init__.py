"""Scores of attributions against references: plausibility as word alignment (AER, alignment accuracy).

Example:
    >>> from seqattr.metrics import alignment_error_rate, read_gold
    >>> gold = read_gold(["1-1 2-2"])          # a gold file's lines, 1-based "source-target" links
    >>> gold[0].to_text()
    '1-1 2-2'
"""

from seqattr.metrics.alignment import alignment_accuracy, alignment_error_rate
from seqattr.metrics.gold import GoldAlignment, parse_gold_line, read_gold

__all__ = ["GoldAlignment", "alignment_accuracy", "alignment_error_rate", "parse_gold_line", "read_gold"]
