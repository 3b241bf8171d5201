"""Model families: what differs between decoder-only and encoder-decoder models, in one place.

A decoder-only model reads one sequence, prompt then continuation: the target is the whole sequence, the
first explained step is the first generated token, prompts are padded on the left for generation and targets
are left-padded so that every example's first step lands on one column. An encoder-decoder model reads the
source in its encoder; its target starts with the decoder start token (never explained), targets are padded
on the right (learned decoder positions must not move), and examples with different first steps cannot share
a batch. Everything else in seqattr asks the family (``model.family``) instead of branching on the config.

Adding a family (e.g. a classifier, issue 14) means one more subclass here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import PretrainedConfig, PreTrainedModel

from seqattr.typing import Float, Int, Tensor

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

    def attributes_source(self) -> bool:
        """Whether attributions go to a separate source (the encoder input)."""
        return self.is_encoder_decoder

    def attributes_target(self, requested: bool) -> bool:
        """Whether attributions go to the target prefix: always for decoder-only (the prompt is there)."""
        return requested or not self.is_encoder_decoder

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        """Padded index of each example's first target token, given each one's first explained position."""
        raise NotImplementedError

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

    def __repr__(self) -> str:
        return self.name


class DecoderOnly(ModelFamily):
    name = "decoder-only"
    is_encoder_decoder = False
    predictor = "its"
    pads_target_left = True

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

    def target_offsets(self, starts: Sequence[int]) -> list[int]:
        if len(set(starts)) > 1:  # batch_spans splits the examples where the start changes
            raise ValueError("encoder-decoder examples in one batch must share attr_pos_start")
        return [0] * len(starts)

    def source_tensors(self, examples, pad_token_id):
        source_len = max(len(e.source_ids) for e in examples)
        source_ids = torch.full((len(examples), source_len), pad_token_id, dtype=torch.long)
        source_mask = torch.zeros_like(source_ids)
        for i, example in enumerate(examples):
            source_ids[i, : len(example.source_ids)] = torch.tensor(example.source_ids)
            source_mask[i, : len(example.source_ids)] = 1
        return source_ids, source_mask

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


DECODER_ONLY = DecoderOnly()
ENCODER_DECODER = EncoderDecoder()


def family_of(config: PretrainedConfig) -> ModelFamily:
    """The family of a model's config.

    Example:
        >>> family_of(hf_model.config)
        decoder-only
    """
    return ENCODER_DECODER if getattr(config, "is_encoder_decoder", False) else DECODER_ONLY
