"""The faithfulness metrics of one step, written from their definitions (the independent reference that
tests/test_evaluation.py and tests/test_classifier_evaluation.py hold `model.evaluate` to)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def direct_metrics(
    f: Callable[[list[int]], float],
    n: int,
    scores: Sequence[float],
    fractions: Sequence[float],
    soft_draws,
) -> dict[str, float]:
    """Every metric of one step for one ranking: ``f(removed)`` is the step's probability with the features
    at those indices (of ``n``) removed, ``scores`` one per feature, ``soft_draws`` the two uniform draws of
    the soft metrics."""
    order = sorted(range(n), key=lambda i: -scores[i])  # stable: ties keep token order
    clean = f([])
    counts = [math.ceil(round(k * n, 9)) for k in fractions]
    morf = [f(order[:i]) for i in range(n + 1)]
    kept = [f(order[m:]) for m in range(n + 1)]  # only the m top-ranked kept
    metrics = {
        "comprehensiveness": np.mean([clean - morf[c] for c in counts]),
        "sufficiency": np.mean([clean - kept[c] for c in counts]),
        "deletion_auc": np.trapezoid(np.array(morf) / clean, dx=1 / n),
        "insertion_auc": np.trapezoid(np.array(kept) / clean, dx=1 / n),
    }
    metrics["abpc"] = metrics["insertion_auc"] - metrics["deletion_auc"]
    spread = max(scores) - min(scores)
    p = [(s - min(scores)) / spread if spread > 0 else 1.0 for s in scores]
    metrics["soft_comprehensiveness"] = clean - f([i for i in range(n) if not soft_draws[0][i] < 1 - p[i]])
    metrics["soft_sufficiency"] = clean - f([i for i in range(n) if not soft_draws[1][i] < p[i]])
    return metrics
