"""The engine: turns a batch into every step's objective, runs a method fused or stepwise, assembles outputs.

The central object is `StepObjective`: a function from input embeddings to the attributed score of every
explained step. Teacher forcing makes the target side causal, so one forward pass over a whole sequence gives
the logits of every step; methods evaluate the objective on perturbed, interpolated or noised embeddings once
for all steps (fused) or once per step on the step's prefix (stepwise reference).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from seqattr.contrast import ContrastBatch, contextless_contrasts, encode_contrasts
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.methods.base import (
    AttributionMethod,
    CleanLogits,
    MethodInputs,
    MethodOutput,
    describe_options,
    get_method_class,
    output_dtype,
)
from seqattr.methods.convergence import describe_failures, warn_if_not_converged
from seqattr.models.batch import AttributionBatch, EncodedExample
from seqattr.models.model_state import left_as_found
from seqattr.progress import PassProgress
from seqattr.qoi import QuantityOfInterest, quantities_in, recording
from seqattr.request import AttributionRequest
from seqattr.segments import annotate, forced_replies
from seqattr.step_functions import (
    StepFunction,
    StepFunctionArgs,
    dropout_active,
    get_step_function,
    kl_divergence,
    step_function_name,
)
from seqattr.trace import CONTEXT_RELIANCE, BatchTrace
from seqattr.typing import Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.family import ModelFamily
    from seqattr.models.prefix_reuse import PrefixReuse


class StepObjective:
    """Every explained step's attributed score as a function of the input embeddings.

    Called with ``n`` rows of embeddings (``n`` a multiple of the batch size: copies stacked block-wise, or
    any order given by ``rows``, the batch example of each row). ``target_embeds`` may be truncated to the
    longest prefix the selected ``steps`` need.

    Example:
        >>> scores = objective(source_embeds, target_embeds)        # [n, steps]  # doctest: +SKIP
        >>> first = objective(None, target_embeds[:, :p], slice(0, 1))  # step 0 alone  # doctest: +SKIP
    """

    def __init__(
        self,
        model: AttributionModel,
        batch: AttributionBatch,
        step_function: StepFunction,
        contrast: ContrastBatch | None = None,
        progress: PassProgress | None = None,
    ) -> None:
        self.model = model
        self.batch = batch
        self.step_function = step_function
        self.contrast = contrast
        self.progress = progress
        """Advanced by one at every evaluation (one forward pass); methods may announce theirs with
        `seqattr.progress.expect_passes`."""
        self.clean_logits: CleanLogits | None = None
        """Set by a method (`CleanLogits.kept_by`) around calls on the clean embeddings: their logits are
        recorded for the step scores and the trace."""
        self.quantities = quantities_in([step_function])
        """The step function when it is a quantity of interest: its activations are recorded in each pass."""

    def rows_for(self, n: int) -> Int[Tensor, " n"]:
        if n % self.batch.size:
            raise ValueError(f"{n} rows are not copies of a batch of {self.batch.size}; pass rows=")
        return torch.arange(n, device=self.batch.target_ids.device) % self.batch.size

    def __call__(
        self,
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        steps: slice = slice(None),
        rows: Int[Tensor, " n"] | None = None,
        prefix: PrefixReuse | None = None,
    ) -> Float[Tensor, "n steps"]:
        """``prefix``: the clean batch's cache, from which the pass over perturbed rows starts where they
        first differ from the clean sequence (`seqattr.models.prefix_reuse`; same scores, fewer positions)."""
        if rows is None:
            rows = self.rows_for(target_embeds.shape[0])
        args = step_function_args(
            self.model,
            self.batch,
            rows,
            source_embeds,
            target_embeds,
            steps,
            self.contrast,
            self.quantities,
            prefix=prefix,
        )
        scores = self.step_function(args)
        if self.clean_logits is not None:
            self.clean_logits.add(rows, steps, args.logits)
        if self.progress is not None:
            self.progress.advance()
        tracked = any(x is not None and x.requires_grad for x in (source_embeds, target_embeds))
        if tracked and torch.is_grad_enabled() and not scores.requires_grad:
            raise ValueError(
                "the attributed step function is not differentiable (e.g. rank, top_p_size), so gradient "
                "methods cannot attribute it; use a differentiable one (probability, logprob, "
                "contrast_prob_diff, ...) or a perturbation method"
            )
        return scores


def step_function_args(
    model: AttributionModel,
    batch: AttributionBatch,
    rows: Int[Tensor, " n"],
    source_embeds: Float[Tensor, "n source_len hidden"] | None,
    target_embeds: Float[Tensor, "n prefix_len hidden"],
    steps: slice,
    contrast: ContrastBatch | None,
    quantities: list[QuantityOfInterest] | tuple = (),
    logits: Float[Tensor, "n steps vocab"] | None = None,
    prefix: PrefixReuse | None = None,
) -> StepFunctionArgs:
    """One forward pass's logits for the selected steps, the contrast pass (run on first use) and a rerun;
    the activations that ``quantities`` (of interest, `seqattr.qoi`) read are recorded in that pass. With
    ``logits`` already computed (`CleanLogits`) and no quantity to record, no pass runs. With ``prefix``
    (decoder-only rows, nothing to record) the pass starts after the rows' clean prefix; a dropout rerun
    runs the whole sequence."""
    positions = batch.step_positions[steps]
    if quantities and model.family.task != "generation":
        raise ValueError(
            f"quantities of interest ({', '.join(map(repr, quantities))}) read a generative model's "
            f"internals at each step's position; a {model.family.task} model has no such positions: "
            "attribute one of its step functions (e.g. 'probability')"
        )

    def forward(dropout: bool = False) -> Float[Tensor, "n steps vocab"]:
        if prefix is not None and not dropout and not quantities and source_embeds is None:
            return prefix.step_logits(rows, target_embeds, steps)
        with dropout_active(model.model) if dropout else contextlib.nullcontext():
            return model.step_logits(batch, rows, source_embeds, target_embeds, positions)

    contrast_ids = contrast_forward = contrast_positions = None
    contrast_activations: dict = {}
    if contrast is not None:
        contrast_ids = contrast.step_target_ids[rows][:, steps]
        contrast_positions = contrast.step_positions[rows][:, steps]

        def contrast_forward() -> Float[Tensor, "n steps vocab"]:
            with recording(model.model, quantities) as recorded:  # for contrastive quantities of interest
                logits = contrast.step_logits(model, rows, source_embeds, target_embeds, steps)
            contrast_activations.update(recorded)
            return logits

    activations: dict = {}
    if logits is None or quantities:
        with recording(model.model, quantities) as activations:
            logits = forward()
    return StepFunctionArgs(
        logits=logits,
        target_ids=batch.step_target_ids[rows][:, steps],
        activations=activations,
        positions=positions,
        contrast_target_ids=contrast_ids,
        contrast_forward=contrast_forward,
        contrast_activations=contrast_activations,
        contrast_positions=contrast_positions,
        forward=forward,
        multi_label=model.family.multi_label,
    )


@dataclass
class StepScoring:
    """A batch's step scores (``[batch, steps]`` each) and its generation trace, from one no-grad pass."""

    scores: dict[str, Float[Tensor, "batch steps"]]
    trace: BatchTrace


def compute_step_scores(
    model: AttributionModel,
    batch: AttributionBatch,
    step_functions: dict[str, StepFunction],
    trace_top_k: int,
    contrast: ContrastBatch | None = None,
    logits: Float[Tensor, "batch steps vocab"] | None = None,
    context: ContrastBatch | None = None,
) -> StepScoring:
    """All requested step scores and the trace from one forward pass over the batch (no gradients), or from
    the clean ``logits`` a method's own passes computed (`CleanLogits`: then no pass); step functions that
    read the contrast share one more pass over the contrast sequences. With ``context`` (the prompts without
    their context parts, `seqattr.contrast.contextless_contrasts`), one more pass over those gives each
    step's context reliance: KL(with || without context), a step score and a column of the trace."""
    with torch.no_grad():
        source, target = model.embed_batch(batch)
        rows = torch.arange(batch.size, device=batch.target_ids.device)
        quantities = quantities_in(step_functions.values())
        args = step_function_args(
            model, batch, rows, source, target, slice(None), contrast, quantities, logits
        )
        scores = {name: stored(fn(args)) for name, fn in step_functions.items()}
        trace = BatchTrace.from_logits(args.logits, args.target_ids, trace_top_k, args.multi_label)
        if context is not None:  # the same logits against the contextless prompts' (one batched pass)
            without = step_function_args(
                model, batch, rows, source, target, slice(None), context, (), args.logits
            )
            scores[CONTEXT_RELIANCE] = trace.context_reliance = stored(kl_divergence(without))
        return StepScoring(scores, trace)


def run_batch(
    model: AttributionModel,
    method: AttributionMethod,
    options,
    batch: AttributionBatch,
    attributed_fn: str | StepFunction,
    attribute_target: bool | None,
    fused: bool,
    contrast: ContrastBatch | None = None,
    progress: PassProgress | None = None,
) -> MethodOutput:
    source_embeds, target_embeds = model.embed_batch(batch)
    prompt_only = model.family.prompt_only(attribute_target)
    inputs = MethodInputs(
        batch=batch,
        objective=StepObjective(model, batch, get_step_function(attributed_fn), contrast, progress),
        source_embeds=source_embeds,
        target_embeds=target_embeds,
        attribute_source=model.family.attributes_source(),
        attribute_target=model.family.attributes_target(attribute_target),
        held_target=batch.generated_prefix() if prompt_only else None,
    )
    # Nothing a method or transformers attaches for this batch stays on the model (hooks, attention).
    with left_as_found(model.model):
        if fused:
            return method.attribute_fused(inputs, options)
        return method.attribute_stepwise(inputs, options)


def stored(values: Tensor) -> Tensor:
    """``values`` as an output holds them, on the CPU: float64 stays float64 (a float64 model's attributions
    keep their precision), anything else becomes float32 (which holds float16 and bfloat16 exactly).

    Example:
        >>> [stored(torch.zeros(1, dtype=d)).dtype for d in (torch.float64, torch.bfloat16, torch.int64)]
        [torch.float64, torch.float32, torch.float32]
    """
    values = values.detach().cpu()
    return values.to(output_dtype(values.dtype))


def _nan_where_hidden(values: Tensor, visible: torch.Tensor) -> Tensor:
    """NaN where ``visible`` ([positions, steps]) is False, whatever extra dimensions ``values`` has."""
    values = stored(values).clone()
    mask = visible.cpu().reshape(*visible.shape, *([1] * (values.dim() - 2)))
    return values.masked_fill_(~mask, float("nan"))


def example_interactions(
    family: ModelFamily,
    output: MethodOutput,
    i: int,
    example: EncodedExample,
    target_rows: slice,
    visible_target: torch.Tensor,
    num_steps: int,
) -> Tensor:
    """Example ``i``'s interactions ``[features, features, steps]`` cut from the padded batch's: its source
    positions then its target positions (the attributed sides), NaN where a step cannot see either token."""
    parts, visible = [], []
    source_count = 0
    if output.source_attributions is not None:
        source_count = output.source_attributions.shape[1]
        parts.append(torch.arange(len(example.source_ids)))
        visible.append(family.source_visibility(example.attr_pos_start, len(example.source_ids), num_steps))
    if output.target_attributions is not None:
        parts.append(source_count + torch.arange(target_rows.start, target_rows.stop))
        visible.append(visible_target[i, target_rows, :num_steps].cpu())
    index, seen = torch.cat(parts).to(output.interactions.device), torch.cat(visible)
    values = stored(output.interactions[i][index][:, index][..., :num_steps]).clone()
    return values.masked_fill(~(seen[:, None] & seen[None, :]), float("nan"))


def assemble(
    model: AttributionModel,
    batch: AttributionBatch,
    output: MethodOutput,
    step_scores: dict[str, Tensor],
    trace: BatchTrace | None = None,
    prompt_only: bool = False,
) -> list[SequenceAttribution]:
    """Slice a batch's padded results into one `SequenceAttribution` per example; with ``prompt_only`` the
    generated prefix's rows are NaN (held at its tokens, not attributed)."""
    visible_target = batch.visible_target()
    if prompt_only:
        visible_target = visible_target & ~batch.generated_prefix()[:, :, None]
    sequences = []
    for i, example in enumerate(batch.examples):
        num_steps = example.attr_pos_end - example.attr_pos_start
        offset = int(batch.target_offsets[i])
        target_rows = slice(offset, offset + len(example.target_ids))
        source_attributions = target_attributions = None
        if output.source_attributions is not None:
            source = output.source_attributions[i, : len(example.source_ids), :num_steps]
            visible = model.family.source_visibility(
                example.attr_pos_start, len(example.source_ids), num_steps
            )
            source_attributions = _nan_where_hidden(source, visible)
        if output.target_attributions is not None:
            target = output.target_attributions[i, target_rows, :num_steps]
            target_attributions = _nan_where_hidden(target, visible_target[i, target_rows, :num_steps])
        scores = {**step_scores, **output.step_scores}
        interactions = None
        if output.interactions is not None:
            interactions = example_interactions(
                model.family, output, i, example, target_rows, visible_target, num_steps
            )
        sequences.append(
            SequenceAttribution(
                source=model.convert_ids_to_tokens(example.source_ids),
                target=model.target_tokens(example.target_ids, example.source_ids),
                source_ids=list(example.source_ids),
                target_ids=list(example.target_ids),
                source_attributions=source_attributions,
                target_attributions=target_attributions,
                step_scores={name: stored(s[i, :num_steps]) for name, s in scores.items()},
                attr_pos_start=example.attr_pos_start,
                attr_pos_end=example.attr_pos_end,
                trace=None
                if trace is None
                else trace.example(
                    i, num_steps, functools.partial(model.step_tokens, source_ids=example.source_ids)
                ),
                # Perturbation features: each token of one carries the feature's score (for aggregation).
                features=(output.example_info[i].get("features") if output.example_info else None),
                interactions=interactions,
            )
        )
    return sequences


def attribute(model: AttributionModel, request: AttributionRequest) -> AttributionOutput:
    """Run ``request`` on ``model``: generate or take the forced targets, attribute every batch, record info.

    Example:
        >>> from seqattr.request import AttributionRequest
        >>> out = attribute(model, AttributionRequest("Hello", generation_args={"max_new_tokens": 2}))
        >>> out[0].num_steps, out.info["method"]
        (2, 'saliency')
    """
    started = time.perf_counter()
    checkpointed_before = model.checkpointed_block_calls
    layouts = request.prompts
    forced = request.generated_texts
    if layouts is not None and forced is not None and model.family.prompt_side == "target":
        forced = forced_replies(layouts, forced)  # an encoder-decoder's forced texts are its targets
    encoded = model.encode(
        request.input_texts, forced, request.generate_args, request.max_batch_size, layouts
    )
    generated_at = time.perf_counter()
    examples = [
        EncodedExample(
            source,
            target,
            *request.window(i, len(target), default_start),
            default_start,
            layout=None if layouts is None else layouts[i],
        )
        for i, (source, target, default_start) in enumerate(encoded)
    ]
    contexts = None
    if layouts is not None and layouts[0].contextless_ids is not None:  # attribute(context_parts=...)
        contexts = contextless_contrasts(model, encoded, examples)
    contrasts = None
    if request.has_contrast:
        contrasts = encode_contrasts(
            model,
            request.input_texts,
            encoded,
            examples,
            request.contrast_targets,
            request.contrast_sources,
            request.contrast_targets_alignments,
        )

    method = get_method_class(request.method)(model)
    sequences: list[SequenceAttribution] = []
    method_info: dict[str, Any] = {}
    example_info: list[dict[str, Any]] = []
    unconverged: list[str] = []
    batches = model.family.batch_spans(examples, request.max_batch_size)
    progress = PassProgress(request.method, len(batches), enabled=request.show_progress)
    with progress:
        for start, stop in batches:
            progress.next_batch()
            batch = AttributionBatch.from_examples(
                examples[start:stop], model.pad_token_id, model.family, model.device
            )
            contrast = context = None
            if contrasts is not None:
                contrast = ContrastBatch.from_examples(model, batch, contrasts[start:stop])
            if contexts is not None:
                context = ContrastBatch.from_examples(model, batch, contexts[start:stop])
            # Scores first (a step function that cannot run fails fast), unless the method's own passes
            # give the clean logits (`CleanLogits`): then they serve the scores and the trace, no extra pass.
            # Not with a contrast (or a context): its no-grad pass must meet logits from the same kind of pass
            # (a gradient pass may pick other attention kernels, 1e-5 apart on T5), so that target ==
            # contrast gives 0.
            scoring = None
            if not (request.fused and method.keeps_clean_logits and contrast is None and context is None):
                scoring = compute_step_scores(
                    model, batch, request.step_functions, request.trace_top_k, contrast, context=context
                )
            result = run_batch(
                model,
                method,
                request.options,
                batch,
                request.attributed,
                request.attribute_target,
                request.fused,
                contrast,
                progress,
            )
            if scoring is None:
                scoring = compute_step_scores(
                    model, batch, request.step_functions, request.trace_top_k, contrast, result.step_logits
                )
            if result.completeness is not None:
                tokens = [
                    model.step_tokens(row, e.source_ids)
                    for row, e in zip(batch.step_target_ids.tolist(), batch.examples, strict=True)
                ]
                unconverged += describe_failures(result.completeness, batch.step_mask, tokens, start)
            method_info.update(result.info)
            example_info += result.example_info or [{} for _ in batch.examples]
            sequences += assemble(
                model,
                batch,
                result,
                scoring.scores,
                scoring.trace,
                prompt_only=model.family.prompt_only(request.attribute_target),
            )
    if layouts is not None:  # roles, masked scaffolding and the prompts' parts as rows
        sequences = [
            annotate(seq, layout, request.part_granularity, source=model.family.prompt_side == "source")
            for seq, layout in zip(sequences, layouts, strict=True)
        ]
    finished = time.perf_counter()
    warn_if_not_converged(request.method, unconverged, getattr(request.options, "n_steps", None))

    info = run_info(model, request)
    # Whether a long sequence's graph went over the memory budget: docs/methods_gradient.md, "Long sequences".
    info["checkpointed_block_calls"] = model.checkpointed_block_calls - checkpointed_before
    segments = [model.segments(text) for text in request.input_texts]
    if any(s is not None for s in segments):  # pairs of texts: where each example's two texts lie
        info["segments"] = segments
    if layouts is not None:
        info["prompts"] = [layout.describe() for layout in layouts]
        if contexts is not None:  # each prompt's contextless ids are in its info["prompts"] entry
            info["context_reliance"] = {
                "metric": "kl_divergence",
                "context_parts": list(layouts[0].context_parts),
            }
        info["include_template"] = request.include_template
        if request.part_granularity is not None:
            info["part_granularity"] = request.part_granularity
            # The rows are the prompt's parts, as aggregate() would merge them: views and evaluate() say so.
            info["aggregations"] = [f"aggregate({request.part_granularity})"]
    if contrasts is not None:
        info["contrast"] = {
            "contrast_targets": request.contrast_targets,
            "contrast_sources": request.contrast_sources,
            "alignments": [[list(pair) for pair in c.alignment] for c in contrasts],
        }
    if info.get("prompt_only"):  # which target tokens each example's prompt was (evaluation holds the rest)
        info["prompt_lengths"] = [e.prompt_len for e in examples]
    if any(example_info):
        method_info["examples"] = example_info
    if method_info:
        info["method_info"] = method_info
    info["timing"] = {
        "total_s": finished - started,
        "generation_s": generated_at - started,
        "attribution_s": finished - generated_at,
    }
    return AttributionOutput(sequences, info)


def run_info(model: AttributionModel, request: AttributionRequest) -> dict[str, Any]:
    """The output's ``info``: what ran, on what, with which versions.

    Example:
        >>> from seqattr.request import AttributionRequest
        >>> run_info(model, AttributionRequest("Hi", step_scores="entropy"))["step_scores"]
        ['entropy']
    """
    import captum
    import transformers

    from seqattr.version import __version__

    forced = request.generated_texts is not None
    return {
        "method": request.method,
        "method_options": describe_options(request.options, model.model),
        "unitless_scores": get_method_class(request.method).unitless,
        "engine": "fused" if request.fused else "stepwise",
        "attributed_fn": step_function_name(request.attributed_fn or "probability"),
        "step_scores": request.step_score_names,
        "attribute_target": request.attribute_target,
        # attribute_target=False on a decoder-only model: the generated prefix is held, its rows are NaN.
        **({"prompt_only": True} if model.family.prompt_only(request.attribute_target) else {}),
        "batch_size": request.max_batch_size,
        "forced_targets": forced,
        # The arguments generate() ran with (the default length included); none ran for forced targets.
        "generation_args": dict(request.generation_args) if forced else request.generate_args,
        "step_scores_args": dict(request.step_scores_args),
        "attributed_fn_args": dict(request.attributed_fn_args),
        "model": model.model_name,
        "model_class": type(model.model).__name__,
        "is_encoder_decoder": model.is_encoder_decoder,
        "task": model.family.task,
        **({"multi_label": True} if model.family.multi_label else {}),
        # Lets views and aggregation mask special tokens later (out.mask_special()) without the tokenizer.
        "special_token_ids": sorted(model.tokenizer.all_special_ids),
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "versions": {
            "seqattr": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "captum": captum.__version__,
        },
    }
