"""ReAGent (Zhao & Shan 2024): importance from the drop of a step's probability when random tokens replace
others, refined over rounds of probes until the most important tokens alone keep the prediction.

The algorithm of Inseq 0.7.1 (``inseq/attr/feat/ops/reagent_core``), run for every step ``t`` on the
``V`` features the step sees (`seqattr.features`; a feature's tokens are replaced together):

1. ``num_probes`` probes start with random logit importances ``s ~ U[0, 1)`` (``[num_probes, V]``).
2. A round: each probe replaces each feature with probability ``replacing_ratio`` (its tokens by tokens of
   the replacer) and measures ``delta = p - p_replaced``, ``p`` the step's probability on the clean input.
   Replaced features gain ``logit(delta / 2 + 1/2)``, kept ones ``logit(-delta / 2 + 1/2)``.
3. Stopping condition: the importance ``softmax(s)`` ranks the features; all but the top ``keep_top_n``
   (or the top ``ceil(keep_ratio * V)`` when ``keep_top_n=0``; with ``invert_keep`` only those) are
   replaced, and the probe stops when the step's token is then among the model's top
   ``stopping_condition_top_k`` predictions. A stopped probe is no longer updated.
4. Rounds repeat until every probe has stopped or after ``max_probe_steps`` rounds. The step's attribution
   is the mean ``softmax(s)`` of the stopped probes (it sums to 1 over the step's features). Where no probe
   stopped, Inseq divides by zero (NaN); here the mean of all probes is used, the step is counted in the
   output's ``info["method_info"]["unstopped_steps"]`` and a warning says so.

Replacers (``replacer=``): ``"uniform"`` draws each replacement uniformly from the vocabulary (offline, the
default); ``"masked_lm"`` samples it from a masked language model passed as ``replacer_model`` (it must
share the attributed model's vocabulary; it reads the step's visible tokens with the replaced ones masked).
Inseq's POS-tag replacer is not offered: it needs NLTK and a tagger downloaded at run time.

Randomness: step ``t`` draws from its own generator, seeded by ``probe_seed(seed, t)``, in Inseq's order
(initial scores; per round the replacement mask, the replacement tokens, then the stopping check's tokens),
so a step's numbers do not depend on the batch or on the other steps, and Inseq run with
``torch.manual_seed(probe_seed(seed, t))`` on that step draws the same numbers.

Fused path: the probes of every step of every example run in shared forward calls (each round, one set of
calls for all the updates and one for all the stopping checks), each probe a copy of its example with its
tokens replaced; a probe is scored at its own step only (the target side is causal: tokens after a step's
prediction do not change it). Stepwise path (the reference): the same rounds for one step at a time, on the
step's prefix. Cost per step: one clean sequence, then per round ``2 * num_probes`` sequences (the update and
the stopping check; a stopped probe costs nothing) for up to ``max_probe_steps`` rounds, so at most
``1 + 2 * num_probes * max_probe_steps`` sequences per step (times the steps for a sequence; the fused path
shares the forward calls, not the sequences).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seqattr.features import GRANULARITIES, build_feature_map
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype, refuse_contrast
from seqattr.methods.options import MethodOptions, Seed, check_int_range, int_option
from seqattr.methods.perturbation import PerturbationSetup, feature_output, score_chunks
from seqattr.step_functions import get_step_function
from seqattr.typing import Bool, Float, Int, Tensor

REPLACERS = ("uniform", "masked_lm", "pos_tag")
"""Token replacers by name; ``pos_tag`` is refused (see the module docs)."""
PROBABILITY_SLACK = 1e-6
"""How far outside [0, 1] a measured score may lie (a probability's rounding) before it is refused."""


def probe_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s generator: an independent stream for every (seed, step) pair.

    Example:
        >>> probe_seed(0, 1) == probe_seed(0, 1), probe_seed(0, 1) == probe_seed(1, 0)
        (True, False)
    """
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] % (2**63))


@dataclass
class ReagentOptions(Seed, MethodOptions):
    """Options of ReAGent; the names and defaults are Inseq's."""

    granularity: str = "token"
    """Features replaced as one: ``all_tokens``, ``token`` (special tokens kept), ``word``, ``sentence``."""
    keep_top_n: int = int_option(5, low=0)
    """Features kept (the most important ones) in the stopping check; 0: use ``keep_ratio``."""
    keep_ratio: float | None = None
    """With ``keep_top_n=0``: the fraction of the step's features kept, rounded up."""
    invert_keep: bool = False
    """Replace the top features in the stopping check instead of keeping them."""
    stopping_condition_top_k: int = int_option(3)
    """A probe stops when the step's token is among this many top predictions with the rest replaced."""
    replacing_ratio: float = 0.3
    """Probability that a probe replaces a feature in a round."""
    max_probe_steps: int = int_option(3000)
    """Rounds at most per step."""
    num_probes: int = int_option(16)
    """Probes run in parallel per step; the attribution is the mean of the stopped ones."""
    replacer: str = "uniform"
    """Where replacement tokens come from: ``uniform`` (uniform over the vocabulary) or ``masked_lm``
    (sampled from ``replacer_model``). ``pos_tag`` is not offered (it needs a tagger downloaded online)."""
    replacer_model: nn.Module | None = None
    """The masked language model of ``replacer="masked_lm"``: called as ``replacer_model(input_ids=...)``,
    its ``logits`` over the attributed model's vocabulary."""
    replacer_mask_token_id: int | None = None
    """The mask token of ``replacer_model`` (None: the attributed model's tokenizer's ``mask_token_id``)."""

    def validate(self) -> None:
        super().validate()
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"unknown granularity {self.granularity!r}; valid: {', '.join(map(repr, GRANULARITIES))}"
            )
        if self.keep_top_n == 0 and (self.keep_ratio is None or not 0 < self.keep_ratio <= 1):
            raise ValueError(
                f"keep_top_n=0 keeps a fraction of the features: pass keep_ratio in (0, 1], got "
                f"keep_ratio={self.keep_ratio!r}"
            )
        if self.keep_ratio is not None and not 0 < self.keep_ratio <= 1:
            raise ValueError(f"keep_ratio must lie in (0, 1], got {self.keep_ratio!r}")
        if not 0 < self.replacing_ratio <= 1:
            raise ValueError(f"replacing_ratio must lie in (0, 1], got {self.replacing_ratio!r}")
        if self.replacer not in REPLACERS:
            raise ValueError(f"unknown replacer {self.replacer!r}; valid: 'uniform', 'masked_lm'")
        if self.replacer == "pos_tag":
            raise ValueError(
                "replacer='pos_tag' is not offered: Inseq's POS-tag replacer tags the vocabulary with NLTK's "
                "tagger, downloaded at run time; use replacer='uniform' or replacer='masked_lm' with "
                "replacer_model="
            )
        if self.replacer == "masked_lm" and not isinstance(self.replacer_model, nn.Module):
            raise ValueError(
                "replacer='masked_lm' samples replacements from a masked language model: pass "
                "replacer_model=<a masked LM module sharing the model's vocabulary>"
            )
        if self.replacer != "masked_lm" and (
            self.replacer_model is not None or self.replacer_mask_token_id is not None
        ):
            raise ValueError(
                "replacer_model and replacer_mask_token_id are used by replacer='masked_lm' only; pass "
                "replacer='masked_lm' or drop them"
            )
        if self.replacer_mask_token_id is not None:
            check_int_range("replacer_mask_token_id", self.replacer_mask_token_id, 0)


# --- token samplers: a replacement token for every slot of a probe --------------------------------------

Sampler = Callable[[Int[Tensor, "n slots"], Bool[Tensor, "n slots"], torch.Generator], Int[Tensor, "n slots"]]
"""``(ids, replaced, generator) -> replacement ids``; only the replaced slots' ids are used."""


def uniform_sampler(vocab: int) -> Sampler:
    """Replacement ids uniform over ``[0, vocab)``, one per slot (Inseq's sampler with a single group).

    Example:
        >>> ids = torch.zeros(2, 3, dtype=torch.long)
        >>> uniform_sampler(10)(ids, ids.bool(), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3])
    """

    def sample(ids: Tensor, replaced: Tensor, generator: torch.Generator) -> Tensor:
        return (torch.rand(ids.shape, generator=generator) * vocab).long().to(ids.device)

    return sample


def masked_lm_sampler(model: nn.Module, mask_token_id: int, vocab: int) -> Sampler:
    """Replacement ids sampled from ``model``'s distribution at each replaced slot, the replaced slots masked
    (``mask_token_id``) in its input; the other slots keep their ids.

    Example:
        >>> class Peaked(nn.Module):   # a masked LM that always predicts token 7
        ...     def forward(self, input_ids):
        ...         return {"logits": torch.nn.functional.one_hot(torch.full_like(input_ids, 7), 9) * 50.0}
        >>> ids, replaced = torch.tensor([[1, 2, 3]]), torch.tensor([[False, True, False]])
        >>> masked_lm_sampler(Peaked(), 0, 9)(ids, replaced, torch.Generator().manual_seed(0))
        tensor([[1, 7, 3]])
    """

    def sample(ids: Tensor, replaced: Tensor, generator: torch.Generator) -> Tensor:
        masked = ids.masked_fill(replaced, mask_token_id)
        parameter = next(model.parameters(), None)  # the masked LM may live on another device
        with torch.no_grad():
            logits = model(input_ids=masked if parameter is None else masked.to(parameter.device))["logits"]
        replaced = replaced.to(logits.device)
        if logits.shape[-1] != vocab:
            raise ValueError(
                f"replacer_model predicts {logits.shape[-1]} tokens but the attributed model's vocabulary "
                f"has {vocab}: a masked LM replacer must share the attributed model's tokenizer"
            )
        probabilities = torch.softmax(logits[replaced].float(), dim=-1).cpu()
        out = ids.clone()
        if probabilities.shape[0]:
            drawn = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
            out[replaced.to(ids.device)] = drawn.to(ids.device)
        return out

    return sample


def replacement_vocab(model) -> int:
    """Token ids the uniform replacer draws from: those both the tokenizer and the embedding matrix know."""
    rows = model.model.get_input_embeddings().num_embeddings
    return min(rows, len(model.tokenizer)) if model.tokenizer is not None else rows


def make_sampler(model, options: ReagentOptions) -> Sampler:
    vocab = replacement_vocab(model)
    if options.replacer == "uniform":
        return uniform_sampler(vocab)
    mask_token_id = options.replacer_mask_token_id
    if mask_token_id is None:
        mask_token_id = getattr(model.tokenizer, "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError(
            "replacer='masked_lm' needs the masked LM's mask token: the model's tokenizer has none; pass "
            "replacer_mask_token_id="
        )
    return masked_lm_sampler(
        options.replacer_model, mask_token_id, model.model.get_input_embeddings().num_embeddings
    )


# --- the rounds of one step ----------------------------------------------------------------------------


@dataclass
class StepProbes:
    """The probes of step ``column`` of example ``b``: its slots (the tokens of the features it sees, source
    then target, each with its feature) and the probes' state."""

    b: int
    column: int
    source_positions: Int[Tensor, " s"]
    target_positions: Int[Tensor, " r"]
    slot_features: Int[Tensor, " slots"]
    slot_ids: Int[Tensor, " slots"]
    num_features: int
    generator: torch.Generator
    logit_scores: Float[Tensor, "probes features"] | None = None
    stopped: Bool[Tensor, " probes"] | None = None
    clean: Tensor | None = None
    rounds: int = 0

    def replaced_ids(
        self, replaced_features: Bool[Tensor, "n features"], sampler: Sampler
    ) -> tuple[Int[Tensor, "n slots"], Bool[Tensor, "n slots"]]:
        ids = self.slot_ids[None].expand(replaced_features.shape[0], -1)
        replaced = replaced_features[:, self.slot_features]
        sampled = sampler(ids, replaced, self.generator)
        return torch.where(replaced, sampled, ids), replaced


Scorer = Callable[[list[tuple[StepProbes, Tensor, Tensor]], object], list[Tensor]]
"""``([(step, slot ids [n, slots], replaced slots [n, slots]), ...], objective) -> [scores [n], ...]``."""


def step_probes(setup: PerturbationSetup, seed: int) -> list[StepProbes]:
    """Every real step that sees a feature, ordered by step column."""
    batch, features = setup.batch, setup.features
    steps = []
    for column in range(batch.num_steps):
        for b in range(batch.size):
            visible = int(features.visible[b, column])
            if not bool(batch.step_mask[b, column]) or visible == 0:
                continue
            parts = []
            for feature_of, ids in ((features.source, batch.source_ids), (features.target, batch.target_ids)):
                if feature_of is None:
                    parts.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None))
                    continue
                of = feature_of[b].cpu()
                positions = torch.nonzero((of >= 0) & (of < visible))[:, 0]
                parts.append((positions, of[positions], ids[b].cpu()[positions]))
            (source_pos, source_feat, source_ids), (target_pos, target_feat, target_ids) = parts
            slot_ids = target_ids if source_ids is None else torch.cat([source_ids, target_ids])
            steps.append(
                StepProbes(
                    b,
                    column,
                    source_pos,
                    target_pos,
                    torch.cat([source_feat, target_feat]),
                    slot_ids,
                    visible,
                    torch.Generator().manual_seed(probe_seed(seed, column)),
                )
            )
    return steps


def stopping_check_replaced(
    importance: Float[Tensor, "n features"], options: ReagentOptions
) -> Bool[Tensor, "n features"]:
    """Features the stopping check replaces: all but the top ones by importance (only those with
    ``invert_keep``), as Inseq's ``RankingTokenReplacer``.

    Example:
        >>> stopping_check_replaced(torch.tensor([[0.1, 0.6, 0.3]]), ReagentOptions(keep_top_n=1))
        tensor([[ True, False,  True]])
    """
    n = importance.shape[-1]
    top_n = options.keep_top_n or int(math.ceil(options.keep_ratio * n))
    top = torch.argsort(importance, descending=True)[..., :top_n]
    return torch.ones_like(importance, dtype=torch.bool).scatter(-1, top, options.invert_keep)


def updated_scores(
    logit_scores: Float[Tensor, "n features"],
    replaced: Bool[Tensor, "n features"],
    delta: Float[Tensor, " n"],
) -> Float[Tensor, "n features"]:
    """One round's update of the logit importances (Inseq's ``update_importance_score``): a replaced
    feature gains ``logit(delta / 2 + 1/2)``, a kept one ``logit(-delta / 2 + 1/2)``, where ``delta`` is the
    probe's drop of the probability.

    Example:
        >>> updated_scores(torch.zeros(1, 2), torch.tensor([[True, False]]), torch.tensor([0.5]))
        tensor([[ 1.0986, -1.0986]])
    """
    delta = delta[:, None]
    signed = torch.where(replaced, delta, -delta)
    return logit_scores + torch.logit(signed * 0.5 + 0.5)


def _checked_probabilities(scores: Tensor) -> Tensor:
    bad = (scores < -PROBABILITY_SLACK) | (scores > 1 + PROBABILITY_SLACK) | scores.isnan()
    if bool(bad.any()):
        raise ValueError(
            f"reagent measures a probability (its update needs a change in [-1, 1]) but the attributed "
            f"step function gave {float(scores[bad][0])!r}; use attributed_fn='probability' (the default) "
            "or another function with values in [0, 1]"
        )
    return scores.clamp(0.0, 1.0)


def run_probes(
    steps: list[StepProbes],
    score: Scorer,
    probability,
    rank,
    sampler: Sampler,
    options: ReagentOptions,
    dtype: torch.dtype,
) -> None:
    """The rounds of ``steps`` in lockstep (every forward call shared by all of them); each step's
    ``logit_scores`` and ``stopped`` hold its result."""
    probes = options.num_probes
    if not steps:
        return
    clean = score(
        [(s, s.slot_ids[None], torch.zeros(1, len(s.slot_ids), dtype=torch.bool)) for s in steps], probability
    )
    for step, value in zip(steps, clean, strict=True):
        step.clean = _checked_probabilities(value.to(dtype))[0]
        step.logit_scores = torch.rand((probes, step.num_features), generator=step.generator).to(dtype)
        step.stopped = torch.zeros(probes, dtype=torch.bool)
    active = list(steps)
    while active:
        # Update: every probe draws (Inseq's order: mask, then tokens), only the running ones are scored.
        draws = []
        for step in active:
            replaced = (
                torch.rand((probes, step.num_features), generator=step.generator) < options.replacing_ratio
            )
            ids, slots = step.replaced_ids(replaced, sampler)
            running = ~step.stopped
            draws.append((step, replaced, ids[running], slots[running]))
        scores = score([(step, ids, slots) for step, _, ids, slots in draws], probability)
        for (step, replaced, _, _), value in zip(draws, scores, strict=True):
            running = ~step.stopped
            delta = step.clean - _checked_probabilities(value.to(dtype))
            step.logit_scores[running] = updated_scores(step.logit_scores[running], replaced[running], delta)
            step.rounds += 1
        # Stopping check: the least important features replaced; the token among the top k predictions.
        checks = []
        for step in active:
            replaced = stopping_check_replaced(torch.softmax(step.logit_scores, -1), options)
            ids, slots = step.replaced_ids(replaced, sampler)
            running = ~step.stopped
            checks.append((step, ids[running], slots[running]))
        ranks = score(checks, rank)
        for (step, _, _), value in zip(checks, ranks, strict=True):
            step.stopped[~step.stopped.clone()] = value.cpu() < options.stopping_condition_top_k
        active = [s for s in active if not bool(s.stopped.all()) and s.rounds < options.max_probe_steps]


def step_attribution(step: StepProbes) -> tuple[Float[Tensor, " features"], bool]:
    """The mean importance of the stopped probes (of all probes when none stopped), and whether any did."""
    importance = torch.softmax(step.logit_scores, -1)
    if bool(step.stopped.any()):
        return importance[step.stopped].sum(0) / step.stopped.sum(), True
    return importance.mean(0), False


# --- forward calls ---------------------------------------------------------------------------------------


def probe_embeddings(
    setup: PerturbationSetup, requests: list[tuple[StepProbes, Tensor, Tensor]], model
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Rows (example index), source and target embeddings of every probe of ``requests``: the example's
    embeddings with each replaced slot's token embedded in its place."""
    inputs = setup.inputs
    device = inputs.target_embeds.device
    rows, sources, targets = [], [], []
    for step, ids, slots in requests:
        n = ids.shape[0]
        ids, slots = ids.to(device), slots.to(device)
        replacement = model.embed(ids)
        split = len(step.source_positions)
        if inputs.source_embeds is not None:
            source = inputs.source_embeds[step.b].expand(n, -1, -1).clone()
            positions = step.source_positions.to(device)
            source[:, positions] = torch.where(
                slots[:, :split, None], replacement[:, :split], source[:, positions]
            )
            sources.append(source)
        target = inputs.target_embeds[step.b].expand(n, -1, -1).clone()
        positions = step.target_positions.to(device)
        target[:, positions] = torch.where(
            slots[:, split:, None], replacement[:, split:], target[:, positions]
        )
        targets.append(target)
        rows.append(torch.full((n,), step.b, dtype=torch.long, device=device))
    source = torch.cat(sources) if sources else None
    return torch.cat(rows), source, torch.cat(targets)


def fused_scorer(setup: PerturbationSetup, model) -> Scorer:
    """Scores every request's probes at its own step in shared forward calls: probes ordered by step, a call
    taking as many as the memory budget allows (`score_chunks` for the steps the call spans); only one call's
    embeddings and logits exist at a time."""
    batch = setup.batch

    def score(requests, objective) -> list[Tensor]:
        order = sorted(range(len(requests)), key=lambda i: requests[i][0].column)
        # One entry per probe, ordered by step: (request, row in it, column).
        probes = [(i, j, requests[i][0].column) for i in order for j in range(requests[i][1].shape[0])]
        results = [
            torch.empty(ids.shape[0], dtype=setup.inputs.target_embeds.dtype) for _, ids, _ in requests
        ]
        start = 0
        with torch.no_grad():
            while start < len(probes):
                low, stop = probes[start][2], start + 1
                while (
                    stop < len(probes)
                    and stop + 1 - start <= score_chunks(setup, slice(low, probes[stop][2] + 1)).rows
                ):
                    stop += 1
                part = probes[start:stop]
                high = part[-1][2]
                pieces = []
                for i in dict.fromkeys(i for i, _, _ in part):  # the requests of the call, in order
                    local = torch.tensor([j for r, j, _ in part if r == i])
                    step, ids, slots = requests[i]
                    pieces.append((step, ids[local], slots[local]))
                rows, source, target = probe_embeddings(setup, pieces, model)
                prefix = target[:, : int(batch.step_positions[high])]
                scores = objective(source, prefix, slice(low, high + 1), rows)
                columns = torch.tensor([column - low for _, _, column in part], device=scores.device)
                values = scores[torch.arange(len(part), device=scores.device), columns].cpu()
                for (i, j, _), value in zip(part, values, strict=True):
                    results[i][j] = value
                start = stop
        return results

    return score


def stepwise_scorer(setup: PerturbationSetup, model) -> Scorer:
    """Scores each request's probes on its step's own prefix, alone."""
    batch = setup.batch

    def score(requests, objective) -> list[Tensor]:
        results = []
        with torch.no_grad():
            for request in requests:
                step = request[0]
                steps = slice(step.column, step.column + 1)
                rows, source, target = probe_embeddings(setup, [request], model)
                prefix = target[:, : int(batch.step_positions[step.column])]
                parts = []
                for part in score_chunks(setup, steps).row_slices(len(rows)):
                    src = None if source is None else source[part]
                    parts.append(objective(src, prefix[part], steps, rows[part])[:, 0].cpu())
                results.append(torch.cat(parts) if parts else torch.zeros(0))
        return results

    return score


class Reagent(AttributionMethod):
    """Importance from the probability drops of random token replacements, refined until the top tokens
    alone keep the prediction (ReAGent, Zhao & Shan 2024)."""

    name = "reagent"
    Options = ReagentOptions

    def _setup(
        self, inputs: MethodInputs, options: ReagentOptions
    ) -> tuple[PerturbationSetup, object, object]:
        inputs = refuse_contrast(
            inputs,
            "reagent measures the probability of the step's token (its update needs a change in [-1, 1])",
            "attribute the token's probability (attributed_fn='probability', the default)",
        )
        features = build_feature_map(
            self.model,
            inputs.batch,
            options.granularity,
            inputs.attribute_source,
            inputs.attribute_target,
            prompt_only=inputs.held_target is not None,  # the generated prefix is never replaced
        )
        info = {"granularity": options.granularity, "replacer": options.replacer}
        setup = PerturbationSetup(inputs, features, inputs.objective, None, info)
        rank = copy.copy(inputs.objective)  # the same batch and contrast, the target's rank
        rank.step_function = get_step_function("rank")
        return setup, inputs.objective, rank

    def _attribute(self, inputs: MethodInputs, options: ReagentOptions, fused: bool) -> MethodOutput:
        setup, probability, rank = self._setup(inputs, options)
        seed = options.resolved_seed()
        sampler = make_sampler(self.model, options)
        dtype = output_dtype(inputs.target_embeds.dtype)
        steps = step_probes(setup, seed)
        if fused:
            run_probes(steps, fused_scorer(setup, self.model), probability, rank, sampler, options, dtype)
        else:
            scorer = stepwise_scorer(setup, self.model)
            for step in steps:
                run_probes([step], scorer, probability, rank, sampler, options, dtype)
        batch = setup.batch
        scores = torch.zeros(batch.size, max(setup.features.max_features, 1), batch.num_steps, dtype=dtype)
        unstopped = 0
        for step in steps:
            attribution, stopped = step_attribution(step)
            scores[step.b, : step.num_features, step.column] = attribution
            unstopped += not stopped
        if unstopped:
            warnings.warn(
                f"reagent: in {unstopped} step(s) no probe met the stopping condition within "
                f"max_probe_steps={options.max_probe_steps} rounds (the step's token never came back into "
                f"the top {options.stopping_condition_top_k} with the top features kept); their attributions "
                "are the mean over all probes. Raise max_probe_steps or stopping_condition_top_k",
                stacklevel=2,
            )
        setup.info.update({"seed": seed, "unstopped_steps": unstopped})
        return feature_output(setup, scores)

    def attribute_fused(self, inputs: MethodInputs, options: ReagentOptions) -> MethodOutput:
        return self._attribute(inputs, options, fused=True)

    def attribute_stepwise(self, inputs: MethodInputs, options: ReagentOptions) -> MethodOutput:
        return self._attribute(inputs, options, fused=False)
