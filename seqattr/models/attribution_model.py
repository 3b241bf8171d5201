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
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seqattr import engine
from seqattr.chat import check_prompt_parts, prompt_layouts
from seqattr.context_attribution import attribute_context
from seqattr.data.attribution import AttributionOutput
from seqattr.dataset_runs.runner import attribute_dataset
from seqattr.evaluation import DEFAULT_FRACTIONS, EvaluationResult, evaluate
from seqattr.methods.base import get_method_class
from seqattr.models.architecture import ArchitectureFacts
from seqattr.models.batch import AttributionBatch, additive_causal_mask
from seqattr.models.causality import check_causal
from seqattr.models.checkpointing import checkpointing_when_large
from seqattr.models.family import ModelFamily
from seqattr.models.model_state import left_as_found
from seqattr.request import AttributionRequest
from seqattr.segments import PromptLayout, reply_example
from seqattr.step_functions import StepFunction
from seqattr.trace import DEFAULT_TOP_K
from seqattr.typing import Float, Int, Tensor


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
        # A bidirectional model would run and return wrong numbers: refused before anything else.
        check_causal(model)
        self.method_name = method
        self.method_kwargs = method_kwargs
        # Fail now, not at the first attribute() call, on an unknown method or option.
        get_method_class(method).parse_options(**method_kwargs)
        self.architecture = ArchitectureFacts.of(model)
        """The family and the measured facts of the architecture (`seqattr.models.architecture`)."""
        self.checkpointed_block_calls = 0
        """Block calls run with activation checkpointing (`seqattr.models.checkpointing`) since loading: the
        engine records each ``attribute()`` call's share as ``info["checkpointed_block_calls"]``."""

    # --- facts about the model -------------------------------------------------------------------

    @property
    def family(self) -> ModelFamily:
        """Decoder-only or encoder-decoder: what differs between the two (`seqattr.models.family`)."""
        return self.architecture.family

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family.is_encoder_decoder

    @property
    def has_logits_to_keep(self) -> bool:
        return self.architecture.logits_to_keep

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
        """The longest sequence the model's position embeddings cover (None when unbounded, e.g. T5): its
        ``max_position_embeddings`` less the positions it skips before the first token (RoBERTa's 2)."""
        config = (
            self.model.config.get_text_config()
            if hasattr(self.model.config, "get_text_config")
            else self.model.config
        )
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value - self.architecture.position_offset
        return None

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def target_tokens(self, ids: Sequence[int], source_ids: Sequence[int] = ()) -> list[str]:
        """A target's tokens as outputs show them (a classifier's: its start marker and label names; an
        extractive QA model's: the answer's positions in ``source_ids``, named by their tokens)."""
        return self.family.target_tokens(self, ids, source_ids)

    def step_tokens(self, ids: Sequence[int], source_ids: Sequence[int] = ()) -> list[str]:
        """Names of ids of the steps' vocabulary: tokens, a classifier's label names, or QA's positions of
        ``source_ids``."""
        return self.family.step_tokens(self, ids, source_ids)

    def token_types(
        self, ids: Int[Tensor, "batch length"], mask: Int[Tensor, "batch length"]
    ) -> Int[Tensor, "batch length"] | None:
        """The segment ids (``token_type_ids``) of padded source ``ids`` that hold pairs of texts: 1 after the
        first separator token, as BERT-style tokenizers make them; None when the model takes no token types
        or no row has a second segment (the model's own default, all zeros, is then right).

        Example:
            >>> classifier.token_types(torch.tensor([[2, 7, 3, 8, 3]]), torch.ones(1, 5))   # doctest: +SKIP
            tensor([[0, 0, 0, 1, 1]])
        """
        sep = self.tokenizer.sep_token_id
        if (
            not self.family.takes_pairs
            or sep is None
            or "token_type_ids" not in self.tokenizer.model_input_names
        ):
            return None
        is_sep = (ids == sep).long()
        second = (is_sep.cumsum(-1) - is_sep) > 0
        if not bool((second & mask.bool() & (ids != sep)).any()):
            return None
        return second.long()

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
        inputs = self.model_inputs(batch, rows, source_embeds, target_embeds)
        # A long sequence's graph (gradient methods) is checkpointed block by block above a memory budget.
        with checkpointing_when_large(self.model) as plan:
            output = self.model(**inputs, use_cache=False, **kwargs)
        self.checkpointed_block_calls += plan.checkpointed
        return output

    def model_inputs(
        self,
        batch: AttributionBatch,
        rows: Int[Tensor, " n"],
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
    ) -> dict[str, Any]:
        """The keyword arguments of `forward`'s pass (embeddings scaled as the model's lookup would, the
        attention mask, positions, token types), for a caller that runs the model itself
        (`seqattr.models.prefix_reuse` starts the pass after a cached prefix).

        Example:
            >>> sorted(model.model_inputs(batch, rows, None, target))   # doctest: +SKIP
            ['attention_mask', 'inputs_embeds', 'position_ids']
        """
        prefix_len = target_embeds.shape[1]
        source_scale = self.architecture.source_embedding_scale
        target_scale = self.architecture.target_embedding_scale
        if target_scale != 1.0:
            target_embeds = target_embeds * target_scale
        if source_embeds is not None and source_scale != 1.0:
            source_embeds = source_embeds * source_scale
        mask = batch.target_mask[rows, :prefix_len]
        if self._needs_own_mask(mask):
            mask = additive_causal_mask(mask, target_embeds.dtype)
        inputs = self.family.model_inputs(batch, rows, (source_embeds, target_embeds), mask)
        if batch.source_ids is not None:
            types = self.token_types(batch.source_ids[rows], batch.source_mask[rows])
            if types is not None:  # pairs: the second text is segment 1, as the tokenizer says
                inputs["token_type_ids"] = types
        return inputs

    def _needs_own_mask(self, mask: Int[Tensor, "n length"]) -> bool:
        """Whether transformers' own mask would turn left padding into NaN: eager attention in float64 (see
        `additive_causal_mask`). Not with a sliding window shorter than the batch, which the 4D mask would
        lift."""
        if (
            not self.family.pads_target_left
            or self.model.config._attn_implementation != "eager"
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
        return self.step_output(batch, rows, source_embeds, target_embeds, positions)[0]

    def step_output(
        self,
        batch: AttributionBatch,
        rows: Int[Tensor, " n"],
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        positions: Int[Tensor, " steps"],
        **kwargs: Any,
    ) -> tuple[Float[Tensor, "n steps vocab"], Any]:
        """`step_logits` and the Hugging Face output of the same pass (``kwargs`` go to the model, e.g.
        ``output_attentions=True``): a method that needs the pass's internals gets the logits with them.

        Example:
            >>> logits, out = model.step_output(  # doctest: +SKIP
            ...     batch, rows, None, target, positions, output_attentions=True
            ... )
        """
        prefix_len = target_embeds.shape[1]
        if int(positions.max()) > prefix_len:
            raise ValueError(
                f"steps up to position {int(positions.max())} need {int(positions.max())} target embeddings"
            )
        if self.has_logits_to_keep:  # the LM head runs only where a step is explained
            output = self.forward(
                batch, rows, source_embeds, target_embeds, logits_to_keep=positions - 1, **kwargs
            )
            return output.logits, output
        output = self.forward(batch, rows, source_embeds, target_embeds, **kwargs)
        source_mask = None if batch.source_mask is None else batch.source_mask[rows]
        return self.family.step_logits(output, positions, source_mask), output

    def special_token_baseline(self, text: str) -> Float[Tensor, "1 length hidden"]:
        """A baseline for ``text`` (``baseline=`` of path methods) that keeps its special tokens and puts the
        pad token everywhere else: the reference transformers-interpret integrates from (``[CLS] [PAD] ...
        [PAD] [SEP]``); for one text at a time.

        Example:
            >>> base = model.special_token_baseline("Hello world")
            >>> base.shape == model.embed(torch.tensor([tokenizer("Hello world")["input_ids"]])).shape
            True
        """
        ids = self.tokenizer(text)["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        reference = [i if i in special else self.pad_token_id for i in ids]
        with torch.no_grad():
            return self.embed(torch.tensor([reference], device=self.device))

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
        # Classifiers have no generation config (their contrasts still ask which ids end a text).
        config = generation_args.get("generation_config") or getattr(self.model, "generation_config", None)
        eos = generation_args.get("eos_token_id", None if config is None else config.eos_token_id)
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
        input_ids, attention_mask = self._pad(prompts, left=self.family.prompt_padding_left())
        with torch.no_grad(), left_as_found(self.model):  # e.g. output_attentions=True would hook the model
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generation_args
            )
        width = input_ids.shape[1]
        return [
            self._cut_at_eos(self.family.generated_tokens(seq.tolist(), width), generation_args)
            for seq in sequences
        ]

    def predict(self, prompts: list[list[int]], texts: Sequence[Any]) -> list[list[int]]:
        """A classifier's "generation": each prompt's (token ids of ``texts``) predicted target ids after the
        start marker: its label, its tokens' tags, or an answer span's start and end positions.

        Example:
            >>> classifier.predict([tokenizer("the movie was good.")["input_ids"]], ["..."])  # doctest: +SKIP
            [[1]]
        """
        input_ids, attention_mask = self._pad(prompts, left=self.family.prompt_padding_left())
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        types = self.token_types(input_ids, attention_mask)
        if types is not None:
            inputs["token_type_ids"] = types
        with torch.no_grad(), left_as_found(self.model):
            output = self.model(**inputs)
        return self.family.predictions(self, output, prompts, texts)

    def encode_input(self, text: str | tuple[str, str], i: int) -> list[int]:
        """The token ids of input ``i``: a text, or a pair of texts (two segments) for the models that read
        pairs; a pair given to a model that reads one text (or a text to one that needs pairs) is refused."""
        if isinstance(text, tuple):
            if not self.family.takes_pairs:
                raise ValueError(
                    f"input_texts[{i}] is a pair of texts, but this {self.family} model reads one text: pass "
                    "a single string (pairs are for sequence classifiers, e.g. NLI, and question answering)"
                )
            return self.tokenizer(*text)["input_ids"]
        if self.family.needs_pairs:
            raise ValueError(
                f"input_texts[{i}] is one text, but a question-answering model reads a question and the "
                "context its answer comes from: call attribute(question=..., context=...)"
            )
        return self.tokenizer(text)["input_ids"]

    def segments(self, text: str | tuple[str, str]) -> list[list[int]] | None:
        """``[start, end)`` token ranges of a pair's two texts in its tokenization (None for one text):
        the segment boundaries an output of pairs keeps in ``info["segments"]``.

        Example:
            >>> classifier.segments(("the movie", "was good"))                # doctest: +SKIP
            [[1, 3], [4, 6]]
        """
        if not isinstance(text, tuple):
            return None
        sequence = self.tokenizer(*text).sequence_ids()
        return [[sequence.index(k), len(sequence) - sequence[::-1].index(k)] for k in (0, 1) if k in sequence]

    def encode(
        self,
        input_texts: list[str],
        generated_texts: list[str] | None,
        generation_args: dict[str, Any],
        batch_size: int,
        layouts: Sequence[PromptLayout] | None = None,
    ) -> list[tuple[list[int], list[int], int]]:
        """``(source_ids, target_ids, default attr_pos_start)`` per example, generating where not forced
        (``generation_args`` as ``model.generate`` takes them: `AttributionRequest.generate_args`); prompts
        given as ``layouts`` (chat messages, named segments) are their ids, forced texts their replies."""
        if layouts is None:
            prompts = [self.encode_input(text, i) for i, text in enumerate(input_texts)]
        else:
            prompts = [list(layout.ids) for layout in layouts]
        for i, prompt in enumerate(prompts):
            self.check_length(len(prompt), f"input_texts[{i}]")
        if generated_texts is not None and layouts is not None and self.family.prompt_side == "target":
            return [
                reply_example(self, i, p, t)
                for i, (p, t) in enumerate(zip(prompts, generated_texts, strict=True))
            ]
        if generated_texts is not None:
            return [
                self.encode_forced(i, p, t, input_texts[i])
                for i, (p, t) in enumerate(zip(prompts, generated_texts, strict=True))
            ]

        new_tokens = generation_args.get("max_new_tokens")
        if new_tokens is not None:
            for i, prompt in enumerate(prompts):
                length = self.family.generation_length(len(prompt), new_tokens)
                self.check_length(length, f"input_texts[{i}] plus max_new_tokens={new_tokens}")
        elif generation_args.get("max_length") is not None:  # the longest sequence generate() may return
            self.check_length(generation_args["max_length"], f"max_length={generation_args['max_length']}")
        generations: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = input_texts[start : start + batch_size]
            generations += (
                self._generate(chunk, generation_args)
                if self.family.generates
                else self.predict(chunk, texts)
            )
        generation_config = getattr(self.model, "generation_config", None)  # classifiers have none
        start_id = None if generation_config is None else generation_config.decoder_start_token_id
        return [
            self.family.generated_example(p, g, start_id) for p, g in zip(prompts, generations, strict=True)
        ]

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
        return self.family.forced_example(self, i, prompt, text, input_text, argument)

    # --- attribution ------------------------------------------------------------------------------

    def attribute(
        self,
        input_texts: str | tuple[str, str] | Sequence[str | tuple[str, str]] | None = None,
        generated_texts: str | Sequence[str] | None = None,
        *,
        method: str | None = None,
        generation_args: dict[str, Any] | None = None,
        attribute_target: bool | None = None,
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
        target: Any = None,
        question: str | Sequence[str] | None = None,
        context: str | Sequence[str] | None = None,
        messages: Any = None,
        segments: Any = None,
        include_template: bool = False,
        context_parts: str | Sequence[str] | None = None,
        **method_kwargs: Any,
    ) -> AttributionOutput:
        """Generate (or take the forced ``generated_texts``) and attribute every step to its inputs.

        Args:
            input_texts: a text or a list of texts (the prompt, or the encoder input); a classifier also
                takes pairs of texts ``(text_a, text_b)`` (e.g. NLI's premise and hypothesis).
            generated_texts: forced outputs instead of generation; for decoder-only models each must start
                with its prompt.
            method: another registered method for this call (default: the one bound by `load_model`).
            generation_args: keyword arguments of ``model.generate`` (default ``max_new_tokens=20``).
            attribute_target: encoder-decoder: also attribute to the target prefix (True; default False).
                Decoder-only: by default (None, or True) the whole target moves, prompt and generated prefix;
                False attributes to the prompt only, the generated prefix held at its tokens (Captum's
                convention: its rows are NaN, ``info["prompt_only"]`` is True; docs/usage.md).
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
            target: a classifier's label to explain (a name of ``config.id2label`` or an index; a list for
                several texts) instead of the predicted one; the same as ``generated_texts``. A token
                classifier's: a list of tags, one per token (a list of lists for several texts); an extractive
                QA model's: the answer (a piece of the context) or its ``(start, end)`` token positions.
            question: an extractive QA model's question (a list for several), with ``context``.
            context: the passage the answer is extracted from (one per question).
            messages: a conversation (``[{"role": "system", "content": ...}, {"role": "user", ...}]``) or a
                list of them, instead of ``input_texts``: the tokenizer's chat template makes the prompt (with
                the generation prompt) and the assistant's reply is explained; ``generated_texts`` are then
                replies only (`seqattr.chat`).
            segments: named parts of the prompt, ``[(name, text), ...]`` (a list of such lists for several
                prompts), found in the prompt's text or messages; alone, their texts joined are the prompt.
                With ``granularity="segment"`` each is one feature (`seqattr.segments`). An encoder-decoder's
                segments are parts of its source (the encoder's input).
            include_template: show the chat template's scaffolding tokens (role headers, end-of-turn, BOS)
                and perturb them as features; by default they are masked and never perturbed.
            context_parts: names of the prompt's parts that are its context (segments of ``segments=``, or
                messages by name: ``"system"``, ``"user 1"``...): each step then gets a context reliance
                (``seq.trace.context_reliance``, also ``seq.step_scores["context_reliance"]``): the KL
                divergence between its next-token distribution with and without them, the same output
                forced.
            **method_kwargs: the method's options (e.g. ``hidden_reduction="l2"``); they override those
                given to `load_model`.

        Example:
            >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 8},
            ...                       step_scores=["probability"])
            >>> out[0].num_steps, out[0].target_attributions.shape, out[0].step_scores["probability"].shape
            (8, torch.Size([14, 8]), torch.Size([8]))
        """
        layouts = None
        if context_parts is not None and messages is None and segments is None:
            raise ValueError(
                "context_parts= names parts of the prompt: give them with segments=[(name, text), ...] or "
                "messages=[...] (messages are named by role: 'system', 'user', ...)"
            )
        if messages is not None or segments is not None:
            check_prompt_parts(self.family, messages)
            input_texts, layouts = prompt_layouts(
                self.tokenizer, input_texts, messages, segments, context_parts
            )
        input_texts = question_context_pairs(input_texts, question, context)
        if target is not None:
            if generated_texts is not None:
                raise ValueError("give the target once: as generated_texts or as target, not both")
            generated_texts = target
        request = self.request(
            input_texts,
            generated_texts,
            method=method,
            generation_args=generation_args,
            attribute_target=attribute_target,
            attr_pos_start=attr_pos_start,
            attr_pos_end=attr_pos_end,
            step_scores=step_scores,
            attributed_fn=attributed_fn,
            step_scores_args=step_scores_args,
            attributed_fn_args=attributed_fn_args,
            contrast_targets=contrast_targets,
            contrast_sources=contrast_sources,
            contrast_targets_alignments=contrast_targets_alignments,
            trace_top_k=trace_top_k,
            batch_size=batch_size,
            show_progress=show_progress,
            fused=fused,
            prompts=layouts,
            include_template=include_template,
            **method_kwargs,
        )
        return engine.attribute(self, request)

    def request(
        self,
        input_texts: str | Sequence[str],
        generated_texts: str | Sequence[str] | None = None,
        *,
        method: str | None = None,
        **arguments: Any,
    ) -> AttributionRequest:
        """The `AttributionRequest` that `attribute` runs for the same arguments: keywords of `attribute`
        are the request's, any other keyword is a method option (merged over those `load_model` bound, when
        the method is the bound one). Validates them all without running the model.

        Example:
            >>> model.request("Hello", step_scores="entropy", abs=False).options.abs
            False
        """
        own = {f.name for f in dataclasses.fields(AttributionRequest) if f.init} - {
            "input_texts",
            "generated_texts",
            "method",
            "method_options",
        }
        options = {k: v for k, v in arguments.items() if k not in own}
        if generated_texts is not None:  # a classifier's label indices become their names
            check_label_sets(self.family, input_texts, generated_texts)
            generated_texts = self.family.forced_texts(self, generated_texts)
        method = method or self.method_name
        if method == self.method_name:
            options = {**self.method_kwargs, **options}
        return AttributionRequest(
            input_texts,
            generated_texts,
            method=method,
            method_options=options,
            **{k: v for k, v in arguments.items() if k in own},
        )

    # One definition, with its signature and documentation, in seqattr/dataset_runs/runner.py.
    attribute_dataset = attribute_dataset

    # One definition, with its signature and documentation, in seqattr/context_attribution.py (PECoRe).
    attribute_context = attribute_context

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
        random_ranking: bool = True,
        step_function: str | None = None,
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
            random_ranking: also score the random ranking (the chance level of each metric; about half the
                cost). ``False`` leaves ``random_per_step`` NaN: for a second method on the same output, whose
                random level is the same.
            step_function: a registered step function to measure the rankings with, instead of the one the
                output attributes (None), e.g. ``"probability"`` for ContextCite's log-odds or a contrastive
                output. Contrastive step functions cannot be measured (evaluate runs no contrast).

        Example:
            >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 3})
            >>> result = model.evaluate(out, metrics=["comprehensiveness", "sufficiency"])
            >>> result.per_step[0]["comprehensiveness"].shape, sorted(result.random_means())
            (torch.Size([3]), ['comprehensiveness', 'sufficiency'])
            >>> result.show()                                  # doctest: +SKIP
        """
        return evaluate(
            self, output, metrics, fractions, baseline, removal, by, seed, random_ranking, step_function
        )

    def __repr__(self) -> str:
        return f"AttributionModel({self.model_name!r}, {self.family}, method={self.method_name!r})"


def check_label_sets(family: ModelFamily, input_texts: Any, target: Any) -> None:
    """Refuse a flat list of labels given to a multi-label classifier for several texts: it reads as one
    text's labels, so the counts would not match; say how to give one set per text.

    Example:
        >>> from seqattr.models.family import SequenceClassifier
        >>> check_label_sets(SequenceClassifier(False, multi_label=True), ["a", "b"], ["x", "y"])
        Traceback (most recent call last):
        ...
        ValueError: target=['x', 'y'] is one text's labels for a multi-label classifier, but there are 2 ...
    """
    several = isinstance(input_texts, list) and len(input_texts) > 1  # a tuple is one pair of texts
    flat = isinstance(target, (list, tuple)) and not any(isinstance(t, (list, tuple)) for t in target)
    if family.multi_label and several and flat:
        raise ValueError(
            f"target={list(target)!r} is one text's labels for a multi-label classifier, but there are "
            f"{len(input_texts)} texts; give one list of labels per text, e.g. "
            f"target=[[{target[0]!r}], ...]"
        )


def question_context_pairs(
    input_texts: Any, question: str | Sequence[str] | None, context: str | Sequence[str] | None
) -> Any:
    """The inputs of an ``attribute`` call: ``input_texts``, or the ``(question, context)`` pairs of an
    extractive QA call; a question without its context (or the reverse, or both kinds of input) is refused.

    Example:
        >>> question_context_pairs(None, "Where does Alice live?", "Alice lives in Paris.")
        [('Where does Alice live?', 'Alice lives in Paris.')]
        >>> question_context_pairs(None, "Where does Alice live?", None)
        Traceback (most recent call last):
        ...
        ValueError: question= needs context=: the passage the answer is extracted from, one per question
    """
    if question is None and context is None:
        if input_texts is None:
            raise TypeError(
                "attribute() needs input_texts (or, for question answering, question= and context=)"
            )
        return input_texts
    if input_texts is not None:
        raise ValueError("give the inputs once: input_texts, or question= and context=, not both")
    if context is None:
        raise ValueError(
            "question= needs context=: the passage the answer is extracted from, one per question"
        )
    if question is None:
        raise ValueError("context= needs question=: what to ask of the context")
    questions = [question] if isinstance(question, str) else list(question)
    contexts = [context] if isinstance(context, str) else list(context)
    if len(questions) != len(contexts):
        raise ValueError(
            f"got {len(questions)} question(s) but {len(contexts)} context(s); give one per question"
        )
    return list(zip(questions, contexts, strict=True))
