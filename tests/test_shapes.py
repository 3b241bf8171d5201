"""The shape annotations are checked while the tests run (tests/shapes.py, pyproject's pytest options)."""

from __future__ import annotations

import jaxtyping
import pytest
import torch
from jaxtyping import Float, jaxtyped
from shapes import check_shapes
from torch import Tensor


@jaxtyped(typechecker=check_shapes)
def _total(
    x: Float[Tensor, "n steps"], weights: Float[Tensor, " steps"], label: int = 0
) -> Float[Tensor, " n"]:
    return x @ weights


def test_dimensions_must_agree_across_arguments():
    assert _total(torch.ones(2, 3), torch.ones(3)).shape == (2,)
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'weights'"):
        _total(torch.ones(2, 3), torch.ones(4))
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'x'"):
        _total(torch.ones(2, 3, dtype=torch.int64), torch.ones(3))


def test_other_hints_are_left_to_the_function():
    assert _total(torch.ones(1, 2), torch.ones(2), label="not an int").shape == (1,)


def test_seqattr_runs_under_the_shape_checks_in_the_test_suite():
    from seqattr.methods.gradient import batched_step_backward

    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'scores'"):
        batched_step_backward(torch.zeros(3), [])  # scores must be [n, steps]
