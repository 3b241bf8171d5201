"""Shared machinery of perturbation methods: every perturbed sequence is run once, for all steps at once.

A perturbation method replaces features (groups of tokens, `seqattr.features`) by a baseline and measures how
each step's score moves. Perturbations are *gates*, one number per feature of an example: 1 keeps the
feature's tokens, 0 replaces them by the baseline embedding, values in between mix the two
(``gate * embedding + (1 - gate) * baseline``; Sobol's continuous masks use that).

Fused path: a perturbed copy of the whole sequence is run once and its logits at every step
position give every step's score. The target side is causal: a step sees only target features that start
before its predicted token, so perturbing a later feature cannot change it. Methods therefore read, for step
``t``, only the perturbations of the first ``features.visible[b, t]`` features (those the step can see) and
treat everything else as untouched: the result is exactly what perturbing the step's own prefix would give.

Stepwise path (the reference): each step is explained on its own prefix, the perturbation applied to the
features it can see (`StepPrefix`); Captum's own classes run there where Captum has the method.

Cost is counted in sequences run through the model (rows of its forward calls; rows are batched in chunks
that bound memory and never change results).

Memory: a forward call's logits (``[rows, steps, vocab]``; 49,152 words for SmolLM2) outweigh everything else
a perturbed row costs, so each chunk of rows is scored at once and only its scores (``[rows, steps]``) are
kept: `score_chunks` sizes the chunks so that a call's input embeddings and logits (twice with a contrast,
whose forward gives logits of the same shape) stay within ``_CHUNK_BYTES``. When a single row's logits of
every step exceed it (long generations), the steps are scored in chunks too, each on the prefix its steps
need. Decoder-only models only: an encoder-decoder model's forward computes the logits of every target
position, so its rows are chunked and its steps are not.

Prefix reuse (decoder-only): a perturbed row equals the clean sequence before its first perturbed position,
so `run_rows` runs the clean batch once with the key/value cache on and each chunk of rows only from its
rows' first perturbed position on (`seqattr.models.prefix_reuse`); each row's copy of the cache then counts
in the chunk's budget. Same numbers, about half the positions for single-token ablation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from seqattr.features import GRANULARITIES, FeatureMap, build_feature_map
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.gradient import CHUNK_BYTES, vocab_size
from seqattr.methods.options import Baseline, MethodOptions
from seqattr.methods.path_base import Baselines, resolve_baselines
from seqattr.models.prefix_reuse import PrefixReuse, applies_to, cache_bytes_per_position, first_changes
from seqattr.progress import expect_passes
from seqattr.step_functions import get_step_function
from seqattr.typing import Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.engine import StepObjective

INFERENCE_MODES = {"logits": "logit", "softmax": "probability", "log_softmax": "logprob"}
"""What ``inference_mode`` measures the perturbation effect on (Interpreto's names) → our step function."""
_CHUNK_BYTES = CHUNK_BYTES
"""Memory per forward call, the gradient engine's budget (16 MiB): the perturbed rows' input embeddings and
the logits they score steps from (``[rows, steps, vocab]``, the contrast's too when there is one); see
`score_chunks`. Measured on SmolLM2, 40 steps (docs/benchmarks.md): occlusion's peak was 1,012 MB unchunked,
296 MB at 32 MiB (4 rows per call), 53-237 MB at 16 MiB (2 rows), at about the same speed."""


@dataclass
class PerturbationOptions(Baseline, MethodOptions):
    """Options shared by perturbation methods."""

    granularity: str = "token"
    """Features perturbed as one: ``all_tokens``, ``token`` (special tokens kept), ``word``, ``sentence``."""
    inference_mode: str | None = None
    """Measure the effect on the target token's ``logits``, ``softmax`` or ``log_softmax`` instead of the
    attributed step function (None: the attributed step function, by default the probability)."""

    def validate(self) -> None:
        super().validate()
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"unknown granularity {self.granularity!r}; valid: {', '.join(map(repr, GRANULARITIES))}"
            )
        if self.inference_mode is not None and self.inference_mode not in INFERENCE_MODES:
            raise ValueError(
                f"unknown inference_mode {self.inference_mode!r}; valid: None (the attributed step "
                f"function), {', '.join(map(repr, INFERENCE_MODES))}"
            )


@dataclass
class PerturbationSetup:
    """Everything a perturbation method needs for one batch."""

    inputs: MethodInputs
    features: FeatureMap
    objective: StepObjective
    baselines: Baselines
    """Baseline embeddings of the attributed roles, full size."""
    info: dict
    prefix: PrefixReuse | None = field(default=None, init=False, repr=False)
    """The clean batch's key/value cache perturbed rows start from (`prefix_reuse`), made on first use."""
    prefix_checked: bool = field(default=False, init=False, repr=False)

    @property
    def batch(self):
        return self.inputs.batch


def _reuse_possible(setup: PerturbationSetup) -> bool:
    """Whether the batch's perturbed rows may start from its clean prefix: a decoder-only generator
    (`seqattr.models.prefix_reuse.applies_to`), no source side, and no quantity of interest (whose
    activations the pass must record at every position)."""
    objective, inputs = setup.objective, setup.inputs
    model = getattr(objective, "model", None)
    return (
        model is not None
        and inputs.source_embeds is None
        and not getattr(objective, "quantities", ())
        and applies_to(model)
    )


def prefix_reuse(setup: PerturbationSetup) -> PrefixReuse | None:
    """The batch's clean prefix cache, made once per setup (one pass over the clean batch), or None where
    it cannot be used (`_reuse_possible`, `PrefixReuse.of`)."""
    if not setup.prefix_checked:
        setup.prefix_checked = True
        if _reuse_possible(setup):
            setup.prefix = PrefixReuse.of(setup.objective.model, setup.batch, setup.inputs.target_embeds)
    return setup.prefix


def setup_perturbation(
    method: AttributionMethod, inputs: MethodInputs, options: PerturbationOptions
) -> PerturbationSetup:
    """Features, baseline and the measured objective of one batch, and what the output's info records."""
    features = build_feature_map(
        method.model,
        inputs.batch,
        options.granularity,
        inputs.attribute_source,
        inputs.attribute_target,
        prompt_only=inputs.held_target is not None,
    )
    objective = inputs.objective
    info = {"granularity": options.granularity}
    if options.inference_mode is not None:
        # Same batch and contrast, another step function: the effect is measured on that quantity.
        objective = copy.copy(objective)
        objective.step_function = get_step_function(INFERENCE_MODES[options.inference_mode])
        info["inference_mode"] = options.inference_mode
        info["measured_step_function"] = INFERENCE_MODES[options.inference_mode]
    baselines = resolve_baselines(method.model, inputs, options.baseline)
    return PerturbationSetup(inputs, features, objective, baselines, info)


def perturbed_embeddings(
    setup: PerturbationSetup, rows: Int[Tensor, " n"], gates: Float[Tensor, "n features"]
) -> tuple[Tensor | None, Tensor]:
    """Source and target embeddings of ``n`` perturbed copies: row ``i`` is example ``rows[i]`` with its
    features mixed with the baseline by ``gates[i]`` (1 = kept). Tokens that are not features are kept."""
    inputs, features = setup.inputs, setup.features

    def mix(embeds: Tensor, baseline: Tensor, feature_of: Tensor) -> Tensor:
        index = feature_of[rows]
        gate = gates.gather(1, index.clamp(min=0)).masked_fill(index < 0, 1.0).to(embeds.dtype)[..., None]
        # gate * x + (1 - gate) * b: exactly x where the gate is 1 and exactly b where it is 0.
        return gate * embeds[rows] + (1 - gate) * baseline[rows]

    source = None
    if inputs.source_embeds is not None:
        source = inputs.source_embeds[rows]
        if inputs.attribute_source:
            source = mix(inputs.source_embeds, setup.baselines.source, features.source)
    target = inputs.target_embeds[rows]
    if inputs.attribute_target:
        target = mix(inputs.target_embeds, setup.baselines.target, features.target)
    return source, target


def full_gates(
    setup: PerturbationSetup, rows: Int[Tensor, " n"], partial: Float[Tensor, "n k"]
) -> Float[Tensor, "n features"]:
    """Gates over all features of the batch from gates of the first ``k`` features (the rest kept)."""
    gates = torch.ones(partial.shape[0], max(setup.features.max_features, 1), device=partial.device)
    gates[:, : partial.shape[1]] = partial
    return gates


def _keeps_step_logits(setup: PerturbationSetup) -> bool:
    """Whether a forward call computes logits only at the explained steps (models whose forward takes
    ``logits_to_keep``) rather than at every target position of the prefix."""
    model = getattr(setup.objective, "model", None)
    return bool(getattr(model, "has_logits_to_keep", False))


@dataclass
class ScoreChunks:
    """How perturbed rows are scored: ``rows`` rows per forward call, each chunk of rows once per slice of
    ``step_slices`` (a single slice unless one row's logits of every step exceed the budget)."""

    rows: int
    step_slices: list[slice]

    def row_slices(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.rows):
            yield slice(start, min(start + self.rows, n))


def score_chunks(setup: PerturbationSetup, steps: slice = slice(None), cached: bool = False) -> ScoreChunks:
    """Chunks of rows and steps whose forward call stays within ``_CHUNK_BYTES``: the rows' input embeddings
    (``[rows, positions, hidden]``) plus the logits of their steps (``[rows, steps, vocab]``, times two with a
    contrast), and with ``cached`` (prefix reuse) each row's copy of the clean key/value cache, at least one
    row and one step per call. Chunking never changes results."""
    batch = setup.batch
    embeds = setup.inputs.target_embeds
    element = embeds.element_size()
    positions = batch.target_ids.shape[1] + (batch.source_ids.shape[1] if batch.source_ids is not None else 0)
    per_row = positions * embeds.shape[-1] * element
    if cached:
        per_row += positions * cache_bytes_per_position(setup.objective.model)
    contrast = getattr(setup.objective, "contrast", None)
    per_logits = vocab_size(setup.inputs) * element * (2 if contrast is not None else 1)
    first, stop, _ = steps.indices(batch.num_steps)
    count = max(stop - first, 0)
    if count == 0:
        return ScoreChunks(max(1, _CHUNK_BYTES // max(per_row, 1)), [slice(first, stop)])
    if _keeps_step_logits(setup):
        # One logit vector per step: as many steps per call as fit next to one row's embeddings.
        size = min(count, max(1, (_CHUNK_BYTES - per_row) // max(per_logits, 1)))
        logit_vectors = size
    else:
        # Logits at every target position of the prefix: chunking steps would not bound the last chunk.
        size = count
        logit_vectors = int(batch.step_positions[first:stop].max())
    rows = max(1, _CHUNK_BYTES // max(per_row + logit_vectors * per_logits, 1))
    return ScoreChunks(rows, [slice(start, min(start + size, stop)) for start in range(first, stop, size)])


def run_rows(
    setup: PerturbationSetup,
    rows: Int[Tensor, " n"],
    gates: Float[Tensor, "n features"],
    steps: slice = slice(None),
) -> Float[Tensor, "n steps"]:
    """Every step's score (or only those of ``steps``, on the prefix they need: the later positions are not
    computed) for ``n`` perturbed copies of whole sequences, in memory-bounded chunks of rows (and of steps):
    only one chunk's logits exist at a time.

    Decoder-only rows start from the clean prefix (`prefix_reuse`) when that saves at least
    `MIN_SAVED_POSITIONS` of the positions: a forward call runs from its rows' earliest perturbed position on,
    so rows are taken in the order of their first perturbed position, a chunk is cut where its later rows
    would recompute too much (`WASTED_POSITIONS`), and the scores are put back in the given order."""
    reuse, order, first = None, None, None
    if rows.shape[0] and _reuse_possible(setup):
        with torch.no_grad():
            clean = setup.inputs.target_embeds
            first = torch.cat(
                [
                    first_changes(clean[rows[p]], perturbed_embeddings(setup, rows[p], gates[p])[1])
                    for p in score_chunks(setup).row_slices(rows.shape[0])
                ]
            )
            length = clean.shape[1]
            if int((length - first).sum()) <= (1 - MIN_SAVED_POSITIONS) * length * rows.shape[0]:
                reuse = prefix_reuse(setup)
    chunks = score_chunks(setup, steps, cached=reuse is not None)
    parts = list(chunks.row_slices(rows.shape[0]))
    if reuse is not None:
        order = torch.argsort(first, stable=True)
        rows, gates = rows[order], gates[order]
        parts = _start_groups(chunks.row_slices(rows.shape[0]), first[order].tolist(), length)
    expect_passes(setup.objective, len(parts) * len(chunks.step_slices))
    scores = []
    with torch.no_grad():
        for part in parts:
            source, target = perturbed_embeddings(setup, rows[part], gates[part])
            row_scores = []
            for chunk in chunks.step_slices:
                # The prefix the chunk's steps need: their logits are those of the whole sequence.
                prefix = target[:, : int(setup.batch.step_positions[chunk].max())]
                row_scores.append(setup.objective(source, prefix, chunk, rows[part], prefix=reuse))
            scores.append(torch.cat(row_scores, dim=1))
    if not scores:
        return torch.zeros(0, len(range(*steps.indices(setup.batch.num_steps))))
    result = torch.cat(scores)
    if order is not None:
        result = result[torch.argsort(order)]
    return result


MIN_SAVED_POSITIONS = 1 / 4
"""Prefix reuse runs when it spares at least this share of the rows' positions. Its costs: each row's copy of
the cache in the per-call budget (SmolLM2, 40 steps: 1 row per call instead of 2) and, without a clean row
among the rows, one pass over the clean batch. Measured on SmolLM2 (one CPU thread): sparing 10% of the
positions (prompt-only attribution after a 13-token prompt) took the same CPU time as full forwards; random
masks (LIME, KernelSHAP, Sobol) perturb early positions and spare less."""
WASTED_POSITIONS = 1 / 8
"""With prefix reuse a call runs from its rows' earliest first perturbed position; rows perturbed later
compute some positions again. A chunk is cut where those would exceed this share of the call's positions:
fewer, larger calls (a call reads every weight once, which small calls pay again and again) against
positions computed twice. Measured on SmolLM2 (one CPU thread, 20 steps), one call per first position cost
more time than no reuse at all."""


def _start_groups(parts: Iterator[slice], first: list[int], length: int) -> list[slice]:
    """``parts`` (chunks of rows sorted by their first perturbed position ``first``, in sequences of
    ``length`` positions) cut so that no call computes more than `WASTED_POSITIONS` of its positions for
    rows perturbed after its start.

    Example:
        >>> _start_groups(iter([slice(0, 4), slice(4, 5)]), [0, 1, 2, 9, 9], 10)
        [slice(0, 3, None), slice(3, 4, None), slice(4, 5, None)]
    """
    groups = []
    for part in parts:
        begin, wasted = part.start, 0
        for i in range(part.start + 1, part.stop):
            extra = first[i] - first[begin]
            if (wasted + extra) > WASTED_POSITIONS * (i + 1 - begin) * (length - first[begin]):
                groups.append(slice(begin, i))
                begin, wasted = i, 0
            else:
                wasted += extra
        groups.append(slice(begin, part.stop))
    return groups


def clean_scores(setup: PerturbationSetup) -> Float[Tensor, "batch steps"]:
    """Every step's score on the unperturbed batch (one row per example)."""
    rows = torch.arange(setup.batch.size, device=setup.batch.target_ids.device)
    return run_rows(setup, rows, full_gates(setup, rows, torch.ones(setup.batch.size, 0, device=rows.device)))


@dataclass
class StepPrefix:
    """Step ``column`` of example ``b`` on its own prefix: a function of the gates of the features it sees."""

    setup: PerturbationSetup
    b: int
    column: int

    @property
    def num_visible(self) -> int:
        return int(self.setup.features.visible[self.b, self.column])

    @property
    def num_source(self) -> int:
        return self.setup.features.num_source[self.b]

    def __call__(self, gates: Float[Tensor, "n visible"]) -> Float[Tensor, " n"]:
        setup = self.setup
        steps = slice(self.column, self.column + 1)
        prefix_len = int(setup.batch.step_positions[self.column])
        scores = []
        for rows_part in score_chunks(setup, steps).row_slices(gates.shape[0]):
            part = gates[rows_part].float()
            rows = torch.full(
                (part.shape[0],), self.b, dtype=torch.long, device=setup.batch.target_ids.device
            )
            source, target = perturbed_embeddings(setup, rows, full_gates(setup, rows, part))
            scores.append(setup.objective(source, target[:, :prefix_len], steps, rows)[:, 0])
        return torch.cat(scores)


def stepwise_feature_scores(
    setup: PerturbationSetup, explain_step: Callable[[StepPrefix], Float[Tensor, " visible"]]
) -> Float[Tensor, "batch features steps"]:
    """The reference loop: ``explain_step`` run on each real step's prefix, one score per visible feature."""
    batch, features = setup.batch, setup.features
    dtype = output_dtype(setup.inputs.target_embeds.dtype)
    scores = torch.zeros(batch.size, max(features.max_features, 1), batch.num_steps, dtype=dtype)
    with torch.no_grad():
        for b in range(batch.size):
            for column in range(batch.num_steps):
                step = StepPrefix(setup, b, column)
                if bool(batch.step_mask[b, column]) and step.num_visible > 0:
                    scores[b, : step.num_visible, column] = explain_step(step).detach().to(dtype).cpu()
    return scores


def visible_features(setup: PerturbationSetup) -> Int[Tensor, "batch steps"]:
    return setup.features.visible.cpu()


def feature_output(setup: PerturbationSetup, scores: Float[Tensor, "batch features steps"]) -> MethodOutput:
    """Per-token attributions from per-feature scores: each token carries its feature's score (0 if none).

    Scores of features a step cannot see are zeroed (their tokens are NaN in the final output anyway).
    """
    features, inputs = setup.features, setup.inputs
    # The model's precision (float64 stays float64), unless the method computed its scores in float32 (LIME).
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)).cpu()
    feature_index = torch.arange(scores.shape[1])[None, :, None]
    scores = scores.masked_fill(feature_index >= visible_features(setup)[:, None, :], 0.0)

    def to_tokens(feature_of: Tensor) -> Tensor:
        index = feature_of.cpu()
        per_token = scores.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, scores.shape[2]))
        return per_token.masked_fill((index < 0)[..., None], 0.0)

    source = to_tokens(features.source) if inputs.attribute_source and features.source is not None else None
    target = to_tokens(features.target) if inputs.attribute_target else None
    info = dict(setup.info)
    examples = [{"features": spans} for spans in features.spans]
    return MethodOutput(source, target, info=info, example_info=examples)
