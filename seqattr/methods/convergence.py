"""Completeness checks: a warning when a path method's attributions do not add up to what they explain.

Integrated gradients and its relatives satisfy completeness: a step's attributions sum to
``f(input) - f(baseline)``. The quadrature misses it by the convergence delta ``sum - (f(x) - f(b))``; a
large one means the attributions are not the integral they claim to be (too few ``n_steps`` for a path on
which the score varies steeply). Sundararajan et al. (2017, section 3) advise checking that the attributions
add up to within 5% of the score difference: `warn_if_not_converged` does that for every step and emits one
`ConvergenceWarning` per ``attribute`` call naming the steps that miss it, with the fix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from seqattr.caller import user_stacklevel
from seqattr.typing import Float, Tensor

CONVERGENCE_DELTA = "convergence_delta"
"""Step score holding ``sum of a step's attributions - (f(input) - f(baseline))`` (Captum's sign)."""

RELATIVE_TOLERANCE = 0.05
"""A step is converged when ``|delta| <= RELATIVE_TOLERANCE * max(|f(x) - f(b)|, ABSOLUTE_FLOOR)``: the 5%
of Sundararajan et al."""
ABSOLUTE_FLOOR = 1e-3
"""Where input and baseline score alike (``|f(x) - f(b)|`` below this, in the score's units: 0.1 percentage
point of probability), there is almost nothing to distribute; a delta under 5e-5 of it is not worth a
warning."""


class ConvergenceWarning(UserWarning):
    """The attributions of some steps do not add up to ``f(input) - f(baseline)`` within tolerance.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", seqattr.ConvergenceWarning)   # silence it on purpose
    """


def default_tolerance(gap: Float[Tensor, "batch steps"]) -> Float[Tensor, "batch steps"]:
    """The largest ``|delta|`` the warning accepts for each step: ``RELATIVE_TOLERANCE * max(|gap|, floor)``.

    Example:
        >>> default_tolerance(torch.tensor([[2.0, 0.0]]))
        tensor([[1.0000e-01, 5.0000e-05]])
    """
    return RELATIVE_TOLERANCE * gap.abs().clamp(min=ABSOLUTE_FLOOR)


@dataclass
class Completeness:
    """Per step of a batch: the convergence delta (``sum of attributions - gap``) and the gap
    ``f(input) - f(baseline)`` it is measured against, both ``[batch, steps]``; ``tolerance``, the largest
    ``|delta|`` accepted per step when the method was given one (adaptive integration, ``n_steps="auto"``),
    else None: the 5% rule of `default_tolerance`."""

    delta: Float[Tensor, "batch steps"]
    gap: Float[Tensor, "batch steps"]
    tolerance: Float[Tensor, "batch steps"] | None = None

    def unconverged(self) -> torch.Tensor:
        """``[batch, steps]`` True where ``|delta|`` exceeds the tolerance or is NaN (attributions that
        overflowed: a NaN compared with ``>`` would pass as converged)."""
        tolerance = default_tolerance(self.gap) if self.tolerance is None else self.tolerance
        return ~(self.delta.abs() <= tolerance)


def warn_if_not_converged(method: str, failures: list[str], n_steps: int | str | None) -> None:
    """One `ConvergenceWarning` listing ``failures`` (descriptions of the steps that miss the tolerance);
    with ``n_steps="auto"`` they are the steps that reached adaptive integration's largest grid.

    Example:
        >>> warn_if_not_converged("integrated_gradients", [], 50)      # nothing to say: no warning
    """
    if not failures:
        return
    shown = "; ".join(failures[:10]) + (f"; and {len(failures) - 10} more" if len(failures) > 10 else "")
    if n_steps == "auto":
        warnings.warn(
            f"{method}: n_steps='auto' reached max_n_steps, or a delta of nan or inf, for {len(failures)} "
            "step(s) whose attributions still miss f(input) - f(baseline) by more than the tolerance "
            f"(tolerance=, or 5% of max(|f(input) - f(baseline)|, {ABSOLUTE_FLOOR}) when None): {shown}. "
            "Use a larger max_n_steps, a larger tolerance, another baseline, or another method; the step "
            "score integration_points holds the points each step used. A delta of nan or inf is not "
            "refined: the model's gradient overflows somewhere on the path.",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
        return
    more = f"a larger n_steps (now {n_steps})" if n_steps is not None else "a larger n_steps"
    warnings.warn(
        f"{method}: the attributions of {len(failures)} step(s) do not add up to f(input) - f(baseline) "
        f"within {RELATIVE_TOLERANCE:.0%} (|convergence delta| > {RELATIVE_TOLERANCE} * "
        f"max(|f(input) - f(baseline)|, {ABSOLUTE_FLOOR})): {shown}. Use {more}, another baseline, or "
        "another method; return_convergence_delta=True stores every step's delta as a step score.",
        ConvergenceWarning,
        stacklevel=user_stacklevel(),
    )


def describe_failures(
    completeness: Completeness, step_mask: torch.Tensor, tokens: list[list[str]], first_example: int
) -> list[str]:
    """``"example i step t ('token'): delta d of gap g"`` for each real step that misses the tolerance;
    ``tokens[b][t]`` is the token step ``t`` of batch example ``b`` predicts."""
    bad = completeness.unconverged().cpu() & step_mask.cpu()
    delta, gap = completeness.delta.cpu(), completeness.gap.cpu()
    return [
        f"example {first_example + b} step {t} ({tokens[b][t]!r}): delta {float(delta[b, t]):.3g} of gap "
        f"{float(gap[b, t]):.3g}"
        for b, t in bad.nonzero().tolist()
    ]
