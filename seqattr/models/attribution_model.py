"""`AttributionModel`: a Hugging Face generative model with its tokenizer and a bound attribution method.

Conventions (documented once, in docs/usage.md):
- decoder-only: the target is prompt + continuation; ``generated_texts`` must start with the prompt; by
  default
  the continuation's tokens are explained (``attr_pos_start`` = prompt length);
- encoder-decoder: the source is the input text; the target starts with the decoder start token, which is
  never explained (``attr_pos_start`` = 1); ``attribute_target`` adds attributions over the target prefix.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seqattr import engine
from seqattr.contrast import ContrastBatch, encode_contrasts
from seqattr.data.attribution import AttributionOutput
from seqattr.evaluation import DEFAULT_FRACTIONS, EvaluationResult, evaluate
from seqattr.methods.base import AttributionMethod, describe_options, get_method_class
from seqattr.methods.convergence import describe_failures, warn_if_not_converged
from seqattr.methods.options import Seed
from seqattr.models.batch import AttributionBatch, EncodedExample, additive_causal_mask
from seqattr.models.causality import check_causal
from seqattr.models.embedding_scale import input_embedding_scales
from seqattr.models.model_state import left_as_found
from seqattr.progress import PassProgress
from seqattr.step_functions import StepFunction, bind_step_functions, step_function_name
from seqattr.trace import DEFAULT_TOP_K, check_top_k
from seqattr.typing import Float, Int, Tensor

DEFAULT_MAX_NEW_TOKENS = 20


def _as_text_list(texts: str | Sequence[str], argument: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{argument} must be a non-empty string or a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{argument}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{argument}[{i}] is empty; give text for the model to read")
    return list(texts)


def _as_name_list(names: str | StepFunction | Sequence[str | StepFunction], argument: str) -> list:
    """A list of step functions given by name or as callables: a single one (``step_scores="entropy"``) is a
    one-element list, where iterating the string would give its letters."""
    if isinstance(names, str) or callable(names):
        return [names]
    if not isinstance(names, Iterable):
        raise TypeError(
            f"{argument} must be a step function name or a list of them, e.g. ['probability', 'entropy'];"
            f" got {type(names).__name__}"
        )
    return list(names)


def _batch_spans(
    examples: list[EncodedExample], batch_size: int, is_encoder_decoder: bool
) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive examples run together: at most ``batch_size`` each, and for
    encoder-decoder models cut where ``attr_pos_start`` changes (a negative start resolves per example), since
    their decoder positions cannot be shifted to align different first steps (decoder-only ones are)."""
    spans = []
    for start in range(0, len(examples), batch_size):
        stop = min(start + batch_size, len(examples))
        if is_encoder_decoder:
            cuts = [
                i
                for i in range(start + 1, stop)
                if examples[i].attr_pos_start != examples[i - 1].attr_pos_start
            ]
            bounds = [start, *cuts, stop]
            spans += list(zip(bounds[:-1], bounds[1:], strict=True))
        else:
            spans.append((start, stop))
    return spans


class AttributionModel:
    """A generative model ready to explain its outputs; made by `seqattr.load_model`.

    Example:
        >>> model = seqattr.load_model("gpt2", "saliency")               # doctest: +SKIP
        >>> model = seqattr.load_model(hf_model, "saliency", tokenizer=hf_tokenizer)   # offline
        >>> out = model.attribute("Hello everyone, today", generation_args={"max_new_tokens": 5})
        >>> out[0].steps == out[0].target[-5:]
        True
        >>> out.show()                                    # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        #0 saliency ...
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        method: str = "saliency",
        model_name: str | None = None,
        **method_kwargs: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or getattr(model, "name_or_path", None) or type(model).__name__
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        # A bidirectional model would run and return wrong numbers: refused before anything else.
        check_causal(model)
        self.method_name = method
        self.method_kwargs = method_kwargs
        # Fail now, not at the first attribute() call, on an unknown method or option.
        get_method_class(method).parse_options(**method_kwargs)
        # A capability of the architecture (GPT-2, Llama, Qwen2, ... have it), not keyword routing.
        self.has_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # Some models scale their embedding lookup only when given ids (Marian's encoder): measured once.
        self._source_scale, self._target_scale = input_embedding_scales(model)

    # --- facts about the model -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's position embeddings cover (None when unbounded, e.g. T5)."""
        config = (
            self.model.config.get_text_config()
            if hasattr(self.model.config, "get_text_config")
            else self.model.config
        )
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens(list(ids)))

    # --- model passes -----------------------------------------------------------------------------

    def embed(self, ids: Int[Tensor, "*shape"]) -> Float[Tensor, "*shape hidden"]:
        """Input embeddings of token ids of any shape, as the model computes them (scaling included)."""
        return self.model.get_input_embeddings()(ids)

    def embed_batch(self, batch: AttributionBatch) -> tuple[Tensor | None, Tensor]:
        with torch.no_grad():
            source = self.embed(batch.source_ids) if batch.source_ids is not None else None
            return source, self.embed(batch.target_ids)

    def forward(
        self,
        batch: AttributionBatch,
        rows: Int[Tensor, " n"],
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        **kwargs: Any,
    ):
        """The Hugging Face output of one pass over ``n`` rows (batch examples ``rows``) of embeddings, the
        target possibly cut to a prefix; ``kwargs`` go to the model (e.g. ``output_attentions=True``).

        Example:
            >>> out = model.forward(batch, rows, source, target, output_attentions=True)   # doctest: +SKIP
        """
        prefix_len = target_embeds.shape[1]
        if self._target_scale != 1.0:
            target_embeds = target_embeds * self._target_scale
        if source_embeds is not None and self._source_scale != 1.0:
            source_embeds = source_embeds * self._source_scale
        mask = batch.target_mask[rows, :prefix_len]
        if self.is_encoder_decoder:
            return self.model(
                inputs_embeds=source_embeds,
                attention_mask=batch.source_mask[rows],
                decoder_inputs_embeds=target_embeds,
                decoder_attention_mask=mask,
                use_cache=False,
                **kwargs,
            )
        if self._needs_own_mask(mask):
            mask = additive_causal_mask(mask, target_embeds.dtype)
        return self.model(
            inputs_embeds=target_embeds,
            attention_mask=mask,
            position_ids=batch.position_ids[rows, :prefix_len],
            use_cache=False,
            **kwargs,
        )

    def _needs_own_mask(self, mask: Int[Tensor, "n length"]) -> bool:
        """Whether transformers' own mask would turn left padding into NaN: eager attention in float64 (see
        `additive_causal_mask`). Not with a sliding window shorter than the batch, which the 4D mask would
        lift."""
        if (
            self.model.config._attn_implementation != "eager"
            or self.dtype != torch.float64
            or bool(mask.all())
        ):
            return False
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        return not (isinstance(window, int) and window < mask.shape[1])

    def step_logits(
        self,
        batch: AttributionBatch,
        rows: Int[Tensor, " n"],
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        positions: Int[Tensor, " steps"],
    ) -> Float[Tensor, "n steps vocab"]:
        """Next-token logits predicting the target tokens at ``positions`` (padded indices) for ``n`` rows."""
        prefix_len = target_embeds.shape[1]
        if int(positions.max()) > prefix_len:
            raise ValueError(
                f"steps up to position {int(positions.max())} need {int(positions.max())} target embeddings"
            )
        if (
            self.has_logits_to_keep and not self.is_encoder_decoder
        ):  # the LM head runs only where a step is explained
            return self.forward(
                batch, rows, source_embeds, target_embeds, logits_to_keep=positions - 1
            ).logits
        return self.forward(batch, rows, source_embeds, target_embeds).logits[:, positions - 1]

    # --- encoding and generation ------------------------------------------------------------------

    def check_length(self, length: int, what: str) -> None:
        """Refuse a sequence of ``length`` tokens longer than the model's context, naming ``what`` it is.

        Example:
            >>> model.check_length(500, "input_texts[0]")
            Traceback (most recent call last):
            ...
            ValueError: input_texts[0] is 500 tokens long, longer than the model's context of 128 tokens; ...
        """
        limit = self.max_positions
        if limit is not None and length > limit:
            raise ValueError(
                f"{what} is {length} tokens long, longer than the model's context of {limit} tokens; "
                "shorten the input or lower max_new_tokens"
            )

    def eos_ids(self, generation_args: dict[str, Any]) -> set[int]:
        """The ids that end generation: ``generation_args`` override the model's generation config.

        Example:
            >>> model.eos_ids({}) == {tokenizer.eos_token_id}
            True
        """
        config = generation_args.get("generation_config") or self.model.generation_config
        eos = generation_args.get("eos_token_id", config.eos_token_id)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    def _cut_at_eos(self, ids: list[int], generation_args: dict[str, Any]) -> list[int]:
        """Drop what follows the first end-of-sequence token (padding of sequences that ended early)."""
        eos = self.eos_ids(generation_args)
        for i, token in enumerate(ids):
            if token in eos:
                return ids[: i + 1]
        return ids

    def _pad(self, sequences: list[list[int]], left: bool) -> tuple[Tensor, Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[i, span] = torch.tensor(seq, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate(self, prompts: list[list[int]], generation_args: dict[str, Any]) -> list[list[int]]:
        """Continuations of each prompt (decoder-only) or target sequences after the start token."""
        input_ids, attention_mask = self._pad(prompts, left=not self.is_encoder_decoder)
        with torch.no_grad(), left_as_found(self.model):  # e.g. output_attentions=True would hook the model
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generation_args
            )
        skip = input_ids.shape[1] if not self.is_encoder_decoder else 1
        return [self._cut_at_eos(seq[skip:].tolist(), generation_args) for seq in sequences]

    def encode(
        self,
        input_texts: list[str],
        generated_texts: list[str] | None,
        generation_args: dict[str, Any],
        batch_size: int,
    ) -> list[tuple[list[int], list[int], int]]:
        """``(source_ids, target_ids, default attr_pos_start)`` per example, generating where not forced."""
        prompts = [self.tokenizer(text)["input_ids"] for text in input_texts]
        for i, prompt in enumerate(prompts):
            self.check_length(len(prompt), f"input_texts[{i}]")
        if generated_texts is not None:
            return [
                self.encode_forced(i, p, t, input_texts[i])
                for i, (p, t) in enumerate(zip(prompts, generated_texts, strict=True))
            ]

        generation_args = dict(generation_args)
        if "max_new_tokens" not in generation_args and "max_length" not in generation_args:
            generation_args["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        new_tokens = generation_args.get("max_new_tokens")
        if new_tokens is not None:
            for i, prompt in enumerate(prompts):
                # Decoder-only: the prompt and its continuation share the context; encoder-decoder: the
                # output (after its start token) has the decoder's positions to itself.
                length = 1 + new_tokens if self.is_encoder_decoder else len(prompt) + new_tokens
                self.check_length(length, f"input_texts[{i}] plus max_new_tokens={new_tokens}")
        elif generation_args.get("max_length") is not None:  # the longest sequence generate() may return
            self.check_length(generation_args["max_length"], f"max_length={generation_args['max_length']}")
        generations: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            generations += self._generate(prompts[start : start + batch_size], generation_args)
        if self.is_encoder_decoder:
            start_id = self.model.generation_config.decoder_start_token_id
            return [(p, [start_id, *g], 1) for p, g in zip(prompts, generations, strict=True)]
        return [([], p + g, len(p)) for p, g in zip(prompts, generations, strict=True)]

    def encode_forced(
        self, i: int, prompt: list[int], text: str, input_text: str, argument: str = "generated_texts"
    ) -> tuple[list[int], list[int], int]:
        """``(source ids, target ids, first explained position)`` of example ``i`` forced to output ``text``
        after ``prompt`` (token ids of ``input_text``); a text that does not fit the prompt is refused,
        naming ``argument[i]``.

        Example:
            >>> prompt = tokenizer("The capital")["input_ids"]
            >>> source, target, start = model.encode_forced(0, prompt, "The capital of France", "The capital")
            >>> source, target[:start] == prompt, model.convert_ids_to_tokens(target[start:])
            ([], True, ['Ġof', 'ĠFrance'])
        """
        if self.is_encoder_decoder:
            target = self.tokenizer(text_target=text)["input_ids"]
            start_id = self.model.generation_config.decoder_start_token_id
            self.check_length(len(target) + 1, f"{argument}[{i}]")
            return prompt, [start_id, *target], 1
        if not text.startswith(input_text):
            raise ValueError(
                f"{argument}[{i}] must start with its prompt (decoder-only models continue their input): "
                f"{text[:60]!r} does not start with {input_text[:60]!r}. Pass prompt + continuation."
            )
        full = self.tokenizer(text)["input_ids"]
        if full[: len(prompt)] != prompt:
            raise ValueError(
                f"{argument}[{i}] tokenizes differently from its prompt at the boundary: the prompt's tokens "
                f"{self.convert_ids_to_tokens(prompt[-3:])} are not a prefix of the text's tokens "
                f"{self.convert_ids_to_tokens(full[max(0, len(prompt) - 3) : len(prompt) + 1])}. "
                "End the prompt where a token ends (e.g. drop a trailing space)."
            )
        if len(full) == len(prompt):
            raise ValueError(f"{argument}[{i}] adds no tokens to its prompt: there is nothing to explain")
        self.check_length(len(full), f"{argument}[{i}]")
        return [], full, len(prompt)

    # --- attribution ------------------------------------------------------------------------------

    def attribute(
        self,
        input_texts: str | Sequence[str],
        generated_texts: str | Sequence[str] | None = None,
        *,
        method: str | None = None,
        generation_args: dict[str, Any] | None = None,
        attribute_target: bool = False,
        attr_pos_start: int | None = None,
        attr_pos_end: int | None = None,
        step_scores: str | StepFunction | Sequence[str | StepFunction] = (),
        attributed_fn: str | StepFunction | None = None,
        step_scores_args: dict[str, Any] | None = None,
        attributed_fn_args: dict[str, Any] | None = None,
        contrast_targets: str | Sequence[str] | None = None,
        contrast_sources: str | Sequence[str] | None = None,
        contrast_targets_alignments: str | Sequence[Any] | None = None,
        trace_top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        show_progress: bool = True,
        fused: bool = True,
        **method_kwargs: Any,
    ) -> AttributionOutput:
        """Generate (or take the forced ``generated_texts``) and attribute every step to its inputs.

        Args:
            input_texts: a text or a list of texts (the prompt, or the encoder input).
            generated_texts: forced outputs instead of generation; for decoder-only models each must start
                with its prompt.
            method: another registered method for this call (default: the one bound by `load_model`).
            generation_args: keyword arguments of ``model.generate`` (default ``max_new_tokens=20``).
            attribute_target: also attribute to the target prefix (encoder-decoder; decoder-only always does).
            attr_pos_start: the first target position to explain (the window is ``[start, end)``;
                negative values count from the end). Default: the first generated token.
            attr_pos_end: the end of that window (exclusive). Default: after the last generated token.
            step_scores: names of step functions (or step functions) to score at every step (e.g.
                ``["probability", "entropy"]``; a single name is a one-element list).
            attributed_fn: the step function whose value is attributed (default ``"probability"``).
            step_scores_args: options of the step scores (e.g. ``{"top_p": 0.8}``), shared by all of them,
                each taking the keys it declares.
            attributed_fn_args: options of the attributed function.
            contrast_targets: the contrast for contrastive step functions: alternative outputs
                (decoder-only: full texts starting with the prompt) (docs/step_functions.md).
            contrast_sources: alternative inputs for contrastive step functions, with or instead of
                ``contrast_targets``.
            contrast_targets_alignments: how contrast steps face the original steps: None (position by
                position when lengths match, else ``"auto"``), ``"auto"`` (edit distance) or ``[(i, j), ...]``
                pairs of continuation indices (a list of such lists for several examples).
            trace_top_k: alternatives per step in the generation trace (``seq.trace``).
            batch_size: examples per model call (default: all at once).
            show_progress: show a progress bar over the model passes (and batches) once the call has run
                for a second.
            fused: explain all steps of a sequence in one pass (True) or step by step (the reference).
            **method_kwargs: the method's options (e.g. ``hidden_reduction="l2"``); they override those
                given to `load_model`.

        Example:
            >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 8},
            ...                       step_scores=["probability"])
            >>> out[0].num_steps, out[0].target_attributions.shape, out[0].step_scores["probability"].shape
            (8, torch.Size([14, 8]), torch.Size([8]))
        """
        started = time.perf_counter()
        texts = _as_text_list(input_texts, "input_texts")
        forced = None
        if generated_texts is not None:
            forced = _as_text_list(generated_texts, "generated_texts")
            if len(forced) != len(texts):
                raise ValueError(
                    f"got {len(texts)} input_texts but {len(forced)} generated_texts; give one per input"
                )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if attribute_target not in (True, False):
            raise TypeError("attribute_target must be True or False")
        for name, value in (("attr_pos_start", attr_pos_start), ("attr_pos_end", attr_pos_end)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be an integer target position (or None), got {value!r}")
        if generation_args is not None and not isinstance(generation_args, dict):
            raise TypeError(
                f"generation_args must be a dict of model.generate keyword arguments, e.g. "
                f"{{'max_new_tokens': 8}}; got {type(generation_args).__name__}"
            )
        method_name = method or self.method_name
        method_cls = get_method_class(method_name)
        kwargs = {**self.method_kwargs, **method_kwargs} if method_name == self.method_name else method_kwargs
        options = method_cls.parse_options(**kwargs)
        if isinstance(options, Seed) and options.seed is None:
            # One fresh seed for the whole call (every batch, fused or stepwise), recorded in info.
            options = dataclasses.replace(options, seed=options.resolved_seed())
        (attributed,) = bind_step_functions(
            [attributed_fn or "probability"], attributed_fn_args, "attributed_fn_args"
        )
        step_scores = _as_name_list(step_scores, "step_scores")
        step_score_names = [step_function_name(name) for name in step_scores]
        bound = bind_step_functions(list(step_scores), step_scores_args, "step_scores_args")
        step_functions = dict(zip(step_score_names, bound, strict=True))
        check_top_k(trace_top_k)
        has_contrast = contrast_targets is not None or contrast_sources is not None
        if contrast_targets_alignments is not None and not has_contrast:
            raise ValueError(
                "contrast_targets_alignments needs contrast_targets= (or contrast_sources=) to align with"
            )
        batch_size = batch_size or len(texts)

        encoded = self.encode(texts, forced, dict(generation_args or {}), batch_size)
        generated_at = time.perf_counter()
        examples = [
            EncodedExample(
                source, target, *self._window(i, len(target), default_start, attr_pos_start, attr_pos_end)
            )
            for i, (source, target, default_start) in enumerate(encoded)
        ]
        contrasts = None
        if has_contrast:
            contrasts = encode_contrasts(
                self,
                texts,
                encoded,
                examples,
                contrast_targets,
                contrast_sources,
                contrast_targets_alignments,
            )

        method_instance: AttributionMethod = method_cls(self)
        sequences = []
        method_info: dict[str, Any] = {}
        example_info: list[dict[str, Any]] = []
        unconverged: list[str] = []
        batches = _batch_spans(examples, batch_size, self.is_encoder_decoder)
        progress = PassProgress(method_name, len(batches), enabled=show_progress)
        with progress:
            for start, stop in batches:
                progress.next_batch()
                batch = AttributionBatch.from_examples(
                    examples[start:stop], self.pad_token_id, self.is_encoder_decoder, self.device
                )
                contrast = None
                if contrasts is not None:
                    contrast = ContrastBatch.from_examples(self, batch, contrasts[start:stop])
                # Scores first: a step function that cannot run (e.g. contrastive without a contrast) fails
                # fast.
                scoring = engine.compute_step_scores(self, batch, step_functions, trace_top_k, contrast)
                result = engine.run_batch(
                    self,
                    method_instance,
                    options,
                    batch,
                    attributed,
                    attribute_target,
                    fused,
                    contrast,
                    progress,
                )
                if result.completeness is not None:
                    tokens = [self.convert_ids_to_tokens(row) for row in batch.step_target_ids.tolist()]
                    unconverged += describe_failures(result.completeness, batch.step_mask, tokens, start)
                method_info.update(result.info)
                example_info += result.example_info or [{} for _ in batch.examples]
                sequences += engine.assemble(self, batch, result, scoring.scores, scoring.trace)
        finished = time.perf_counter()
        warn_if_not_converged(method_name, unconverged, getattr(options, "n_steps", None))
        info = self._info(
            method_name=method_name,
            options=options,
            attributed_fn=attributed_fn,
            step_score_names=step_score_names,
            fused=fused,
            attribute_target=attribute_target,
            batch_size=batch_size,
            generation_args=generation_args,
            forced=forced is not None,
        )
        info["step_scores_args"] = dict(step_scores_args or {})
        info["attributed_fn_args"] = dict(attributed_fn_args or {})
        if contrasts is not None:
            info["contrast"] = {
                "contrast_targets": contrast_targets,
                "contrast_sources": contrast_sources,
                "alignments": [[list(pair) for pair in c.alignment] for c in contrasts],
            }
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

    def _window(
        self, i: int, length: int, default_start: int, start: int | None, end: int | None
    ) -> tuple[int, int]:
        resolved_start = default_start if start is None else (start + length if start < 0 else start)
        resolved_end = length if end is None else (end + length if end < 0 else end)
        if not 1 <= resolved_start < resolved_end <= length:
            raise ValueError(
                f"example {i}: attr_pos_start={start!r}, attr_pos_end={end!r} select target positions "
                f"[{resolved_start}, {resolved_end}) of a {length}-token target; need "
                f"1 <= start < end <= {length} (position 0 has no prefix to explain it)"
            )
        return resolved_start, resolved_end

    def _info(
        self,
        *,
        method_name: str,
        options,
        attributed_fn,
        step_score_names: list[str],
        fused: bool,
        attribute_target: bool,
        batch_size: int | None,
        generation_args: dict[str, Any] | None,
        forced: bool,
    ) -> dict[str, Any]:
        """The output's ``info``: what ran, on what, with which versions (keyword arguments only)."""
        import captum
        import transformers

        from seqattr.version import __version__

        return {
            "method": method_name,
            "method_options": describe_options(options, self.model),
            "unitless_scores": get_method_class(method_name).unitless,
            "engine": "fused" if fused else "stepwise",
            "attributed_fn": step_function_name(attributed_fn or "probability"),
            "step_scores": step_score_names,
            "attribute_target": attribute_target,
            "batch_size": batch_size,
            "forced_targets": forced,
            # The arguments generate() ran with: encode() adds the default max_new_tokens when none is given.
            "generation_args": (
                dict(generation_args or {})
                if forced or {"max_new_tokens", "max_length"} & set(generation_args or {})
                else {**(generation_args or {}), "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
            ),
            "model": self.model_name,
            "model_class": type(self.model).__name__,
            "is_encoder_decoder": self.is_encoder_decoder,
            # Lets views and aggregation mask special tokens later (out.mask_special()) without the tokenizer.
            "special_token_ids": sorted(self.tokenizer.all_special_ids),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "versions": {
                "seqattr": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "captum": captum.__version__,
            },
        }

    # --- evaluation ---------------------------------------------------------------------------------

    def evaluate(
        self,
        output: AttributionOutput,
        metrics: str | Sequence[str] | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        baseline: str | int | Tensor = "zeros",
        removal: str = "replace",
        by: str = "signed",
        seed: int = 0,
    ) -> EvaluationResult:
        """How faithful ``output``'s attributions are to this model: each step's score with its top-ranked
        tokens removed or kept alone, against a random ranking (`seqattr.evaluation`; docs/evaluation.md).

        Args:
            output: an output of this model (`attribute`, or `seqattr.load` of a saved one), token level.
            metrics: names from ``comprehensiveness``, ``sufficiency``, ``deletion_auc``, ``insertion_auc``,
                ``abpc``, ``soft_comprehensiveness``, ``soft_sufficiency`` (None: all).
            fractions: shares ``k`` in (0, 1] of each step's features removed (comprehensiveness) or kept
                (sufficiency): ``ceil(k * n_t)`` features.
            baseline: what a removed token becomes with ``removal="replace"``, as the perturbation methods'
                ``baseline``: ``"zeros"``, ``"unk"``, ``"pad"``, a token id or an embedding tensor.
            removal: ``"replace"`` (by the baseline) or ``"delete"`` (drop the tokens, positions close up).
            by: rank by the ``"signed"`` score (largest first) or by its magnitude (``"abs"``).
            seed: seed of the random ranking and of the soft metrics' draws.

        Example:
            >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 3})
            >>> result = model.evaluate(out, metrics=["comprehensiveness", "sufficiency"])
            >>> result.per_step[0]["comprehensiveness"].shape, sorted(result.random_means())
            (torch.Size([3]), ['comprehensiveness', 'sufficiency'])
            >>> result.show()                                  # doctest: +SKIP
        """
        return evaluate(self, output, metrics, fractions, baseline, removal, by, seed)

    def __repr__(self) -> str:
        family = "encoder-decoder" if self.is_encoder_decoder else "decoder-only"
        return f"AttributionModel({self.model_name!r}, {family}, method={self.method_name!r})"
