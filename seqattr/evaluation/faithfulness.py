"""Faithfulness of a saved attribution: how much each step's score moves when its top-ranked tokens go.

For step ``t`` of an example, the *features* are the tokens the step can see that an attribution scores:
source tokens (encoder-decoder), and target-prefix tokens where the output attributes the target (always for
decoder-only models). Special tokens (BOS, EOS, the decoder start, chat scaffolding) are never features and
are never removed, as with the perturbation methods' default ``granularity="token"``. The ``n_t`` features
are ranked by step ``t``'s scores, largest first (``by="signed"``) or by magnitude (``by="abs"``); ties keep
token order. ``f_t`` is the output's own attributed step function (``info["attributed_fn"]`` with its
arguments, or the quantity a perturbation method's ``inference_mode`` measured), or the registered step
function named by ``step_function=`` (e.g. ``"probability"`` for an output whose own quantity is ContextCite's
log-odds or a contrast, which curves cannot use); ``f_t(x)`` is its value on the unperturbed input. With
``m_k = ceil(k * n_t)`` for each fraction ``k``:

- ``comprehensiveness`` (AOPC): ``mean_k f_t(x) - f_t(x without the m_k top-ranked features)``; higher is
  better;
- ``sufficiency``: ``mean_k f_t(x) - f_t(x with only the m_k top-ranked features)``; lower is better;
- ``deletion_auc``: area under the MoRF curve ``f_t(x without the i top-ranked) / f_t(x)``, ``i = 0..n_t``
  on ``[0, 1]`` (trapezoids of width ``1 / n_t``); lower is better;
- ``insertion_auc``: area under ``f_t(x with only the i top-ranked) / f_t(x)``, ``i = 0..n_t``, which equals
  the area under the LeRF curve (removing the least relevant first); higher is better;
- ``abpc``: ``insertion_auc - deletion_auc``, the area between the LeRF and MoRF curves (AttnLRP); higher is
  better. The three curves are shares of ``f_t(x)``, defined for a positive step function (a probability):
  NaN, with a warning, at steps where ``f_t(x) <= 0`` (a log-probability, ContextCite's log-odds), whose
  division would flip or blow up the curve;
- ``soft_comprehensiveness`` / ``soft_sufficiency`` (Zhao & Aletras 2023): the scores min-max normalised over
  the step's features give ``p_i``; one seeded draw keeps feature ``i`` with probability ``1 - p_i`` /
  ``p_i``; the value is ``f_t(x) - f_t(x with the kept features)`` (a step whose scores are all equal has
  ``p_i = 1``).

Classifiers are evaluated the same way (`seqattr.models.family`): the step's "token" is the explained
label (a sequence classifier: one step per explained label; a token classifier: one step per token, its tag;
extractive QA: the answer's start and end positions), ``f_t`` reads that label's probability from the
classifier's head, and the features are the input text's tokens (a pair's two texts; special tokens such as
``[CLS]`` and ``[SEP]`` stay, so a pair keeps both segments). A causal decoder's tagger sees the tokens up to
the one it tags: those are its step's features. Deleting tokens would remove or move what a token
classifier's or a QA model's step explains, so ``removal="delete"`` is refused for them (`check_removal`).

Every metric is also computed for a *random ranking* of the same features (uniform random scores, seeded per
example and step): the chance level the attribution must beat.

A removed feature is replaced by the ``baseline`` embedding (``removal="replace"``, as the perturbation
methods do: ``"zeros"``, ``"unk"``, ``"pad"``, a token id or a tensor), or deleted from the sequence
(``removal="delete"``): the remaining tokens close up and take consecutive positions. A decoder-only step
left with no token before its prediction (a model without BOS, every prefix token deleted) cannot be run;
its perturbed value is NaN. Per-step values are NaN where a step has no features; means skip NaN.

Cost: every perturbed sequence is one row of the engine's forward calls (`run_rows`, chunked within the
engine's memory budget), and one row gives every step's score, so identical rows (those of several steps
or fractions that remove the same tokens, the unperturbed one) are run once. The curves need ``2 n_t`` rows
per step and ranking; ``metrics=["comprehensiveness", "sufficiency"]`` needs at most ``2 * len(fractions)``.

Example:
    >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 3})
    >>> result = evaluate(model, out, metrics=["comprehensiveness"])
    >>> result.per_step[0]["comprehensiveness"].shape            # one value per step
    torch.Size([3])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqattr.caller import user_stacklevel
from seqattr.engine import StepObjective
from seqattr.evaluation.result import EvaluationResult
from seqattr.features import FeatureMap, build_feature_map
from seqattr.methods.base import MethodInputs
from seqattr.methods.gradient import CHUNK_BYTES
from seqattr.methods.options import check_baseline
from seqattr.methods.path_base import Baselines, resolve_baselines
from seqattr.methods.perturbation import PerturbationSetup, clean_scores, run_rows
from seqattr.models.batch import AttributionBatch, EncodedExample
from seqattr.models.family import DECODER_ONLY, ENCODER_DECODER, ModelFamily
from seqattr.step_functions import NO_CONTRAST, StepFunction, bind_step_functions
from seqattr.typing import Float, Tensor

if TYPE_CHECKING:
    from seqattr.data.attribution import AttributionOutput, SequenceAttribution
    from seqattr.models.attribution_model import AttributionModel

METRICS = {
    "comprehensiveness": "mean drop of f_t when the top-ranked fractions are removed (AOPC)",
    "sufficiency": "mean drop of f_t when only the top-ranked fractions are kept",
    "deletion_auc": "area under f_t / f_t(x) as the top-ranked features are removed (MoRF)",
    "insertion_auc": "area under f_t / f_t(x) as the top-ranked features are inserted (LeRF)",
    "abpc": "area between the LeRF and MoRF curves: insertion_auc - deletion_auc",
    "soft_comprehensiveness": "drop of f_t when features are kept with probability 1 - normalised score",
    "soft_sufficiency": "drop of f_t when features are kept with probability normalised score",
}
"""The metrics ``evaluate`` computes, with what each measures (`HIGHER_IS_BETTER`: which way is better)."""
HIGHER_IS_BETTER = {
    "comprehensiveness": True,
    "sufficiency": False,
    "deletion_auc": False,
    "insertion_auc": True,
    "abpc": True,
    "soft_comprehensiveness": True,
    "soft_sufficiency": False,
}
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
REMOVALS = ("replace", "delete")
RANKINGS = ("signed", "abs")
_CURVES = {"deletion_auc", "insertion_auc", "abpc"}


def check_settings(
    metrics: str | Sequence[str] | None,
    fractions: Sequence[float],
    baseline: Any,
    removal: str,
    by: str,
    seed: int,
) -> tuple[list[str], list[float]]:
    """The metrics and fractions asked for, every setting checked (what is wrong and what is valid).

    Example:
        >>> check_settings(None, (0.1, 0.5), "zeros", "replace", "signed", 0)[1]
        [0.1, 0.5]
        >>> check_settings(["aopc"], (0.1,), "zeros", "replace", "signed", 0)   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unknown metric 'aopc'; valid: 'comprehensiveness', ...
    """
    if metrics is None:
        metrics = list(METRICS)
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(map(repr, METRICS))}")
    if not metrics:
        raise ValueError(f"no metric to compute; pick from {', '.join(map(repr, METRICS))} (None: all)")
    if isinstance(fractions, (int, float)):
        fractions = [fractions]
    fractions = list(fractions)
    if not fractions:
        raise ValueError("fractions is empty; give fractions of the features in (0, 1], e.g. (0.1, 0.2)")
    for k in fractions:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
            raise ValueError(
                f"fractions must lie in (0, 1] (the share of each step's features removed or kept), got {k!r}"
            )
    check_baseline(baseline)
    if removal not in REMOVALS:
        raise ValueError(f"unknown removal {removal!r}; valid: {', '.join(map(repr, REMOVALS))}")
    if by not in RANKINGS:
        raise ValueError(f"unknown ranking {by!r}; valid: {', '.join(map(repr, RANKINGS))}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return metrics, [float(k) for k in fractions]


def evaluated_step_function(info: dict, step_function: str | None = None) -> tuple[str, dict, StepFunction]:
    """The step function an output's attributions explain, bound to its arguments; refuses what cannot be
    run again (a contrast, a step function that is not registered, an output without that record).

    ``step_function`` names another registered step function to measure the same rankings with (without
    arguments), e.g. ``"probability"`` for an output whose own quantity is a log-odds or a contrast."""
    if step_function is not None:
        try:
            (function,) = bind_step_functions([step_function], {}, "step_function")
        except ValueError as err:
            raise ValueError(f"evaluate(step_function={step_function!r}): {err}") from err
        return step_function, {}, function
    if "contrast" in info:
        raise ValueError(
            "this output attributes a contrastive step function; evaluating it would need its contrast "
            "sequences run again, which evaluate() does not do: evaluate an output made without contrast, or "
            "measure this output's rankings on the target's own probability (step_function='probability')"
        )
    method_info = info.get("method_info") or {}
    name = method_info.get("measured_step_function") or info.get("attributed_fn")
    if not isinstance(name, str):
        raise ValueError(
            "the output's info does not record its attributed step function (info['attributed_fn']), e.g. "
            "an output merged from runs of different step functions; evaluate each run's output"
        )
    arguments = {} if "measured_step_function" in method_info else dict(info.get("attributed_fn_args") or {})
    try:
        (function,) = bind_step_functions([name], arguments, "attributed_fn_args")
    except ValueError as err:
        raise ValueError(
            f"the output attributes step function {name!r}, which is not registered in this session; "
            f"register it (seqattr.register_step_function) before evaluating ({err})"
        ) from err
    return name, arguments, function


def check_output(model: AttributionModel, output: AttributionOutput) -> None:
    """Refuse an output this model cannot evaluate: aggregated or unreduced scores, another model's tokens."""
    aggregated = [step for step in output.info.get("aggregations", []) if step.startswith("aggregate")]
    if aggregated:
        raise ValueError(
            f"this output was aggregated ({', '.join(aggregated)}); evaluate() removes tokens, so evaluate "
            "the token-level output (before aggregate())"
        )
    recorded = _recorded_family(output.info)
    if recorded is not None and recorded != _family_name(model.family):
        raise ValueError(
            f"this output was made with a {recorded} model ({output.info.get('model')!r}) but "
            f"{model.model_name!r} is a {model.family} model; evaluate with the model that made the output"
        )
    vocab = model.model.get_input_embeddings().num_embeddings
    for i, seq in enumerate(output):
        if seq.extra_dims:
            raise ValueError(
                f"example {i} has attributions of shape {seq.attribution_shape} (extra dimensions "
                f"{seq.attribution_shape[2:]}); a ranking needs one score per token: reduce them first, "
                "e.g. out.reduce('sum')"
            )
        # A classifier's target ids are labels (or, for QA, source positions): its steps' vocabulary.
        target_vocab = vocab if model.family.generates else _step_vocabulary(model, seq.source_ids)
        for side, ids, tokens, limit in (
            ("source", seq.source_ids, seq.source, vocab),
            ("target", seq.target_ids, seq.target, target_vocab),
        ):
            if any(not 0 <= token_id < limit for token_id in ids) or tokens != (
                model.convert_ids_to_tokens(ids)
                if side == "source"
                else model.target_tokens(ids, seq.source_ids)
            ):
                raise ValueError(
                    f"example {i}: the output's {side} tokens are not this model's tokens for the same ids "
                    f"({model.model_name!r} vs the output's {output.info.get('model')!r}); evaluate with "
                    "the model (and tokenizer) that made the output"
                )
        if seq.target_attributions is None and (seq.source_attributions is None or not seq.source):
            raise ValueError(f"example {i} has no attributions to evaluate")


def _recorded_family(info: dict) -> str | None:
    """The kind of model an output records it was made with, as `_family_name` names a family: its task
    (a classifier's; multi-label or not), or for generation decoder-only / encoder-decoder (None: not
    recorded). A classifier records ``is_encoder_decoder=False`` too, which alone would read as
    decoder-only."""
    task = info.get("task", "generation")
    if task != "generation":
        return task + (" (multi-label)" if info.get("multi_label") else "")
    recorded = info.get("is_encoder_decoder")
    return None if recorded is None else (DECODER_ONLY, ENCODER_DECODER)[bool(recorded)].name


def _family_name(family: ModelFamily) -> str:
    """How `_recorded_family` names ``family``."""
    if family.generates:
        return family.name
    return family.task + (" (multi-label)" if family.multi_label else "")


def _step_vocabulary(model: AttributionModel, source_ids: Sequence[int]) -> int:
    """How many ids a classifier's steps choose from: its labels, or an extractive QA model's input
    positions (``LABEL_START``, 0, is one of both)."""
    if model.family.task == "question-answering":
        return len(source_ids)
    return int(model.model.config.num_labels)


POSITIONAL_TASKS = {
    "token-classification": "each step explains the tag of one input token",
    "question-answering": "the explained labels are input positions (the answer's start and end)",
}
"""Classifier tasks whose steps are tied to input positions, which ``removal="delete"`` would move."""


def check_removal(model: AttributionModel, removal: str) -> None:
    """Refuse ``removal="delete"`` where deleting a token removes or moves what a step explains.

    Example:
        >>> check_removal(model, "delete")   # a language model: its steps follow the deletion
        >>> import seqattr
        >>> from seqattr.testing import tiny_task_model
        >>> hf_tagger, tokenizer = tiny_task_model("token-classification")
        >>> check_removal(seqattr.load_model(hf_tagger, tokenizer=tokenizer), "delete")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: removal='delete' cannot evaluate a token-classification model: each step explains ...
    """
    if removal == "delete" and model.family.task in POSITIONAL_TASKS:
        raise ValueError(
            f"removal='delete' cannot evaluate a {model.family.task} model: "
            f"{POSITIONAL_TASKS[model.family.task]}, and deleting tokens would remove or move them; "
            "use removal='replace' (the removed tokens become the baseline, positions stay)"
        )


def evaluate(
    model: AttributionModel,
    output: AttributionOutput,
    metrics: str | Sequence[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    baseline: Any = "zeros",
    removal: str = "replace",
    by: str = "signed",
    seed: int = 0,
    random_ranking: bool = True,
    step_function: str | None = None,
) -> EvaluationResult:
    """Faithfulness metrics of ``output``'s attributions, with their random-ranking levels (see the module
    docstring for the definitions). `AttributionModel.evaluate` is the usual entry point.

    Example:
        >>> result = evaluate(model, out, metrics=["comprehensiveness", "sufficiency"])   # doctest: +SKIP
        >>> result.means()["comprehensiveness"] > result.random_means()["comprehensiveness"]  # doctest: +SKIP
    """
    metrics, fractions = check_settings(metrics, fractions, baseline, removal, by, seed)
    name, arguments, measured = evaluated_step_function(output.info, step_function)
    check_output(model, output)
    check_removal(model, removal)
    per_step, random_per_step, step_values = [], [], []
    for index, seq in enumerate(output):
        prompt_len = None
        if output.info.get("prompt_only"):  # attribute_target=False: only the prompt was attributed
            prompt_len = output.info["prompt_lengths"][index]
        run = _SequenceRun(model, seq, measured, baseline, prompt_len)
        try:
            values, random_values, clean = run.evaluate(
                index, metrics, fractions, removal, by, seed, random_ranking
            )
        except ValueError as err:
            if str(err) != NO_CONTRAST:
                raise
            raise ValueError(
                f"step function {name!r} reads a contrast, which evaluate() does not run; measure the "
                "rankings on a step function of the target alone, e.g. step_function='probability'"
            ) from err
        per_step.append(values)
        random_per_step.append(random_values)
        step_values.append(clean)
    _warn_if_curves_undefined(metrics, step_values, name)
    settings = {
        "fractions": fractions,
        "baseline": baseline if isinstance(baseline, (str, int)) else f"tensor{list(baseline.shape)}",
        "removal": removal,
        "by": by,
        "seed": seed,
        "step_function": name,
        "step_function_args": arguments,
        "method": output.info.get("method"),
        "model": model.model_name,
        "features": "token",
    }
    return EvaluationResult(
        metrics=metrics,
        per_step=per_step,
        random_per_step=random_per_step,
        step_values=step_values,
        steps=[list(seq.steps) for seq in output],
        settings=settings,
    )


def _warn_if_curves_undefined(metrics: list[str], step_values: list[Tensor], name: str) -> None:
    """Warn when the curves were asked for and some steps' ``f_t(x)`` is not positive (curves NaN there)."""
    asked = sorted(_CURVES & set(metrics))
    values = torch.cat([v.flatten() for v in step_values]) if step_values else torch.zeros(0)
    undefined = int((values <= 0).sum())
    if asked and undefined:
        warnings.warn(
            f"{', '.join(asked)} divide by f_t(x), the unperturbed value of step function {name!r}, which is "
            f"not positive at {undefined} of {values.numel()} steps: NaN there (a share of a negative value "
            "flips the curve). They are defined for a probability: measure the same rankings on it with "
            "step_function='probability' (CLI: --step-function probability), or use comprehensiveness and "
            "sufficiency, which are differences",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


@dataclass
class _Rows:
    """Gate rows of one example (1 keeps a feature, 0 removes it) and, per step, where its rows are."""

    gates: list[Tensor]

    @property
    def count(self) -> int:
        return sum(block.shape[0] for block in self.gates)

    def add(self, block: Tensor) -> range:
        start = self.count
        self.gates.append(block)
        return range(start, self.count)


class _SequenceRun:
    """One example set up for perturbed runs: its batch, features, per-feature scores and baselines."""

    def __init__(
        self,
        model: AttributionModel,
        seq: SequenceAttribution,
        step_function,
        baseline,
        prompt_len: int | None = None,
    ) -> None:
        """``prompt_len``: a prompt-only output's prompt length (its generated prefix is never removed)."""
        self.model, self.seq = model, seq
        example = EncodedExample(
            seq.source_ids, seq.target_ids, seq.attr_pos_start, seq.attr_pos_end, prompt_len
        )
        batch = AttributionBatch.from_examples([example], model.pad_token_id, model.family, model.device)
        source_embeds, target_embeds = model.embed_batch(batch)
        self.step_function = step_function
        attribute_source = model.family.attributes_source() and seq.source_attributions is not None
        attribute_target = seq.target_attributions is not None
        inputs = MethodInputs(
            batch,
            StepObjective(model, batch, step_function),
            source_embeds,
            target_embeds,
            attribute_source,
            attribute_target,
        )
        features = build_feature_map(
            model, batch, "token", attribute_source, attribute_target, prompt_only=prompt_len is not None
        )
        baselines = resolve_baselines(model, inputs, baseline)
        self.setup = PerturbationSetup(inputs, features, inputs.objective, baselines, {})
        self.positions = self._feature_positions(features)
        self.scores = self._feature_scores()
        self.visible_counts = self._visible_counts(features)

    def _feature_positions(self, features: FeatureMap) -> list[tuple[str, int]]:
        """``(side, token position)`` of each feature, in feature order (one token each)."""
        spans = features.spans[0]
        return [("source", start) for start, _ in spans["source"]] + [
            ("target", start) for start, _ in spans["target"]
        ]

    def _feature_scores(self) -> Float[Tensor, "features steps"]:
        seq = self.seq
        rows = [
            (seq.source_attributions if side == "source" else seq.target_attributions)[position]
            for side, position in self.positions
        ]
        if not rows:
            return torch.zeros(0, seq.num_steps, dtype=torch.float64)
        return torch.stack(rows).double()

    def _visible_counts(self, features: FeatureMap) -> list[int]:
        """How many features each step sees: the feature map's count, less the source tokens the family
        hides from the step (a causal decoder's tagger sees the tokens up to the one it tags). Hidden tokens
        come last in token order, so what a step sees is still the first ``n`` features."""
        seq = self.seq
        seen = self.model.family.source_visibility(seq.attr_pos_start, len(seq.source_ids), seq.num_steps)
        counts = []
        for step in range(seq.num_steps):
            hidden = sum(
                1 for side, position in self.positions if side == "source" and not seen[position, step]
            )
            counts.append(int(features.visible[0, step]) - hidden)
        return counts

    def visible(self, step: int) -> int:
        return self.visible_counts[step]

    def evaluate(
        self,
        index: int,
        metrics: list[str],
        fractions: list[float],
        removal: str,
        by: str,
        seed: int,
        random_ranking: bool = True,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Per-step values of every metric for the attribution's and the random ranking (NaN without
        ``random_ranking``), and ``f_t(x)``."""
        seq = self.seq
        num_features = max(self.setup.features.max_features, 1)
        rows = _Rows([torch.ones(1, num_features, dtype=torch.float64)])  # row 0: the unperturbed input
        plans: list[list[dict[str, Any] | None]] = []
        for step in range(seq.num_steps):
            n = self.visible(step)
            if n == 0:
                plans.append([None, None])
                continue
            scores = self.scores[:n, step]
            if bool(scores.isnan().any()):
                raise ValueError(
                    f"example {index}, step {step}: the attribution is NaN at a token the step sees; "
                    "a ranking needs a number for every token"
                )
            # One random stream per (seed, example, step position): a step's draws depend on no other step.
            generator = np.random.default_rng([seed, index, seq.attr_pos_start + step])
            random_scores = torch.from_numpy(generator.random(n))
            # The random scores are drawn even when unused, so the soft metrics' draws stay the same.
            plan = [
                self._plan(rows, scores.abs() if by == "abs" else scores, n, metrics, fractions, generator),
                self._plan(rows, random_scores, n, metrics, fractions, generator) if random_ranking else None,
            ]
            plans.append(plan)
        gates = torch.cat(rows.gates)
        unique, inverse = torch.unique(gates, dim=0, return_inverse=True)
        needed: list[set[int]] = [set() for _ in range(unique.shape[0])]
        for step, plan in enumerate(plans):
            for part in plan:
                if part is not None:
                    for row in part["rows"]:
                        needed[int(inverse[row])].add(step)
        for step in range(seq.num_steps):
            needed[int(inverse[0])].add(step)
        if removal == "replace":
            row_scores = self._replaced_scores(unique, needed)
        else:
            row_scores = self._deleted_scores(unique, needed)
        row_scores = row_scores.detach().double().cpu()
        values = row_scores[inverse]  # [rows, steps]
        clean = values[0]
        results: list[dict[str, list[float]]] = [{m: [] for m in metrics}, {m: [] for m in metrics}]
        for step, plan in enumerate(plans):
            for result, part in zip(results, plan, strict=True):
                computed = {} if part is None else _metric_values(part, values[:, step], float(clean[step]))
                for metric in metrics:
                    result[metric].append(computed.get(metric, math.nan))
        as_tensors = [{m: torch.tensor(v, dtype=torch.float64) for m, v in r.items()} for r in results]
        return as_tensors[0], as_tensors[1], clean.clone()

    def _plan(
        self,
        rows: _Rows,
        scores: Float[Tensor, " n"],
        n: int,
        metrics: list[str],
        fractions: list[float],
        generator: np.random.Generator,
    ) -> dict[str, Any]:
        """Add the gate rows one ranking of one step needs; returns where each is (row indices)."""
        width = rows.gates[0].shape[1]
        order = torch.from_numpy(np.argsort(-scores.numpy(), kind="stable"))
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)
        counts = [min(n, math.ceil(round(k * n, 9))) for k in fractions]

        def block(keep: Tensor) -> Tensor:
            gates = torch.ones(keep.shape[0], width, dtype=torch.float64)
            gates[:, :n] = keep.to(torch.float64)
            return gates

        plan: dict[str, Any] = {"n": n, "counts": counts}
        removed = set(counts) if "comprehensiveness" in metrics else set()
        kept = set(counts) if "sufficiency" in metrics else set()
        if _CURVES & set(metrics):
            removed |= set(range(n + 1))
            kept |= set(range(n + 1))
        removed_list, kept_list = sorted(removed), sorted(kept)
        spans = []
        if removed_list:
            i = torch.tensor(removed_list)
            span = rows.add(block(rank[None, :] >= i[:, None]))
            plan["removed"] = dict(zip(removed_list, span, strict=True))
            spans.append(span)
        if kept_list:
            m = torch.tensor(kept_list)
            span = rows.add(block(rank[None, :] < m[:, None]))
            plan["kept"] = dict(zip(kept_list, span, strict=True))
            spans.append(span)
        if {"soft_comprehensiveness", "soft_sufficiency"} & set(metrics):
            spread = scores.max() - scores.min()
            p = (scores - scores.min()) / spread if spread > 0 else torch.ones(n, dtype=torch.float64)
            draws = torch.from_numpy(generator.random((2, n)))
            # Comprehensiveness keeps a feature with probability 1 - p (removes the important ones),
            # sufficiency with probability p (keeps them).
            span = rows.add(block(torch.stack([draws[0] < 1 - p, draws[1] < p])))
            plan["soft"] = span
            spans.append(span)
        plan["rows"] = [row for span in spans for row in span]
        return plan

    def _replaced_scores(self, unique: Tensor, needed: list[set[int]]) -> Float[Tensor, "rows steps"]:
        """``removal="replace"``: each gate row scored at the steps that use it (NaN elsewhere). Rows are
        grouped by the span of those steps and run on the prefix the span needs: a row of step ``t`` never
        computes the positions after it (about a third of the positions of a 10-step output)."""
        setup, num_steps = self.setup, self.seq.num_steps
        scores = torch.full((unique.shape[0], num_steps), math.nan, dtype=torch.float64)
        spans: dict[tuple[int, int], list[int]] = {}
        for row, steps in enumerate(needed):
            if steps:
                spans.setdefault((min(steps), max(steps) + 1), []).append(row)
        device = setup.batch.target_ids.device
        for (first, stop), members in spans.items():
            index = torch.tensor(members)
            scores[index, first:stop] = (
                run_rows(
                    setup,
                    torch.zeros(len(members), dtype=torch.long, device=device),
                    unique[index].to(device=device, dtype=setup.inputs.target_embeds.dtype),
                    slice(first, stop),
                )
                .detach()
                .double()
                .cpu()
            )
        return scores

    def _deleted_scores(self, unique: Tensor, needed: list[set[int]]) -> Float[Tensor, "rows steps"]:
        """``removal="delete"``: each gate row's sequence without its removed tokens, scored at the steps that
        use it (NaN elsewhere, and where a decoder-only step would have no token before it)."""
        model, seq = self.model, self.seq
        scores = torch.full((unique.shape[0], seq.num_steps), math.nan, dtype=torch.float64)
        jobs: dict[int, list[tuple[int, int, EncodedExample]]] = {}
        for row, steps in enumerate(needed):
            if not steps:
                continue
            removed = {
                self.positions[f]
                for f in range(unique.shape[1])
                if f < len(self.positions) and unique[row, f] == 0
            }
            source = [t for p, t in enumerate(seq.source_ids) if ("source", p) not in removed]
            target = [t for p, t in enumerate(seq.target_ids) if ("target", p) not in removed]
            # Every removed target token precedes the first step using the row (a step never sees, so never
            # removes, a later one): all these steps move left by the same count. A step left with no token
            # before it (the row shared with an earlier step that removes its whole prefix) cannot run.
            shift = len(seq.target_ids) - len(target)
            steps = {step for step in steps if seq.attr_pos_start + step - shift >= 1}
            if not steps or (model.family.attributes_source() and not source):
                continue
            first, last = min(steps), max(steps)
            start = seq.attr_pos_start + first - shift
            example = EncodedExample(
                source, target[: start + last - first + 1], start, start + last - first + 1
            )
            # A family that cannot left-pad targets batches only examples whose first step is the same.
            key = 0 if model.family.pads_target_left else start
            jobs.setdefault(key, []).append((row, first, example))
        for group in jobs.values():
            length = len(seq.source_ids) + len(seq.target_ids)
            per_row = (
                length
                * self.setup.inputs.target_embeds.shape[-1]
                * self.setup.inputs.target_embeds.element_size()
            )
            size = max(1, CHUNK_BYTES // max(per_row, 1))
            # The family's batches: a classifier that pools its last token takes only texts of one length
            # (padding would move its last position), so rows are ordered by length first.
            group.sort(key=lambda job: len(job[2].source_ids))
            for begin, stop in model.family.batch_spans([example for _, _, example in group], size):
                part = group[begin:stop]
                batch_scores = self._plain_scores([example for _, _, example in part])
                for j, (row, first, example) in enumerate(part):
                    count = example.attr_pos_end - example.attr_pos_start
                    scores[row, first : first + count] = batch_scores[j, :count]
        return scores

    def _plain_scores(self, examples: list[EncodedExample]) -> Float[Tensor, "n steps"]:
        """Every step's score of unperturbed examples (a batch of them, through the engine's chunked rows)."""
        model = self.model
        batch = AttributionBatch.from_examples(examples, model.pad_token_id, model.family, model.device)
        source_embeds, target_embeds = model.embed_batch(batch)
        objective = StepObjective(model, batch, self.step_function)
        inputs = MethodInputs(batch, objective, source_embeds, target_embeds, False, False)
        size = batch.size
        empty = FeatureMap(
            None if batch.source_ids is None else torch.full_like(batch.source_ids, -1),
            torch.full_like(batch.target_ids, -1),
            [0] * size,
            [0] * size,
            torch.zeros(size, batch.num_steps, dtype=torch.long, device=batch.target_ids.device),
            [{} for _ in range(size)],
        )
        return (
            clean_scores(PerturbationSetup(inputs, empty, objective, Baselines(None, None), {}))
            .double()
            .cpu()
        )


def _metric_values(plan: dict[str, Any], values: Float[Tensor, " rows"], clean: float) -> dict[str, float]:
    """One step's metrics from its perturbed values (``values[row]``) and ``f_t(x)`` (``clean``)."""
    n, counts = plan["n"], plan["counts"]
    result: dict[str, float] = {}
    removed, kept = plan.get("removed", {}), plan.get("kept", {})
    if counts[0] in removed:
        result["comprehensiveness"] = sum(clean - float(values[removed[c]]) for c in counts) / len(counts)
    if counts[0] in kept:
        result["sufficiency"] = sum(clean - float(values[kept[c]]) for c in counts) / len(counts)
    if len(removed) == n + 1 and len(kept) == n + 1 and clean > 0:
        deletion = np.array([float(values[removed[i]]) for i in range(n + 1)]) / clean
        insertion = np.array([float(values[kept[i]]) for i in range(n + 1)]) / clean
        result["deletion_auc"] = float(((deletion[1:] + deletion[:-1]) / 2).sum() / n)
        result["insertion_auc"] = float(((insertion[1:] + insertion[:-1]) / 2).sum() / n)
        result["abpc"] = result["insertion_auc"] - result["deletion_auc"]
    if "soft" in plan:
        comprehensive, sufficient = plan["soft"]
        result["soft_comprehensiveness"] = clean - float(values[comprehensive])
        result["soft_sufficiency"] = clean - float(values[sufficient])
    return result
