"""Examples turned into the padded tensors the engine runs the model on.

The padding puts every example's first explained step at the same index, so step column ``j`` is one
position for the whole batch: decoder-only targets are padded on the left by ``first_step - attr_pos_start``
(and on the right to the longest), encoder-decoder targets only on the right (their learned decoder positions
must not move) and share ``attr_pos_start``. Padded positions are masked out; a batched result equals the
single-example one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqattr.typing import Bool, Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.family import ModelFamily
    from seqattr.segments import PromptLayout


@dataclass
class EncodedExample:
    """One example's token ids and the window of target positions to explain,
    ``[attr_pos_start, attr_pos_end)``."""

    source_ids: list[int]
    target_ids: list[int]
    attr_pos_start: int
    attr_pos_end: int
    prompt_len: int | None = None
    """Target tokens that came from the prompt (decoder-only; the rest were generated or forced). None: the
    first explained position (the default window starts right after the prompt)."""
    layout: PromptLayout | None = None
    """The prompt's parts and scaffolding (chat messages, named segments; `seqattr.segments`), or None."""


@dataclass
class AttributionBatch:
    """Model-ready tensors of several examples. ``source_*`` is None for decoder-only models."""

    source_ids: Int[Tensor, "batch source_len"] | None
    source_mask: Int[Tensor, "batch source_len"] | None
    target_ids: Int[Tensor, "batch target_len"]
    target_mask: Int[Tensor, "batch target_len"]
    position_ids: Int[Tensor, "batch target_len"] | None
    target_offsets: Int[Tensor, " batch"]
    """Padded index of each example's first target token."""
    step_positions: Int[Tensor, " steps"]
    """Padded target index of the token predicted at each step column (shared by the batch)."""
    step_mask: Bool[Tensor, "batch steps"]
    """Which step columns are real steps of each example."""
    examples: list[EncodedExample]

    @property
    def size(self) -> int:
        return self.target_ids.shape[0]

    @property
    def num_steps(self) -> int:
        return self.step_positions.shape[0]

    @property
    def step_target_ids(self) -> Int[Tensor, "batch steps"]:
        return self.target_ids[:, self.step_positions]

    def generated_prefix(self) -> Bool[Tensor, "batch target_len"]:
        """True at every example's generated (or forced) target tokens, after its prompt: what prompt-only
        attribution (``attribute_target=False`` on a decoder-only model) holds at its tokens.

        Example:
            >>> from seqattr.models.family import DECODER_ONLY
            >>> examples = [EncodedExample([], [5, 6, 7], 2, 3), EncodedExample([], [5, 6, 7, 8], 3, 4, 2)]
            >>> AttributionBatch.from_examples(examples, 0, DECODER_ONLY, "cpu").generated_prefix().int()
            tensor([[0, 0, 0, 1],
                    [0, 0, 1, 1]], dtype=torch.int32)
        """
        positions = torch.arange(self.target_ids.shape[1], device=self.target_ids.device)
        prompt_ends = torch.tensor(
            [e.attr_pos_start if e.prompt_len is None else e.prompt_len for e in self.examples],
            device=self.target_ids.device,
        )
        after_prompt = positions[None, :] >= (self.target_offsets.to(positions.device) + prompt_ends)[:, None]
        return after_prompt & self.target_mask.bool()

    def visible_target(self) -> Bool[Tensor, "batch target_len steps"]:
        """True where step ``t`` can see target position ``p``: a real token before the predicted one."""
        positions = torch.arange(self.target_ids.shape[1], device=self.target_ids.device)
        before = positions[:, None] < self.step_positions[None, :]
        return before[None] & self.target_mask.bool()[:, :, None] & self.step_mask[:, None, :]

    @classmethod
    def from_examples(
        cls, examples: list[EncodedExample], pad_token_id: int, family: ModelFamily, device: torch.device
    ) -> AttributionBatch:
        """Pad ``examples`` as their model ``family`` needs (see the module docstring).

        Example:
            >>> from seqattr.models.family import DECODER_ONLY
            >>> examples = [EncodedExample([], [5, 6, 7], 2, 3), EncodedExample([], [5, 6, 7, 8], 3, 4)]
            >>> AttributionBatch.from_examples(examples, 0, DECODER_ONLY, "cpu").target_ids
            tensor([[0, 5, 6, 7],
                    [5, 6, 7, 8]])
        """
        starts = [e.attr_pos_start for e in examples]
        first_step = max(starts)
        offsets = family.target_offsets(starts)
        target_len = max(o + len(e.target_ids) for o, e in zip(offsets, examples, strict=True))
        num_steps = max(e.attr_pos_end - e.attr_pos_start for e in examples)

        target_ids = torch.full(
            (len(examples), target_len), family.target_pad_id(pad_token_id), dtype=torch.long
        )
        target_mask = torch.zeros_like(target_ids)
        step_mask = torch.zeros(len(examples), num_steps, dtype=torch.bool)
        for i, (offset, example) in enumerate(zip(offsets, examples, strict=True)):
            n = len(example.target_ids)
            target_ids[i, offset : offset + n] = torch.tensor(example.target_ids)
            target_mask[i, offset : offset + n] = 1
            step_mask[i, : example.attr_pos_end - example.attr_pos_start] = True
        source_ids, source_mask = family.source_tensors(examples, pad_token_id)
        position_ids = family.position_ids(target_mask)

        def on_device(values: Tensor | None) -> Tensor | None:
            return None if values is None else values.to(device)

        return cls(
            source_ids=on_device(source_ids),
            source_mask=on_device(source_mask),
            target_ids=target_ids.to(device),
            target_mask=target_mask.to(device),
            position_ids=on_device(position_ids),
            target_offsets=torch.tensor(offsets, device=device),
            step_positions=torch.arange(first_step, first_step + num_steps, device=device),
            step_mask=step_mask.to(device),
            examples=examples,
        )


def additive_causal_mask(
    mask: Int[Tensor, "n length"], dtype: torch.dtype
) -> Float[Tensor, "n 1 length length"]:
    """A decoder-only batch's attention as the 4D additive mask eager attention adds to its scores: 0 where a
    query may attend (itself and earlier real tokens), a large negative elsewhere; a padding query attends to
    itself so that no row is masked entirely.

    Why: transformers fills masked entries with ``finfo(dtype).min``, which Llama's and Qwen2's eager
    attention cast to float32 for the softmax; from float64 that is ``-inf``, a left-padding row masked
    entirely becomes NaN and, as ``0 x NaN``, reaches the real tokens' values in the next layer. The bound
    here stays finite in float32 (and in half precision).

    Example:
        >>> additive_causal_mask(torch.tensor([[0, 1, 1]]), torch.float64)[0, 0]
        tensor([[ 0.0000e+00, -1.0000e+30, -1.0000e+30],
                [-1.0000e+30,  0.0000e+00, -1.0000e+30],
                [-1.0000e+30,  0.0000e+00,  0.0000e+00]], dtype=torch.float64)
    """
    length = mask.shape[1]
    real = mask.bool()
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=mask.device)
    allowed = causal[None] & (real[:, None, :] | (diagonal[None] & ~real[:, :, None]))
    fill = max(torch.finfo(dtype).min, -1e30)
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, fill)[:, None]
