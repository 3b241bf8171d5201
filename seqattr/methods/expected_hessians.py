"""Expected Hessians (Janizek, Sturmfels & Lee 2021): integrated Hessians averaged over random baselines.

The baselines are drawn as ``expected_gradients`` draws them (``n_baselines`` sequences, each position drawn
uniformly from the ``references`` pool: the input vocabulary's embeddings by default), and each baseline's
double integral uses the same rule as ``integrated_hessians`` (`product_rule`), so the rows of the averaged
interactions add up to ``expected_gradients`` with the same rule and draws.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqattr.methods.base import MethodInputs
from seqattr.methods.expected_gradients import References, draw_baselines
from seqattr.methods.integrated_hessians import HessianOptions, IntegratedHessians
from seqattr.methods.options import ConvergenceDelta, Seed
from seqattr.methods.path_base import Baselines


@dataclass
class ExpectedHessiansOptions(Seed, ConvergenceDelta, References, HessianOptions):
    n_steps: int = 4
    """Points per axis of each baseline's double integral (fewer than integrated Hessians' 8: the average
    over baselines smooths the rest)."""


class ExpectedHessians(IntegratedHessians):
    """Integrated Hessians averaged over baselines drawn from a reference distribution."""

    name = "expected_hessians"
    Options = ExpectedHessiansOptions

    def draw_baselines(self, inputs: MethodInputs, options: ExpectedHessiansOptions) -> list[Baselines]:
        return draw_baselines(self.model, inputs, options)
