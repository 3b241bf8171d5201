"""Model families: what differs between decoder-only and encoder-decoder models, in one place.

A decoder-only model reads one sequence, prompt then continuation: the target is the whole sequence, the
first explained step is the first generated token, prompts are padded on the left for generation and targets
are left-padded so that every example's first step lands on one column. An encoder-decoder model reads the
source in its encoder; its target starts with the decoder start token (never explained), targets are padded
on the right (learned decoder positions must not move), and examples with different first steps cannot share
a batch. Everything else in seqattr asks the family (``model.family``) instead of branching on the config.

A sequence classifier (``*ForSequenceClassification``) is a third family: one step per text, whose
"vocabulary" is the label set. Its text is the source (attributed, never masked: a bidirectional encoder's
prediction sees every token), its target is a start marker and the explained label, and "generation" is the
classifier's prediction. The methods, step functions and views then run on it unchanged. A token classifier
(``*ForTokenClassification``) has one step per token, explaining its tag; an extractive QA model
(``*ForQuestionAnswering``) two, the answer span's start and end, over the input's positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import PretrainedConfig, PreTrainedModel

from seqattr.step_functions import MULTI_LABEL_THRESHOLD
from seqattr.typing import Bool, Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel
    from seqattr.models.batch import AttributionBatch, EncodedExample


class ModelFamily:
    """The family-specific parts of encoding, batching and running a model (see the module docstring)."""

    name: ClassVar[str]
    is_encoder_decoder: ClassVar[bool]
    predictor: ClassVar[str]
    """Which part predicts the next token, as a message names it ("its", "its decoder's")."""
    pads_target_left: ClassVar[bool]
    """Targets of different first steps are left-padded to align them (which can mask a row entirely)."""

    generates: ClassVar[bool] = True
    """Targets come from ``model.generate``; a classifier's from one forward pass (its predicted label)."""
    checks_causality: ClassVar[bool] = True
    """Steps are next-token predictions, which need a causal decoder (`seqattr.models.causality`)."""
    task: ClassVar[str] = "generation"
    """What the model does, as ``out.info["task"]`` records it."""
    multi_label: bool = False
    """A multi-label classifier: its labels are independent (sigmoid) yes/no decisions, and a text's
    prediction is every label whose probability passes 0.5 (``out.info["multi_label"]``)."""

    def attributes_source(self) -> bool:
        """Whether attributions go to a separate source (the encoder input)."""
        return self.is_encoder_decoder

    def attributes_target(self, requested: bool | None) -> bool:
        """Whether attributions go to the target prefix: always for decoder-only (the prompt is there).

        Example:
            >>> DECODER_ONLY.attributes_target(False), ENCODER_DECODER.attributes_target(None)
            (True, False)
        """
        return bool(requested) or not self.is_encoder_decoder

    def prompt_only(self, requested: bool | None) -> bool:
        """Whether ``attribute_target=requested`` attributes to the prompt only, holding the generated prefix
        at its tokens (Captum's convention): a decoder-only model given False explicitly. Its default (None)
        moves the whole target, prompt and generated prefix alike.

        Example:
            >>> DECODER_ONLY.prompt_only(False), DECODER_ONLY.prompt_only(None)
            (True, False)
            >>> ENCODER_DECODER.prompt_only(False)
            False
        """
        return False

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        """Padded index of each example's first target token, given each one's first explained position."""
        raise NotImplementedError

    def target_pad_id(self, pad_token_id: int) -> int:
        """The id that pads targets: the tokenizer's pad, or for a classifier `LABEL_START`, an index every
        step's vocabulary has (a tokenizer's pad id can be past the last label, e.g. Qwen2's).

        Example:
            >>> DECODER_ONLY.target_pad_id(420), TokenClassifier().target_pad_id(420)
            (420, 0)
        """
        return pad_token_id

    def source_tensors(
        self, examples: Sequence[EncodedExample], pad_token_id: int
    ) -> tuple[Int[Tensor, "batch source_len"] | None, Int[Tensor, "batch source_len"] | None]:
        """Padded source ids and mask (None, None without a source)."""
        return None, None

    def position_ids(
        self, target_mask: Int[Tensor, "batch target_len"]
    ) -> Int[Tensor, "batch target_len"] | None:
        """Explicit decoder position ids (None: the model's own)."""
        return None

    def batch_spans(self, examples: Sequence[EncodedExample], batch_size: int) -> list[tuple[int, int]]:
        """``[start, stop)`` ranges of consecutive examples run together, at most ``batch_size`` each.

        Example:
            >>> from seqattr.models.batch import EncodedExample
            >>> examples = [EncodedExample([], [1, 2, 3], s, 3) for s in (1, 2, 2)]
            >>> DECODER_ONLY.batch_spans(examples, 2), ENCODER_DECODER.batch_spans(examples, 2)
            ([(0, 2), (2, 3)], [(0, 1), (1, 2), (2, 3)])
        """
        return [
            (start, min(start + batch_size, len(examples))) for start in range(0, len(examples), batch_size)
        ]

    def model_inputs(
        self,
        batch: AttributionBatch,
        rows: Int[Tensor, " n"],
        embeds: tuple[Tensor | None, Tensor],
        mask: Tensor,
    ) -> dict[str, Any]:
        """Keyword arguments of the model's forward pass over ``n`` rows (batch examples ``rows``) of
        embeddings ``(source [n, S, H] or None, target prefix [n, L', H])`` with the target's ``mask``
        (``[n, L']``, or the 4D mask `seqattr.models.batch.additive_causal_mask` makes)."""
        raise NotImplementedError

    def probe_logits(
        self, model: PreTrainedModel, ids: Int[Tensor, "n length"]
    ) -> Float[Tensor, "n length vocab"]:
        """Logits of the (decoder's) sequences ``ids``; an encoder reads the first row of ``ids`` for all."""
        raise NotImplementedError

    def prompt_padding_left(self) -> bool:
        """Prompts are padded on the left for ``generate`` (a decoder continues right after its prompt)."""
        return not self.is_encoder_decoder

    def generated_example(
        self, prompt: list[int], generation: list[int], decoder_start_id: int | None
    ) -> tuple[list[int], list[int], int]:
        """``(source ids, target ids, first explained position)`` of a prompt and what ``generate`` added."""
        raise NotImplementedError

    def forced_example(
        self, model: AttributionModel, i: int, prompt: list[int], text: str, input_text: str, argument: str
    ) -> tuple[list[int], list[int], int]:
        """``(source ids, target ids, first explained position)`` of example ``i`` forced to output ``text``
        after ``prompt`` (the token ids of ``input_text``); a text that does not fit is refused, naming
        ``argument[i]`` (see `AttributionModel.encode_forced`)."""
        raise NotImplementedError

    def generated_tokens(self, sequence: list[int], prompt_width: int) -> list[int]:
        """What ``generate`` added to a (padded) prompt of ``prompt_width`` tokens."""
        raise NotImplementedError

    def generation_length(self, prompt_length: int, max_new_tokens: int) -> int:
        """The longest target generation can make, which must fit the model's context."""
        raise NotImplementedError

    def contrast_prompt(self, source: list[int], target: list[int], start: int) -> list[int]:
        """The prompt an example was explained after: its source, or its target before the first step."""
        raise NotImplementedError

    def step_logits(
        self, output: Any, positions: Int[Tensor, " steps"], source_mask: Tensor | None
    ) -> Float[Tensor, "n steps vocab"]:
        """The logits of a forward pass's ``output`` that predict the target tokens at ``positions``: position
        ``p - 1`` predicts target token ``p`` (a language model's own logits); ``source_mask`` marks the real
        source tokens of the rows (None without a source)."""
        return output.logits[:, positions - 1]

    reads_chat: ClassVar[bool] = False
    """Prompts may be chat messages (`seqattr.chat`): a decoder-only generator, whose prompt is the start of
    its target."""
    prompt_side: ClassVar[str | None] = None
    """Where a prompt with named segments (`seqattr.segments`) lies: ``"target"`` (decoder-only: the start of
    its target), ``"source"`` (encoder-decoder: the encoder's input), None (no segments: classifiers)."""
    takes_pairs: ClassVar[bool] = False
    """Inputs may be pairs of texts ``(text_a, text_b)`` (a classifier reading two segments)."""
    needs_pairs: ClassVar[bool] = False
    """Inputs must be pairs (extractive QA: a question and its context)."""

    def predictions(
        self, model: AttributionModel, output: Any, prompts: Sequence[list[int]], texts: Sequence[Any]
    ) -> list[list[int]]:
        """A classifier's "generation": the predicted target ids (after the start marker) of each of
        ``prompts`` (the token ids of ``texts``) from one forward pass's ``output`` over them, padded."""
        raise NotImplementedError

    def source_visibility(
        self, attr_pos_start: int, source_len: int, num_steps: int
    ) -> Bool[Tensor, "source_len steps"]:
        """Which source tokens each explained step can see (the others are NaN in the output): all of them,
        except for a causal decoder's tagger (`TokenClassifier`).

        Example:
            >>> TokenClassifier(reads_left_context=True).source_visibility(1, 3, 3).int()
            tensor([[1, 1, 1],
                    [0, 1, 1],
                    [0, 0, 1]], dtype=torch.int32)
        """
        return torch.ones(source_len, num_steps, dtype=torch.bool)

    def scales_of_one_stack(self, scale: float) -> tuple[float | None, float]:
        """``(source, target)`` embedding scales of a model with one embedding stack of factor ``scale``
        (`seqattr.models.embedding_scale`): a decoder's input is its target."""
        return None, scale

    def forced_texts(self, model: AttributionModel, texts: Any) -> Any:
        """The forced outputs of an ``attribute`` call as the request validates them (texts here)."""
        return texts

    def target_tokens(
        self, model: AttributionModel, ids: Sequence[int], source_ids: Sequence[int] = ()
    ) -> list[str]:
        """The target's tokens as outputs show them (an example's ``source_ids`` name QA's positions)."""
        return model.convert_ids_to_tokens(ids)

    def step_tokens(
        self, model: AttributionModel, ids: Sequence[int], source_ids: Sequence[int] = ()
    ) -> list[str]:
        """Names of ids of the steps' vocabulary (chosen tokens and the trace's alternatives)."""
        return model.convert_ids_to_tokens(ids)

    def __repr__(self) -> str:
        return self.name


class DecoderOnly(ModelFamily):
    name = "decoder-only"
    is_encoder_decoder = False
    predictor = "its"
    pads_target_left = True
    reads_chat = True
    prompt_side = "target"

    def prompt_only(self, requested: bool | None) -> bool:
        return requested is False

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        return [max(starts) - s for s in starts]

    def position_ids(self, target_mask: Int[Tensor, "batch target_len"]) -> Int[Tensor, "batch target_len"]:
        # Left padding shifts tokens right: positions must count real tokens only.
        return (target_mask.cumsum(-1) - 1).clamp(min=0)

    def model_inputs(self, batch, rows, embeds, mask) -> dict[str, Any]:
        target_embeds = embeds[1]
        prefix_len = target_embeds.shape[1]
        return {
            "inputs_embeds": target_embeds,
            "attention_mask": mask,
            "position_ids": batch.position_ids[rows, :prefix_len],
        }

    def probe_logits(
        self, model: PreTrainedModel, ids: Int[Tensor, "n length"]
    ) -> Float[Tensor, "n length vocab"]:
        return model(input_ids=ids, use_cache=False).logits

    def generated_example(self, prompt, generation, decoder_start_id):
        return [], prompt + generation, len(prompt)

    def forced_example(self, model, i, prompt, text, input_text, argument):
        if not text.startswith(input_text):
            raise ValueError(
                f"{argument}[{i}] must start with its prompt (decoder-only models continue their input): "
                f"{text[:60]!r} does not start with {input_text[:60]!r}. Pass prompt + continuation."
            )
        full = model.tokenizer(text)["input_ids"]
        if full[: len(prompt)] != prompt:
            raise ValueError(
                f"{argument}[{i}] tokenizes differently from its prompt at the boundary: the prompt's tokens "
                f"{model.convert_ids_to_tokens(prompt[-3:])} are not a prefix of the text's tokens "
                f"{model.convert_ids_to_tokens(full[max(0, len(prompt) - 3) : len(prompt) + 1])}. "
                "End the prompt where a token ends (e.g. drop a trailing space)."
            )
        if len(full) == len(prompt):
            raise ValueError(f"{argument}[{i}] adds no tokens to its prompt: there is nothing to explain")
        model.check_length(len(full), f"{argument}[{i}]")
        return [], full, len(prompt)

    def generated_tokens(self, sequence: list[int], prompt_width: int) -> list[int]:
        return sequence[prompt_width:]

    def generation_length(self, prompt_length: int, max_new_tokens: int) -> int:
        return prompt_length + max_new_tokens  # the prompt and its continuation share the context

    def contrast_prompt(self, source, target, start):
        return target[:start]


class EncoderDecoder(ModelFamily):
    name = "encoder-decoder"
    is_encoder_decoder = True
    predictor = "its decoder's"
    pads_target_left = False
    prompt_side = "source"

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        if len(set(starts)) > 1:  # batch_spans splits the examples where the start changes
            raise ValueError("encoder-decoder examples in one batch must share attr_pos_start")
        return [0] * len(starts)

    def source_tensors(self, examples, pad_token_id):
        return padded_sources(examples, pad_token_id, left=False)

    def batch_spans(self, examples, batch_size):
        # Learned decoder positions cannot be shifted to align different first steps (a negative
        # attr_pos_start resolves per example): cut where the start changes.
        spans = []
        for start, stop in super().batch_spans(examples, batch_size):
            cuts = [
                i
                for i in range(start + 1, stop)
                if examples[i].attr_pos_start != examples[i - 1].attr_pos_start
            ]
            bounds = [start, *cuts, stop]
            spans += list(zip(bounds[:-1], bounds[1:], strict=True))
        return spans

    def model_inputs(self, batch, rows, embeds, mask) -> dict[str, Any]:
        return {
            "inputs_embeds": embeds[0],
            "attention_mask": batch.source_mask[rows],
            "decoder_inputs_embeds": embeds[1],
            "decoder_attention_mask": mask,
        }

    def probe_logits(
        self, model: PreTrainedModel, ids: Int[Tensor, "n length"]
    ) -> Float[Tensor, "n length vocab"]:
        source = ids[:1].expand(ids.shape[0], -1)
        return model(input_ids=source, decoder_input_ids=ids, use_cache=False).logits

    def generated_example(self, prompt, generation, decoder_start_id):
        return prompt, [decoder_start_id, *generation], 1

    def forced_example(self, model, i, prompt, text, input_text, argument):
        target = model.tokenizer(text_target=text)["input_ids"]
        model.check_length(len(target) + 1, f"{argument}[{i}]")
        return prompt, [model.model.generation_config.decoder_start_token_id, *target], 1

    def generated_tokens(self, sequence: list[int], prompt_width: int) -> list[int]:
        return sequence[1:]  # after the decoder start token

    def generation_length(self, prompt_length: int, max_new_tokens: int) -> int:
        return 1 + max_new_tokens  # the output (after its start token) has the decoder's positions to itself

    def contrast_prompt(self, source, target, start):
        return source


LABEL_START = 0
"""The id of a classifier target's first token, a start marker (never explained, like a decoder start)."""
LABEL_START_NAME = "<label>"


class Classifier(ModelFamily):
    """What the classifier families share: the text (or pair of texts) is the source, attributed and never
    masked (a bidirectional encoder's prediction sees every token); the target is `LABEL_START` then the
    explained labels, starting at ``attr_pos_start = 1``; "generation" is one forward pass's prediction
    (`predictions`), and the head's logits are the steps' "next-token" logits, so the step functions read
    the label set (or, for extractive QA, the input's positions) as their vocabulary."""

    is_encoder_decoder = False
    predictor = "its classification head's"
    pads_target_left = False
    generates = False
    checks_causality = False  # its steps see the whole text: nothing to be causal about

    def attributes_source(self) -> bool:
        return True

    def attributes_target(self, requested: bool | None) -> bool:
        if requested:
            raise ValueError(
                "attribute_target=True: a classifier's target is its label, with no prefix to attribute to; "
                "its attributions go to the input text (drop attribute_target)"
            )
        return False

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        if len(set(starts)) > 1:  # batch_spans splits the examples where the start changes
            raise ValueError("classifier examples in one batch must share attr_pos_start")
        return [0] * len(starts)

    def source_tensors(self, examples, pad_token_id):
        return padded_sources(examples, pad_token_id, left=False)

    def target_pad_id(self, pad_token_id: int) -> int:
        return LABEL_START

    def batch_spans(self, examples, batch_size):
        # Targets are padded on the right, so a step column is one position only if the first steps agree
        # (a negative attr_pos_start resolves per example): cut where the start changes.
        return cut_where(super().batch_spans(examples, batch_size), examples, lambda e: e.attr_pos_start)

    def model_inputs(self, batch, rows, embeds, mask) -> dict[str, Any]:
        return {"inputs_embeds": embeds[0], "attention_mask": batch.source_mask[rows]}

    def scales_of_one_stack(self, scale: float) -> tuple[float | None, float]:
        return scale, 1.0  # the text is the source

    def prompt_padding_left(self) -> bool:
        return False  # the prediction pass pads as the attribution batches do

    def generated_example(self, prompt, generation, decoder_start_id):
        return prompt, [LABEL_START, *generation], 1

    def generation_length(self, prompt_length: int, max_new_tokens: int) -> int:
        return prompt_length  # nothing is generated

    def contrast_prompt(self, source, target, start):
        return source

    def target_tokens(self, model, ids, source_ids=()):
        return [LABEL_START_NAME, *self.step_tokens(model, ids[1:], source_ids)]

    def step_tokens(self, model, ids, source_ids=()):
        return [label_name(model.model.config, int(i)) for i in ids]


class SequenceClassifier(Classifier):
    """A ``*ForSequenceClassification`` model: one step per text, explaining one label.

    An example's source is the text's token ids (or a pair's: ``(text_a, text_b)``), its target
    ``[LABEL_START, label]`` with the label explained. Encoders (BERT, RoBERTa, DistilBERT: they read their
    first token) take texts padded on the right. Classifiers that pool their last token (decoder-based ones:
    Llama, Qwen2, GPT-2 heads) cannot be padded: from ``inputs_embeds`` transformers reads the last position
    whatever the mask says, so only texts of one length share a batch.

    A multi-label classifier (``config.problem_type == "multi_label_classification"``) has one step per
    label it explains: by default each label whose ``sigmoid(logit)`` passes 0.5 (the most probable one when
    none does), in label order; the step functions and the trace read ``sigmoid(logit)`` as the label's
    probability (`seqattr.step_functions.log_probabilities`).
    """

    task = "sequence-classification"
    takes_pairs = True

    def __init__(self, pools_last_token: bool, multi_label: bool = False) -> None:
        self.pools_last_token = pools_last_token
        self.multi_label = multi_label
        self.name = (
            "sequence-classifier"
            + (" (decoder-based)" if pools_last_token else "")
            + (" (multi-label)" if multi_label else "")
        )

    def batch_spans(self, examples, batch_size):
        spans = super().batch_spans(examples, batch_size)
        if not self.pools_last_token:
            return spans
        # A padded text's last position would be a pad: cut where the length changes.
        return cut_where(spans, examples, lambda e: len(e.source_ids))

    def step_logits(self, output, positions, source_mask):
        return output.logits[:, None].expand(-1, len(positions), -1)  # the one step, at target position 1

    def prompt_padding_left(self) -> bool:
        return self.pools_last_token

    def predictions(self, model, output, prompts, texts):
        if not self.multi_label:
            return [[int(label)] for label in output.logits.argmax(-1)]
        above = torch.sigmoid(output.logits.float()) > MULTI_LABEL_THRESHOLD
        return [
            row.nonzero()[:, 0].tolist() if bool(row.any()) else [int(best)]
            for row, best in zip(above, output.logits.argmax(-1), strict=True)
        ]

    def forced_example(self, model, i, prompt, text, input_text, argument):
        config, what = model.model.config, f"{argument}[{i}]"
        if self.multi_label and text.startswith(LABELS_MARK):
            return prompt, [LABEL_START, *(int(k) for k in text.removeprefix(LABELS_MARK).split())], 1
        names = {str(name) for name in config.id2label.values()}
        if self.multi_label and text not in names and len(text.split()) > 1:
            # Several labels of one text as a command line gives them: "toxic insult".
            return prompt, [LABEL_START, *(label_id(config, label, what) for label in text.split())], 1
        return prompt, [LABEL_START, label_id(config, text, what)], 1

    def forced_texts(self, model, texts):
        if self.multi_label:
            return self._forced_label_sets(model, texts)
        # Labels given by index (or name) become names, checked before anything runs.
        labels = [texts] if isinstance(texts, (str, int)) else texts
        config = model.model.config
        try:
            return [
                label_name(config, label_id(config, label, f"target[{i}]")) for i, label in enumerate(labels)
            ]
        except TypeError:  # not a list: the request says what it takes
            return texts

    def _forced_label_sets(self, model: AttributionModel, texts: Any) -> Any:
        # A multi-label target is a label (name or index) or a list of labels for one text, a list of such
        # lists for several; each text's labels travel as one string of indices, checked here.
        if isinstance(texts, (str, int)):
            texts = [[texts]]
        elif isinstance(texts, Sequence) and texts and not any(isinstance(t, (list, tuple)) for t in texts):
            texts = [texts]
        if not isinstance(texts, Sequence):
            return texts  # the request says what it takes
        config = model.model.config
        forced = []
        for i, labels in enumerate(texts):
            labels = [labels] if isinstance(labels, (str, int)) else list(labels)
            if not labels:
                raise ValueError(f"target[{i}] names no label; give at least one label to explain")
            ids = [label_id(config, label, f"target[{i}]") for label in labels]
            forced.append(LABELS_MARK + " ".join(map(str, ids)))
        return forced


class TokenClassifier(Classifier):
    """A ``*ForTokenClassification`` model (a tagger: named entities, parts of speech): one step per token.

    The target is ``[LABEL_START, tag of token 0, tag of token 1, ...]``: step ``j`` explains the tag of
    source token ``j`` (special tokens included), so target position ``p`` reads the head's logits at source
    position ``p - 1``, and one forward pass gives every step's logits (the fused engine). A bidirectional
    encoder has no causal mask: every step sees every token. A causal decoder's tagger (Llama, Qwen2:
    `reads_left_context`) tags a token from it and the tokens before it: the tokens after it are unseen, NaN
    in the step's column (`source_visibility`). Texts are padded on the right.
    """

    task = "token-classification"

    def __init__(self, reads_left_context: bool = False) -> None:
        self.reads_left_context = reads_left_context
        self.name = "token-classifier" + (" (decoder-based)" if reads_left_context else "")

    def source_visibility(self, attr_pos_start, source_len, num_steps):
        visible = super().source_visibility(attr_pos_start, source_len, num_steps)
        if not self.reads_left_context:
            return visible
        # Step j tags source token attr_pos_start - 1 + j, which sees itself and the tokens before it.
        tagged = attr_pos_start - 1 + torch.arange(num_steps)
        return visible & (torch.arange(source_len)[:, None] <= tagged[None, :])

    def predictions(self, model, output, prompts, texts):
        tags = output.logits.argmax(-1)
        return [tags[row, : len(prompt)].tolist() for row, prompt in enumerate(prompts)]

    def forced_example(self, model, i, prompt, text, input_text, argument):
        config = model.model.config
        tags = [label_id(config, tag, f"{argument}[{i}]") for tag in text.split()]
        special = set(model.tokenizer.all_special_ids)
        own = [p for p, token in enumerate(prompt) if token not in special]
        if len(tags) == len(own) != len(prompt):  # words' tags only: special tokens keep the predicted tag
            full = model.predict([prompt], [input_text])[0]
            for position, tag in zip(own, tags, strict=True):
                full[position] = tag
            tags = full
        if len(tags) != len(prompt):
            raise ValueError(
                f"{argument}[{i}] gives {len(tags)} tag(s) for a text of {len(prompt)} tokens ({len(own)} "
                f"without special tokens: {model.convert_ids_to_tokens([prompt[p] for p in own])}); give one "
                "tag per token, with or without the special tokens"
            )
        return prompt, [LABEL_START, *tags], 1

    def forced_texts(self, model, texts):
        # One text's tags are a list of tag names (or indices); several texts take a list of such lists.
        # The request holds texts: each text's tags become one space-separated string of names.
        if isinstance(texts, str):
            return [texts]
        if not isinstance(texts, Sequence) or not texts:
            return texts
        lists = texts if all(isinstance(t, (list, tuple)) for t in texts) else [texts]
        config = model.model.config
        forced = []
        for i, tags in enumerate(lists):
            if isinstance(tags, str):
                forced.append(tags)
                continue
            names = [label_name(config, label_id(config, tag, f"target[{i}]")) for tag in tags]
            if any(not name or any(c.isspace() for c in name) for name in names):
                raise ValueError(f"target[{i}]: tag names with spaces cannot be given; give their indices")
            forced.append(" ".join(names))
        return forced


QA_STEPS = ("start", "end")
"""The two steps of an extractive QA example: the answer's first and last token."""


class QuestionAnswerer(Classifier):
    """A ``*ForQuestionAnswering`` model (extractive QA): two steps, the answer span's start and end.

    The source is the tokenized pair ``(question, context)``; the target ``[LABEL_START, start, end]`` holds
    the span's source positions, and the "vocabulary" of a step is the input's positions: its logits are the
    head's start (or end) logits, padding masked out so that a batched text scores as it does alone. One
    forward pass gives both steps (the fused engine). A position is named by its token:
    ``"paris@12"``.
    """

    name = "question-answerer"
    task = "question-answering"
    takes_pairs = True
    needs_pairs = True
    max_answer_tokens: ClassVar[int] = 30
    """The longest span the prediction considers (as transformers' question-answering pipeline)."""

    def step_logits(self, output, positions, source_mask):
        logits = torch.stack([output.start_logits, output.end_logits], dim=1)  # target positions 1 and 2
        logits = logits.masked_fill(~source_mask.bool()[:, None], torch.finfo(logits.dtype).min)
        return logits[:, positions - 1]

    def predictions(self, model, output, prompts, texts):
        spans = []
        for row, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            context = context_positions(model, text, len(prompt))
            start, end = output.start_logits[row, context], output.end_logits[row, context]
            scores = start[:, None] + end[None, :]
            offsets = torch.arange(len(context))
            allowed = (offsets[None, :] >= offsets[:, None]) & (
                offsets[None, :] - offsets[:, None] < self.max_answer_tokens
            )
            best = int(scores.masked_fill(~allowed.to(scores.device), float("-inf")).argmax())
            spans.append([context[best // len(context)], context[best % len(context)]])
        return spans

    def forced_example(self, model, i, prompt, text, input_text, argument):
        question, context = input_text
        what = f"{argument}[{i}]"
        if text.startswith(SPAN_MARK):
            start, end = (int(p) for p in text.removeprefix(SPAN_MARK).split())
            if not 0 <= start <= end < len(prompt):
                raise ValueError(
                    f"{what}: the span ({start}, {end}) is not a pair of token positions 0 <= start <= end < "
                    f"{len(prompt)} of the tokenized question and context; give positions inside it"
                )
            return prompt, [LABEL_START, start, end], 1
        where = context.find(text)
        if where < 0:
            raise ValueError(
                f"{what}: the answer {text[:60]!r} is not in the context; give a piece of the context, or "
                "the span's token positions as a (start, end) pair"
            )
        encoding = model.tokenizer(question, context, return_offsets_mapping=True)
        sequence = encoding.sequence_ids()
        tokens = [
            p
            for p, (a, b) in enumerate(encoding["offset_mapping"])
            if sequence[p] == 1 and b > where and a < where + len(text)
        ]
        return prompt, [LABEL_START, tokens[0], tokens[-1]], 1

    def forced_texts(self, model, texts):
        # A span is an answer text or a (start, end) pair of token positions; several examples, a list.
        if isinstance(texts, str) or is_span(texts):
            texts = [texts]
        if not isinstance(texts, Sequence):
            return texts
        return [f"{SPAN_MARK}{t[0]} {t[1]}" if is_span(t) else t for t in texts]

    def step_tokens(self, model, ids, source_ids=()):
        tokens = model.convert_ids_to_tokens(source_ids)
        return [f"{tokens[int(i)]}@{int(i)}" if int(i) < len(tokens) else f"@{int(i)}" for i in ids]


LABELS_MARK = "\x00labels "
"""How a multi-label target (label indices) travels in the request's texts."""

SPAN_MARK = "\x00span "
"""How a forced answer span given as token positions travels in the request's texts."""


def is_span(value: Any) -> bool:
    """Whether ``value`` is a ``(start, end)`` pair of token positions."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def context_positions(model: AttributionModel, pair: tuple[str, str], length: int) -> list[int]:
    """The positions of the context's tokens in the tokenized ``(question, context)`` pair."""
    sequence = model.tokenizer(*pair).sequence_ids()
    positions = [p for p in range(length) if sequence[p] == 1]
    return positions or list(range(length))


def cut_where(spans: list[tuple[int, int]], examples: Sequence[EncodedExample], key) -> list[tuple[int, int]]:
    """``spans`` cut where ``key`` of consecutive examples changes.

    Example:
        >>> from seqattr.models.batch import EncodedExample
        >>> examples = [EncodedExample([1] * n, [0, 1], 1, 2) for n in (2, 2, 3)]
        >>> cut_where([(0, 3)], examples, lambda e: len(e.source_ids))
        [(0, 2), (2, 3)]
    """
    cut = []
    for start, stop in spans:
        bounds = [
            start,
            *(i for i in range(start + 1, stop) if key(examples[i]) != key(examples[i - 1])),
            stop,
        ]
        cut += list(zip(bounds[:-1], bounds[1:], strict=True))
    return cut


def label_name(config: PretrainedConfig, index: int) -> str:
    """The name of label ``index`` (``config.id2label``; its index as text when unnamed).

    Example:
        >>> from seqattr.testing import tiny_classifier
        >>> label_name(tiny_classifier("bert")[0].config, 1)
        'positive'
    """
    return str(config.id2label.get(index, index))


def label_id(config: PretrainedConfig, label: str | int, what: str = "target") -> int:
    """The index of ``label``: a name of ``config.id2label``, or an index; anything else is refused, listing
    the labels.

    Example:
        >>> from seqattr.testing import tiny_classifier
        >>> config = tiny_classifier("bert")[0].config
        >>> label_id(config, "positive"), label_id(config, 0)
        (1, 0)
        >>> label_id(config, "neutral")
        Traceback (most recent call last):
        ...
        ValueError: target 'neutral' is not a label of this classifier; its labels: 0='negative', 1='positive'
    """
    names = {str(name): int(index) for index, name in config.id2label.items()}
    if isinstance(label, str) and label in names:
        return names[label]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < config.num_labels:
        return label
    listed = ", ".join(f"{index}={name!r}" for name, index in sorted(names.items(), key=lambda kv: kv[1]))
    raise ValueError(f"{what} {label!r} is not a label of this classifier; its labels: {listed}")


def padded_sources(
    examples: Sequence[EncodedExample], pad_token_id: int, left: bool
) -> tuple[Int[Tensor, "batch source_len"], Int[Tensor, "batch source_len"]]:
    """The examples' source ids padded to one length on the ``left`` or the right, and their mask.

    Example:
        >>> from seqattr.models.batch import EncodedExample
        >>> examples = [EncodedExample([5, 6], [0, 1], 1, 2), EncodedExample([7], [0, 0], 1, 2)]
        >>> padded_sources(examples, 0, left=True)[0]
        tensor([[5, 6],
                [0, 7]])
    """
    source_len = max(len(e.source_ids) for e in examples)
    source_ids = torch.full((len(examples), source_len), pad_token_id, dtype=torch.long)
    source_mask = torch.zeros_like(source_ids)
    for i, example in enumerate(examples):
        n = len(example.source_ids)
        span = slice(source_len - n, source_len) if left else slice(0, n)
        source_ids[i, span] = torch.tensor(example.source_ids, dtype=torch.long)
        source_mask[i, span] = 1
    return source_ids, source_mask


DECODER_ONLY = DecoderOnly()
ENCODER_DECODER = EncoderDecoder()

CLASSIFIER_HEADS = {
    "ForSequenceClassification": "sequence classification",
    "ForTokenClassification": "token classification",
    "ForQuestionAnswering": "extractive question answering",
}
"""The classification heads seqattr explains, by the suffix of their transformers class."""


def classifier_head(model: PreTrainedModel | str) -> str | None:
    """The classification head of ``model`` (or of a transformers class name): a `CLASSIFIER_HEADS`
    suffix, or None.

    Example:
        >>> classifier_head("BertForSequenceClassification"), classifier_head(hf_model)
        ('ForSequenceClassification', None)
    """
    name = model if isinstance(model, str) else type(model).__name__
    return next((suffix for suffix in CLASSIFIER_HEADS if name.endswith(suffix)), None)


def reads_left_context(model: PreTrainedModel) -> bool:
    """Whether a classifier's base model is causal (Llama, Qwen2, GPT-2 heads: a token sees only the tokens
    before it, so a sequence classifier reads its last token) rather than a bidirectional encoder, measured
    on two probe rows sharing their first half."""
    vocab = model.get_input_embeddings().num_embeddings
    first = torch.arange(3, 11) % vocab
    second = first.clone()
    second[4:] = (first[4:] + 5) % vocab
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.stack([first, second]).to(model.device)).last_hidden_state
    change = (hidden[0] - hidden[1]).float().abs()
    return bool(change[:4].max() <= 1e-4 * change[4:].max())


def family_of(model: PreTrainedModel | PretrainedConfig) -> ModelFamily:
    """The family of a model (or of a generative model's config).

    Example:
        >>> from seqattr.testing import tiny_classifier
        >>> family_of(hf_model.config), family_of(tiny_classifier("bert")[0])
        (decoder-only, sequence-classifier)
    """
    if isinstance(model, PreTrainedModel):
        head = classifier_head(model)
        if head == "ForSequenceClassification":
            multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
            return SequenceClassifier(reads_left_context(model), multi_label)
        if head == "ForTokenClassification":
            return TokenClassifier(reads_left_context(model))
        if head == "ForQuestionAnswering":
            return QuestionAnswerer()
        model = model.config
    return ENCODER_DECODER if getattr(model, "is_encoder_decoder", False) else DECODER_ONLY
