"""Shared machinery of gradient methods: every step's gradient from one forward pass; the Captum reference.

Fused path: the target side is causal, so one forward pass over a whole (possibly interpolated
or noised) sequence yields the score of every step; one batched backward (``is_grads_batched``: a vmap over
the step dimension) then gives each step's gradient. Steps are processed in chunks, each forward truncated to
the longest prefix its steps need, which bounds memory (a chunk's raw gradients are
``[steps, n, positions, hidden]``) and avoids paying for positions no step in the chunk can see. Hidden
dimensions are reduced chunk by chunk unless the user keeps them (``hidden_reduction=None``).

Stepwise path: Captum's own attribution class is run on each step's prefix: an independent implementation
that the tests hold the fused path to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from seqattr import step_functions
from seqattr.methods.base import AttributionMethod, CleanLogits, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.options import MethodOptions
from seqattr.reductions import HIDDEN_REDUCTIONS, get_reduction
from seqattr.typing import Float, Int, Tensor

# Step chunks (measured with `benchmarks/run.py --chunk-sweep`, docs/benchmarks.md): batching steps into one
# backward fills the matrix products and shares the forward pass, but the chunk's early steps pay for its
# longest prefix and the batched backward's tensors grow with the chunk. 4-8 steps were fastest for saliency
# (1 row per step) and integrated gradients (50 rows) on GPT-2-small and SmolLM2; larger chunks were slower
# and took up to 4x the memory.
MAX_STEP_CHUNK = 8
CHUNK_BYTES = 16 * 2**20
"""Memory per chunk for the batched backward's largest tensors: the input gradients ``[steps, n, positions,
hidden]`` and the seeds' gradients at the output head, ``[steps, n, steps, vocab]`` (every step's seed flows
through every step's logits; with a 49k vocabulary that term dominates), or ``[steps, n, steps, hidden]``
where the head is cut (`HeadCut`)."""
PER_STEP_FUNCTIONS = (
    step_functions.probability,
    step_functions.logprob,
    step_functions.logit,
    step_functions.crossentropy,
    step_functions.perplexity,
    step_functions.entropy,
)
"""Step functions whose score at a step reads only that step's logits (and target id): `HeadCut` applies."""


def reduce_hidden(values: Float[Tensor, "*dims hidden"], how: str | None) -> Tensor:
    """Reduce the last (hidden) dimension with one of `HIDDEN_REDUCTIONS` (``seqattr.reductions``): signed
    ``sum``, ``l2`` norm, ``mean``, ``absmax`` (the signed value of largest magnitude), or None to keep it."""
    if how not in HIDDEN_REDUCTIONS:
        raise ValueError(
            f"unknown hidden_reduction {how!r}; valid: {', '.join(map(repr, HIDDEN_REDUCTIONS))}"
        )
    return values if how is None else get_reduction(how)(values, -1)


@dataclass
class GradientOptions(MethodOptions):
    """Options shared by gradient methods."""

    hidden_reduction: str | None = "sum"
    """How the hidden dimension is reduced while steps are computed (sum, l2, mean, absmax, None = keep)."""

    def validate(self) -> None:
        super().validate()
        if self.hidden_reduction not in HIDDEN_REDUCTIONS:
            raise ValueError(
                f"unknown hidden_reduction {self.hidden_reduction!r}; "
                f"valid: {', '.join(map(repr, HIDDEN_REDUCTIONS))}"
            )

    def reduce(self, values: Float[Tensor, "*dims hidden"]) -> Tensor:
        """``values`` with the hidden dimension reduced as these options say (see `reduce_hidden`)."""
        return reduce_hidden(values, self.hidden_reduction)


@dataclass
class StepGradients:
    """Gradients of the scores of a chunk of steps, for ``n`` evaluation points."""

    scores: Float[Tensor, "n steps"]
    source: Float[Tensor, "steps n source_len hidden"] | None
    target: Float[Tensor, "steps n prefix_len hidden"] | None
    """Only the prefix the chunk's steps can see; later positions have zero gradient."""


def vocab_size(inputs: MethodInputs) -> int:
    """Rows of the model's output head (0 for objectives that are no language model, e.g. analytic tests)."""
    model = getattr(inputs.objective, "model", None)
    head = model.model.get_output_embeddings() if model is not None else None
    return head.weight.shape[0] if head is not None else 0


def step_chunks(inputs: MethodInputs, n_points: int, head_cut: bool = True) -> Iterator[slice]:
    """Slices of at most ``MAX_STEP_CHUNK`` steps whose batched backward stays within ``CHUNK_BYTES``.
    ``head_cut=False``: the method's backward runs through the output head even where `HeadCut` applies."""
    batch = inputs.batch
    hidden = inputs.target_embeds.shape[-1]
    positions = batch.target_ids.shape[1] + (batch.source_ids.shape[1] if batch.source_ids is not None else 0)
    seed = hidden if head_cut and HeadCut.applies(inputs.objective) else vocab_size(inputs)
    element = inputs.target_embeds.element_size()
    size = MAX_STEP_CHUNK
    while size > 1 and size * n_points * (positions * hidden + size * seed) * element > CHUNK_BYTES:
        size -= 1
    for start in range(0, batch.num_steps, size):
        yield slice(start, min(start + size, batch.num_steps))


def step_gradients(
    inputs: MethodInputs,
    source_points: Float[Tensor, "n source_len hidden"] | None,
    target_points: Float[Tensor, "n target_len hidden"],
    steps: slice,
    rows: Int[Tensor, " n"] | None = None,
) -> StepGradients:
    """One forward pass at ``n`` points (copies of the batch, block-wise; or of the batch examples ``rows``
    names, one per point), the gradient of each step's score.

    Example:
        >>> points = inputs.target_embeds  # doctest: +SKIP
        >>> chunk = step_gradients(inputs, inputs.source_embeds, points, slice(0, 4))  # doctest: +SKIP
        >>> chunk.target.shape   # [4 steps, batch, prefix_len, hidden]  # doctest: +SKIP
    """
    prefix_len = int(inputs.batch.step_positions[steps].max())
    source = None
    if source_points is not None:
        source = source_points.detach().requires_grad_(inputs.attribute_source)
    target = target_points[:, :prefix_len].detach().requires_grad_(inputs.attribute_target)
    wrt = [
        x
        for x, attributed in ((source, inputs.attribute_source), (target, inputs.attribute_target))
        if attributed
    ]
    with torch.enable_grad(), HeadCut.around(inputs.objective) as cut:
        scores = inputs.objective(source, target, steps, **({} if rows is None else {"rows": rows}))
        grads = list(cut.backward(scores, wrt))
    return StepGradients(
        scores=scores.detach(),
        source=grads.pop(0) if inputs.attribute_source else None,
        target=grads.pop(0) if inputs.attribute_target else None,
    )


def batched_step_backward(scores: Float[Tensor, "n steps"], wrt: list[Tensor]) -> tuple[Tensor, ...]:
    """The gradient of each step's score (summed over the ``n`` rows) w.r.t. each tensor of ``wrt``, from one
    batched backward: ``[steps, *tensor.shape]`` per tensor. Rows must not interact (each is its own example).

    The backward runs in the model's dtype; its gradients come back in `output_dtype` (float32 for a float16
    or bfloat16 model), so that what methods build from them (products with the inputs, sums over hidden
    units, path points, noisy copies and baselines) accumulates in float32, not in 8 bits of mantissa.

    Example:
        >>> (grad,) = batched_step_backward(objective(None, points), [points])  # doctest: +SKIP
    """
    num_steps, n = scores.shape[1], scores.shape[0]
    # Row t of the batched backward seeds step t's score of every point.
    seeds = torch.eye(num_steps, dtype=scores.dtype, device=scores.device)[:, None, :].expand(
        num_steps, n, num_steps
    )
    grads = torch.autograd.grad(scores, wrt, seeds, is_grads_batched=True)
    return tuple(g.to(output_dtype(g.dtype)) for g in grads)


class HeadCut:
    """The batched backward started below the output head, where each step's score reads only its own logits.

    Seeded at the scores, the batched backward carries ``[steps, n, steps, vocab]`` gradients through the
    logits: every step's seed through every step's logits, mostly zeros, and with a 49k vocabulary the largest
    tensor of a chunk (SmolLM2 then fits one step per chunk, and each step pays its own forward pass). The
    head's input is cut instead (a detached leaf, `around`): one plain backward from the scores gives every
    step's gradient at its own head input (rows are independent examples and steps read disjoint logits, so
    the sum's gradient is each score's own), and the batched backward starts from the head's input with
    seeds ``[steps, n, steps, hidden]``. Same gradients, a fraction of the memory, more steps per forward.

    Applies to a language model's `StepObjective` whose head runs only at the explained steps
    (``logits_to_keep``), with a step function of `PER_STEP_FUNCTIONS`, no contrast and no quantity of
    interest; elsewhere nothing is cut and `backward` is `batched_step_backward`. A cut whose head input is
    not one row per step (a head run otherwise) still gives the same gradients, with every step's seed
    carried through the head first.

    Example:
        >>> with torch.enable_grad(), HeadCut.around(objective) as cut:  # doctest: +SKIP
        ...     grads = cut.backward(objective(None, points), [points])
    """

    def __init__(self) -> None:
        self.cuts: list[tuple[Tensor, Tensor]] = []
        """(head input, its detached leaf) for each call of the head."""

    @staticmethod
    def applies(objective: Any) -> bool:
        model = getattr(objective, "model", None)
        function = getattr(objective, "step_function", None)
        return (
            model is not None
            and model.family.generates
            and model.has_logits_to_keep
            and getattr(objective, "contrast", None) is None
            and not getattr(objective, "quantities", ())
            and getattr(function, "func", function) in PER_STEP_FUNCTIONS
            and not getattr(function, "keywords", None)
        )

    @classmethod
    @contextlib.contextmanager
    def around(cls, objective: Any) -> Iterator[HeadCut]:
        """Cut the output head's input while the block runs (when `applies`)."""
        if not cls.applies(objective):
            yield cls()
            return
        with cls.at(objective.model.model.get_output_embeddings()) as cut:
            yield cut

    @classmethod
    @contextlib.contextmanager
    def at(cls, head: torch.nn.Module) -> Iterator[HeadCut]:
        """Cut ``head``'s input while the block runs: each call records its input and runs on a detached
        leaf instead."""
        cut = cls()

        def detach(module, args):
            (hidden, *rest) = args
            leaf = hidden.detach().requires_grad_()
            cut.cuts.append((hidden, leaf))
            return (leaf, *rest)

        handle = head.register_forward_pre_hook(detach)
        try:
            yield cut
        finally:
            handle.remove()

    def backward(self, scores: Float[Tensor, "n steps"], wrt: list[Tensor]) -> tuple[Tensor, ...]:
        """`batched_step_backward`'s gradients, continued through the cut. When the head ran once, one head
        input per step, each step's seed there is the plain backward's; otherwise every step's seed is
        carried through the head first, as without the cut (the scores hang off the leaves)."""
        if not self.cuts:
            return batched_step_backward(scores, wrt)
        hiddens, leaves = zip(*self.cuts, strict=True)
        num_steps = scores.shape[1]
        eye = torch.eye(num_steps, dtype=scores.dtype, device=scores.device)
        if len(leaves) == 1 and leaves[0].shape[:2] == scores.shape:
            (own,) = torch.autograd.grad(scores.sum(), leaves)  # [n, steps, hidden]: each step's at its input
            seeds = (eye[:, None, :, None] * own,)
        else:
            rows = eye[:, None, :].expand(num_steps, scores.shape[0], num_steps)
            seeds = torch.autograd.grad(scores, leaves, rows, is_grads_batched=True)
        grads = torch.autograd.grad(hiddens, wrt, seeds, is_grads_batched=True)
        return tuple(g.to(output_dtype(g.dtype)) for g in grads)


class AttributionWriter:
    """Collects per-chunk results into padded ``[batch, positions, steps, *extra]`` tensors."""

    def __init__(self, inputs: MethodInputs) -> None:
        self.inputs = inputs
        self.source: Tensor | None = None
        self.target: Tensor | None = None
        self.step_scores: dict[str, Tensor] = {}

    def _allocate(self, like: Tensor, positions: int) -> Tensor:
        batch = self.inputs.batch
        extra = like.shape[3:]
        return torch.zeros(
            batch.size, positions, batch.num_steps, *extra, dtype=like.dtype, device=like.device
        )

    def write(self, steps: slice, source: Tensor | None, target: Tensor | None) -> None:
        """Source ``[steps, batch, source_len, ...]``, target ``[steps, batch, prefix_len, ...]``."""
        if source is not None:
            if self.source is None:
                self.source = self._allocate(source, source.shape[2])
            self.source[:, :, steps] = source.movedim(0, 2)
        if target is not None:
            if self.target is None:
                self.target = self._allocate(target, self.inputs.batch.target_ids.shape[1])
            self.target[:, : target.shape[2], steps] = target.movedim(0, 2)

    def write_step_score(self, name: str, steps: slice, values: Float[Tensor, "batch steps"]) -> None:
        if name not in self.step_scores:
            self.step_scores[name] = torch.zeros(
                self.inputs.batch.size, self.inputs.batch.num_steps, dtype=values.dtype
            )
        self.step_scores[name][:, steps] = values.cpu()

    def output(self) -> MethodOutput:
        return MethodOutput(self.source, self.target, self.step_scores)


class PointwiseGradientMethod(AttributionMethod):
    """A gradient method whose attribution at a point needs only the gradient there (and the point).

    A subclass declares `point_attribution` and `captum_method`; this base runs both paths from them: fused,
    every step's gradient from one forward pass and a batched backward; stepwise, Captum's class on each
    step's prefix. A noise tunnel (``methods/noise_tunnel.py``) averages `point_attribution` over noisy
    copies of the inputs.
    """

    unitless = True

    def point_attribution(self, gradient: Tensor, points: Tensor, options) -> Tensor:
        """The raw (per-hidden) attribution from ``gradient`` at ``points`` (same shape)."""
        raise NotImplementedError

    def captum_method(self, forward: Callable[..., Tensor], options) -> tuple[Any, dict[str, Any]]:
        """Captum's class for the same method on ``forward``, and the keyword arguments of ``attribute``."""
        raise NotImplementedError

    def attribute_fused(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        writer = AttributionWriter(inputs)
        clean = CleanLogits(inputs.batch)
        # The forward passes run on the clean embeddings: with the model's own forward (not LRP's rules),
        # their logits serve the step scores and the trace.
        with clean.kept_by(inputs.objective) if self.keeps_clean_logits else contextlib.nullcontext():
            for steps in step_chunks(inputs, n_points=inputs.batch.size):
                self._write_chunk(inputs, options, writer, steps)
        output = writer.output()
        output.step_logits = clean.logits
        return output

    def _write_chunk(
        self, inputs: MethodInputs, options: GradientOptions, writer: AttributionWriter, steps: slice
    ) -> None:
        grads = step_gradients(inputs, inputs.source_embeds, inputs.target_embeds, steps)
        source = target = None
        if grads.source is not None:
            source = options.reduce(self.point_attribution(grads.source, inputs.source_embeds, options))
        if grads.target is not None:
            prefix = inputs.target_embeds[:, : grads.target.shape[2]]
            target = options.reduce(self.point_attribution(grads.target, prefix, options))
        writer.write(steps, source, target)

    def attribute_stepwise(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        def attribute_step(forward, attributed, additional):
            captum, kwargs = self.captum_method(forward, options)
            return captum.attribute(attributed, additional_forward_args=additional, **kwargs)

        return captum_stepwise(inputs, attribute_step, options.reduce)


class CaptumRoles:
    """The source and target embeddings of one Captum call, as the Captum adapters pass them.

    The attributed embeddings are Captum's inputs (each position its own input with ``split_positions``,
    ``[batch, hidden]`` each); the constant ones travel in ``additional_forward_args`` ahead of the adapter's
    own arguments (row indices, ...), so Captum expands them consistently whatever its internal batching.
    `embeds` puts a forward call's arguments back by role; `join` stacks split positions again.
    """

    def __init__(
        self, inputs: MethodInputs, source: Tensor | None, target: Tensor, split_positions: bool = False
    ) -> None:
        roles = [("source", source, inputs.attribute_source), ("target", target, inputs.attribute_target)]
        roles = [(role, embeds, flag) for role, embeds, flag in roles if embeds is not None]
        self.roles = [(role, flag) for role, _, flag in roles]
        attributed = [embeds for _, embeds, flag in roles if flag]
        self.split_positions = split_positions
        self.sizes = [embeds.shape[1] if split_positions else 1 for embeds in attributed]
        parts = [x for e in attributed for x in (e.unbind(1) if split_positions else (e,))]
        self.attributed = tuple(x.detach().requires_grad_() for x in parts)
        self.constant = tuple(embeds for _, embeds, flag in roles if not flag)

    def join(self, values: list) -> list:
        """Per-input values (attributions, arguments) back to one per attributed role."""
        if not self.split_positions:
            return list(values)
        bounds = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        return [torch.stack(values[a:b], dim=1) for a, b in zip(bounds, bounds[1:], strict=False)]

    def embeds(self, args: tuple) -> tuple[dict[str, Tensor], tuple]:
        """``({role: embeddings}, the adapter's own arguments)`` from a forward call's arguments."""
        count, constants = len(self.attributed), len(self.constant)
        attributed, constant = self.join(list(args[:count])), list(args[count : count + constants])
        embeds = {role: (attributed if flag else constant).pop(0) for role, flag in self.roles}
        return embeds, tuple(args[count + constants :])


CaptumStep = Callable[[Callable[..., Tensor], tuple[Tensor, ...], tuple], tuple[Tensor, ...]]
"""``(forward_func, inputs, additional_forward_args) -> attributions`` for one step, e.g. a Captum call."""


def captum_stepwise(
    inputs: MethodInputs,
    attribute_step: CaptumStep,
    reduce: Callable[[Tensor], Tensor],
    *,
    split_positions: bool = False,
) -> MethodOutput:
    """The reference path: ``attribute_step`` (typically a Captum method) run on each step's own prefix.

    The attributed embeddings are Captum's ``inputs``; the constant ones and each row's batch index travel in
    ``additional_forward_args``, so Captum expands them consistently whatever its internal batching.
    ``attribute_step`` returns one attribution per Captum input, or None for an attributed role it gives no
    scores to (a layer method whose layer lies on the other side).

    ``split_positions`` passes every attributed token as its own Captum input (``[batch, hidden]``). Captum
    draws random noise input by input, so a step's prefix then receives exactly the first draws of the whole
    sequence: the fused path of a random method can reproduce them (see ``methods/noise.py``).
    """
    batch, objective = inputs.batch, inputs.objective
    writer = AttributionWriter(inputs)
    rows = torch.arange(batch.size, device=batch.target_ids.device)
    for column in range(batch.num_steps):
        steps = slice(column, column + 1)
        prefix = inputs.target_embeds[:, : int(batch.step_positions[column])]
        packed = CaptumRoles(inputs, inputs.source_embeds, prefix, split_positions)

        def forward(*args: Tensor, _packed=packed, _steps=steps) -> Tensor:
            embeds, (row_ids,) = _packed.embeds(args)
            return objective(embeds.get("source"), embeds["target"], _steps, row_ids)[:, 0]

        with torch.enable_grad():
            results = packed.join(list(attribute_step(forward, packed.attributed, (*packed.constant, rows))))
        source = results.pop(0) if inputs.attribute_source else None
        target = results.pop(0) if inputs.attribute_target else None
        writer.write(steps, *(None if r is None else reduce(r.detach())[None] for r in (source, target)))
    return writer.output()
