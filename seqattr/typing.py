"""Shape aliases for the tensors that cross module boundaries.

Dimension names used throughout seqattr:

- ``batch``: examples in one model call (``n`` when copies of a batch are stacked, e.g. IG's interpolations);
- ``source_len``: encoder tokens (encoder-decoder models only);
- ``target_len``: decoder tokens (for decoder-only models: prompt + generation);
- ``steps``: generated tokens being explained; step ``t`` predicts one target token;
- ``hidden``: embedding size; ``vocab``: vocabulary size.
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int, Real
from torch import Tensor

TokenIds = Int[Tensor, "batch seq"]
AttentionMask = Int[Tensor, "batch seq"]
Embeddings = Float[Tensor, "n seq hidden"]
StepLogits = Float[Tensor, "n steps vocab"]
StepScores = Float[Tensor, "n steps"]
StepMask = Bool[Tensor, "batch steps"]

__all__ = [
    "AttentionMask",
    "Bool",
    "Embeddings",
    "Float",
    "Int",
    "Real",
    "StepLogits",
    "StepMask",
    "StepScores",
    "Tensor",
    "TokenIds",
]
