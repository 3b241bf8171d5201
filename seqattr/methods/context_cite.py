"""Context citations (ContextCite, Cohen-Wang et al. 2024): a sparse linear surrogate of random ablations.

Each example draws ``n_ablations`` random masks over its *context features* (the features its first step
sees: the prompt's sentences, segments or messages; each kept with probability ``keep_probability``, from
``seed``). Every ablated sequence is run once, for all generated steps together (the perturbation engine,
`seqattr.methods.perturbation.run_rows`), and gives each step's *log-odds* ``log(p / (1 - p))`` of its token,
as ContextCite measures it (the token's logit minus the log-sum-exp of the other logits; for a multi-label
classifier the label's own logit). A LASSO surrogate is fitted on the masks for each step, and once for the
whole answer, whose target is the log-odds of the answer's probability (``log P - log(1 - P)`` with
``log P`` the sum of the steps' log-probabilities; close to ``log P`` itself when the answer is unlikely).

The fit follows ContextCite's reference implementation (``context_cite/solver.py``, ``LassoRegression``):
scikit-learn's ``Lasso(alpha=0.01, fit_intercept=True)`` on the masks standardised by ``StandardScaler``,
float32 masks and targets, the coefficients mapped back to the unstandardised masks
(``coef / scale``); the whole answer's target is divided by its number of steps before the fit and the
coefficients multiplied back (so ``alpha`` acts per token). The coefficients are the scores: the change of
the log-odds when the feature is present rather than ablated.

The surrogate's fit (is it worth trusting?): ``held_out`` of the ablations (the last 20%) are predicted by a
surrogate fitted on the others, and the Spearman correlation of predictions and actual log-odds on them (the
paper's linear datamodeling score, LDS) is recorded per step in ``step_scores["lds"]`` and for the answer in
the example's ``info["method_info"]["examples"][i]["answer"]["lds"]``. The reported scores use every
ablation. A correlation is 0 where the predictions or the actual values are constant (no ranking to agree
with).

Features the first step does not see (the reply's own tokens) are never ablated and score 0. Granularities
of whole units only (``word``, ``sentence``, ``message``, ``segment``): ContextCite attributes to sources, and
a few dozen ablations cannot fit one coefficient per token (use ``lime`` or ``kernel_shap`` for tokens).

The stepwise reference runs each step on its own prefix (`StepPrefix`) with the same masks and the same fit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, refuse_contrast
from seqattr.methods.options import Seed, int_option
from seqattr.methods.perturbation import (
    PerturbationOptions,
    PerturbationSetup,
    StepPrefix,
    feature_output,
    run_rows,
    setup_perturbation,
)
from seqattr.step_functions import StepFunctionArgs, list_step_functions, promote, register_step_function
from seqattr.typing import Float, Tensor

SOURCE_GRANULARITIES = ("word", "sentence", "message", "segment")
"""Granularities whose features are whole units of text, the sources ContextCite attributes to."""


def log_odds(args: StepFunctionArgs) -> Tensor:
    """Log-odds of the target token, log(p / (1 - p)), from the logits (exact near p = 1; ContextCite).

    The token's logit minus the log-sum-exp of the other logits: ``p`` is never formed.

    Example:
        >>> args = StepFunctionArgs(torch.tensor([[[0.0, math.log(3.0)]]]), torch.tensor([[1]]))
        >>> log_odds(args)      # p = 3/4: log 3
        tensor([[1.0986]])
    """
    logits = promote(args.logits)
    ids = args.target_ids[..., None]
    own = logits.gather(-1, ids)[..., 0]
    if args.multi_label:  # an independent yes/no of probability sigmoid(logit): its log-odds is the logit
        return own
    others = logits.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return own - others


if "log_odds" not in list_step_functions():
    # By name too: the output records what it measured (``measured_step_function``), and evaluate() runs it.
    register_step_function(log_odds, "log_odds")


def answer_log_odds(step_log_odds: Float[Tensor, "n steps"]) -> Float[Tensor, " n"]:
    """Log-odds of a whole answer from its steps' log-odds: ``log P - log(1 - P)``, ``log P`` the sum of the
    steps' log-probabilities (``logsigmoid`` of their log-odds), computed in float64.

    Example:
        >>> answer_log_odds(torch.tensor([[0.0, 0.0]]))    # P = 1/4: log(1/3)
        tensor([-1.0986], dtype=torch.float64)
    """
    log_p = torch.nn.functional.logsigmoid(step_log_odds.double()).sum(-1)
    return log_p - torch.log(-torch.expm1(log_p))


def fit_lasso(
    masks: np.ndarray, targets: np.ndarray, alpha: float, num_tokens: int = 1
) -> tuple[np.ndarray, float]:
    """ContextCite's surrogate: weights and bias of a LASSO fit of ``targets`` on standardised ``masks``.

    ``Lasso(alpha, fit_intercept=True)`` after ``StandardScaler``, on ``targets / num_tokens``, mapped back
    to the raw masks and multiplied by ``num_tokens`` (ContextCite's ``LassoRegression.fit``).

    Example:
        >>> m = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 4, dtype=np.float32)
        >>> w, b = fit_lasso(m, m @ np.array([2.0, 0.0]) + 1, alpha=1e-6)
        >>> np.round(w, 3).tolist(), round(b, 3)
        ([2.0, 0.0], 1.0)
    """
    from sklearn.linear_model import Lasso
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(masks, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32) / num_tokens
    scaler = StandardScaler()
    lasso = Lasso(alpha=alpha, random_state=0, fit_intercept=True)
    make_pipeline(scaler, lasso).fit(x, y)
    weight = lasso.coef_ / scaler.scale_
    bias = lasso.intercept_ - (scaler.mean_ / scaler.scale_) @ lasso.coef_
    return weight * num_tokens, float(bias * num_tokens)


def rank_correlation(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Spearman correlation of two vectors; 0 where either is constant (no ranking to agree with).

    Example:
        >>> rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 9.0])), rank_correlation(
        ...     np.zeros(3), np.array([1.0, 2.0, 3.0]))
        (1.0, 0.0)
    """
    from scipy.stats import spearmanr

    if np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return 0.0
    return float(spearmanr(predicted, actual).statistic)


def held_out_count(n_ablations: int, held_out: float) -> int:
    """How many of the ablations the fit statistic holds out (the last ones drawn).

    Example:
        >>> held_out_count(32, 0.2)
        6
    """
    return int(round(n_ablations * held_out))


MIN_HELD_OUT = 3
"""Held-out ablations a rank correlation needs to mean anything (with 2 it is always +-1)."""
MIN_TRAIN = 2
"""Ablations a surrogate is fitted on, at least."""


@dataclass
class ContextCiteOptions(Seed, PerturbationOptions):
    granularity: str = "sentence"
    """Sources: ``sentence`` (ContextCite's default), ``word``, ``message``, or ``segment`` (with
    ``segments=``); ``token``/``all_tokens`` are refused (one coefficient per token: use lime)."""
    n_ablations: int = int_option(32, low=2)
    """Random ablations per example; each is one sequence run through the model, for all steps together."""
    keep_probability: float = 0.5
    """Probability that an ablation keeps a feature (ContextCite's ``ablation_keep_prob``)."""
    alpha: float = 0.01
    """LASSO penalty on the standardised masks (ContextCite's ``lasso_alpha``)."""
    held_out: float = 0.2
    """Fraction of the ablations held out to measure the surrogate's fit (0: no fit statistic)."""
    seed: int | None = 0  # the ablations are drawn afresh at each call when None (see Seed)

    def validate(self) -> None:
        super().validate()
        if self.granularity not in SOURCE_GRANULARITIES:
            raise ValueError(
                f"context_cite attributes to sources (whole units of text), not granularity="
                f"{self.granularity!r}: use granularity='sentence' (default), 'word', 'message', or "
                "'segment' with segments=[(name, text), ...]; for one score per token use method='lime'"
            )
        if self.inference_mode is not None:
            raise ValueError(
                "context_cite measures each token's log-odds, as ContextCite does; inference_mode does not "
                f"apply (got {self.inference_mode!r}): leave it None"
            )
        if not 0 < self.keep_probability < 1:
            raise ValueError(f"keep_probability must be in (0, 1), got {self.keep_probability!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive (ContextCite's LASSO uses 0.01), got {self.alpha!r}")
        if not 0 <= self.held_out < 1:
            raise ValueError(f"held_out must be in [0, 1) (e.g. 0.2), got {self.held_out!r}")
        if self.held_out > 0:
            test = held_out_count(self.n_ablations, self.held_out)
            if test < MIN_HELD_OUT or self.n_ablations - test < MIN_TRAIN:
                least = next(
                    n
                    for n in range(MIN_HELD_OUT, 10_000)
                    if held_out_count(n, self.held_out) >= MIN_HELD_OUT
                    and n - held_out_count(n, self.held_out) >= MIN_TRAIN
                )
                raise ValueError(
                    f"n_ablations={self.n_ablations} with held_out={self.held_out} holds out {test} "
                    f"ablation(s) and fits on {self.n_ablations - test}; the fit statistic needs at least "
                    f"{MIN_HELD_OUT} held out and {MIN_TRAIN} to fit: use n_ablations >= {least}, "
                    "or held_out=0 to skip the fit statistic"
                )


@dataclass
class ExampleFit:
    """One example's surrogates: per step and for the whole answer."""

    step_scores: Float[Tensor, "context steps"]
    step_lds: Float[Tensor, " steps"]
    info: dict[str, Any]


class ContextCite(AttributionMethod):
    """Sparse linear surrogate (LASSO) of random context ablations, per step and per answer (ContextCite)."""

    name = "context_cite"
    Options = ContextCiteOptions

    def _setup(self, inputs: MethodInputs, options) -> PerturbationSetup:
        inputs = refuse_contrast(
            inputs,
            "context_cite measures each token's log-odds, not a contrast",
            "use occlusion or feature_ablation for a contrastive function",
        )
        setup = setup_perturbation(self, inputs, options)
        # Every ablated row measures the log-odds of each step's token (ContextCite's target).
        setup.objective = copy.copy(setup.objective)
        setup.objective.step_function = log_odds
        setup.info["measured_step_function"] = "log_odds"
        return setup

    def _masks(self, setup: PerturbationSetup, options) -> tuple[list[Tensor], int]:
        """Each example's ablations over its context features (1 = kept), one generator per example."""
        seed = options.resolved_seed()
        masks = []
        for b in range(setup.batch.size):
            generator = torch.Generator().manual_seed(seed)
            # The features the first real step sees: the context (later features are the reply's own).
            first = int(setup.batch.step_mask[b].long().argmax())
            context = int(setup.features.visible[b, first])
            probability = torch.full((options.n_ablations, context), float(options.keep_probability))
            masks.append(torch.bernoulli(probability, generator=generator))
        return masks, seed

    def _fit(self, mask: Tensor, targets: Tensor, real: Tensor, options) -> ExampleFit:
        """Surrogates of one example from its masks ``[n, context]`` and log-odds ``[n, steps]``."""
        n, context = mask.shape
        steps = targets.shape[1]
        x = mask.numpy().astype(np.float32)
        # float32 targets, as ContextCite's (its logit-probabilities are cast before the fit).
        y = targets.float().numpy()
        test = held_out_count(n, options.held_out)
        scores = torch.zeros(context, steps, dtype=torch.float64)
        lds = torch.zeros(steps, dtype=torch.float64)

        def surrogate(values: np.ndarray, num_tokens: int = 1) -> tuple[np.ndarray, float]:
            if context == 0:
                return np.zeros(0), 0.0
            weight, _ = fit_lasso(x, values, options.alpha, num_tokens)
            if test == 0:
                return weight, math.nan
            train_w, train_b = fit_lasso(x[:-test], values[:-test], options.alpha, num_tokens)
            return weight, rank_correlation(x[-test:] @ train_w + train_b, values[-test:])

        columns = [c for c in range(steps) if bool(real[c])]
        for column in columns:
            weight, fit = surrogate(y[:, column])
            scores[:, column] = torch.from_numpy(weight.astype(np.float64))
            lds[column] = 0.0 if math.isnan(fit) else fit
        answer_targets = answer_log_odds(torch.from_numpy(y[:, columns])).float().numpy()
        answer_weight, answer_fit = surrogate(answer_targets, num_tokens=max(len(columns), 1))
        info = {
            "context_features": context,
            "ablations": mask.long().tolist(),
            "answer": {
                "scores": [float(w) for w in answer_weight],
                "lds": None if math.isnan(answer_fit) else answer_fit,
            },
        }
        return ExampleFit(scores, lds, info)

    def _output(
        self, setup: PerturbationSetup, masks: list[Tensor], targets: list[Tensor], seed: int, options
    ) -> MethodOutput:
        batch = setup.batch
        width = max(setup.features.max_features, 1)
        scores = torch.zeros(batch.size, width, batch.num_steps, dtype=torch.float64)
        lds = torch.zeros(batch.size, batch.num_steps, dtype=torch.float64)
        fits = []
        for b in range(batch.size):
            fit = self._fit(masks[b], targets[b], batch.step_mask[b].cpu(), options)
            scores[b, : masks[b].shape[1]] = fit.step_scores
            lds[b] = fit.step_lds
            fits.append(fit.info)
        # The scores' precision is the float32 fit's, whatever the model (as ContextCite's).
        output = feature_output(setup, scores.float())
        output.info["seed"] = seed
        if options.held_out > 0:
            output.step_scores["lds"] = lds.float()
        for example, fit in zip(output.example_info, fits, strict=True):
            example.update(fit)
        return output

    def _gates(self, setup: PerturbationSetup, mask: Tensor, visible: int) -> Tensor:
        """Gates over the first ``visible`` features: the ablation on the context, the rest kept."""
        kept = torch.ones(mask.shape[0], visible - mask.shape[1])
        return torch.cat([mask, kept], dim=1)

    def attribute_fused(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = self._setup(inputs, options)
        masks, seed = self._masks(setup, options)
        device = setup.batch.target_ids.device
        width = max(setup.features.max_features, 1)
        rows = torch.cat([torch.full((m.shape[0],), b, dtype=torch.long) for b, m in enumerate(masks)])
        gates = torch.cat([self._gates(setup, m, width) for m in masks])
        outputs = run_rows(setup, rows.to(device), gates.to(device)).cpu()
        targets = list(outputs.split([m.shape[0] for m in masks]))
        return self._output(setup, masks, targets, seed, options)

    def attribute_stepwise(self, inputs: MethodInputs, options) -> MethodOutput:
        setup = self._setup(inputs, options)
        masks, seed = self._masks(setup, options)
        batch = setup.batch
        targets = []
        with torch.no_grad():
            for b, mask in enumerate(masks):
                values = torch.zeros(mask.shape[0], batch.num_steps, dtype=torch.float64)
                for column in range(batch.num_steps):
                    if bool(batch.step_mask[b, column]):
                        step = StepPrefix(setup, b, column)
                        gates = self._gates(setup, mask, step.num_visible).to(batch.target_ids.device)
                        values[:, column] = step(gates).double().cpu()
                targets.append(values)
        return self._output(setup, masks, targets, seed, options)
