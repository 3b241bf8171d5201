"""Evaluating attributions: faithfulness metrics computed by running perturbed inputs through the model.

`evaluate` (usually called as `AttributionModel.evaluate`) returns an `EvaluationResult`; the metrics are
defined in `seqattr.evaluation.faithfulness`.
"""

from seqattr.evaluation.faithfulness import DEFAULT_FRACTIONS, METRICS, evaluate
from seqattr.evaluation.result import EvaluationResult

__all__ = ["DEFAULT_FRACTIONS", "METRICS", "EvaluationResult", "evaluate"]
