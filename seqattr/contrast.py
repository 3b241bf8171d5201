"""Contrastive attribution: the original sequence against a contrast sequence, step by aligned step.

"Why did the model say *y* and not *y'*?" The contrast sequence is the original one with another output
(``contrast_targets``), another input (``contrast_sources``), or both. Decoder-only models: a contrast
source is an alternative prompt and a contrast target is a full text starting with the contrast prompt (by
default the original prompt); without contrast targets the contrast continues its prompt with the original
continuation's tokens. Encoder-decoder models: a contrast source is an alternative encoder input, a
contrast target an alternative output text.

Step alignment. Each explained original step (continuation index ``i``: 0 is the first generated token) is
compared with one contrast step (contrast continuation index ``j``): position by position when both
continuations have the same length, else (or with ``"auto"``) by a token-level edit-distance alignment; or
by explicit pairs ``[(i, j), ...]``. An original token the edit distance deletes faces the contrast token
that follows the contrast prefix aligned so far (``the big cat`` vs ``the cat``: ``big`` faces ``cat``).

Shared inputs (how gradients and perturbations reach the contrast term). A contrast input token is
*shared* with an original input token when the edit-distance alignment of the two input sequences (encoder
inputs with each other, decoder inputs with each other) pairs them and they are the same token id. A shared
contrast token reads the attributed (possibly perturbed, interpolated or gradient-tracked) embedding of its
original token, so the contrast term's effect lands on that token; other contrast tokens keep their own
embeddings, constant. Without ``contrast_sources``, an encoder-decoder's whole source is shared; a
decoder-only prompt is shared wherever its tokens are unchanged.

Example:
    >>> out = model.attribute(
    ...     "The capital of Germany is", "The capital of Germany is Berlin",
    ...     contrast_targets="The capital of Germany is Paris", attributed_fn="contrast_prob_diff")
    >>> out[0].steps, out.info["attributed_fn"]     # why "Berlin" rather than "Paris"
    (['ĠBerlin'], 'contrast_prob_diff')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from seqattr.models.batch import AttributionBatch, EncodedExample
from seqattr.typing import Float, Int, Tensor

if TYPE_CHECKING:
    from seqattr.models.attribution_model import AttributionModel

Alignment = list[tuple[int, int]]


def align_tokens(original: Sequence[int], contrast: Sequence[int]) -> Alignment:
    """Pairs ``(i, j)`` of a minimum edit-distance alignment (matches and substitutions), increasing in both.

    Unit costs for insertion, deletion and substitution; ties prefer a match or substitution, then a deletion.
    A common prefix and suffix are aligned directly, so the quadratic table covers only where the two differ.

    Example:
        >>> align_tokens([5, 6, 7], [5, 9, 6, 7])       # 9 inserted
        [(0, 0), (1, 2), (2, 3)]
    """
    original, contrast = list(original), list(contrast)
    head = 0
    while head < min(len(original), len(contrast)) and original[head] == contrast[head]:
        head += 1
    tail = 0
    while tail < min(len(original), len(contrast)) - head and original[-1 - tail] == contrast[-1 - tail]:
        tail += 1
    a, b = original[head : len(original) - tail], contrast[head : len(contrast) - tail]
    # cost[x][y]: edit distance between a[x:] and b[y:]; filled backwards so the walk below goes forwards.
    cost = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for x in range(len(a), -1, -1):
        for y in range(len(b), -1, -1):
            if x == len(a) or y == len(b):
                cost[x][y] = (len(a) - x) + (len(b) - y)
            else:
                cost[x][y] = min(cost[x + 1][y + 1] + (a[x] != b[y]), cost[x + 1][y] + 1, cost[x][y + 1] + 1)
    pairs = [(k, k) for k in range(head)]
    x = y = 0
    while x < len(a) and y < len(b):
        if cost[x][y] == cost[x + 1][y + 1] + (a[x] != b[y]):
            pairs.append((head + x, head + y))
            x, y = x + 1, y + 1
        elif cost[x][y] == cost[x + 1][y] + 1:
            x += 1
        else:
            y += 1
    pairs += [(len(original) - tail + k, len(contrast) - tail + k) for k in range(tail)]
    return pairs


def shared_positions(original: Sequence[int], contrast: Sequence[int]) -> list[int]:
    """For each contrast position, the original position it shares (same token, aligned), else -1.

    Example:
        >>> shared_positions([5, 6, 7], [5, 8, 7])
        [0, -1, 2]
    """
    shared = [-1] * len(contrast)
    for i, j in align_tokens(original, contrast):
        if original[i] == contrast[j]:
            shared[j] = i
    return shared


def align_steps(
    original: Sequence[int],
    contrast: Sequence[int],
    spec: Any,
    explained: range,
    where: str,
    eos_ids: frozenset[int] = frozenset(),
) -> dict[int, int]:
    """The contrast continuation index facing each explained original continuation index.

    ``spec``: None (position by position when the lengths match, else ``"auto"``), ``"auto"`` (edit distance)
    or explicit pairs ``[(i, j), ...]``. ``where`` names the example in error messages. An automatic
    alignment that would make an original token (not itself an end of sequence) face the contrast's
    end-of-sequence token (``eos_ids``) is refused: with a much shorter contrast (an encoder-decoder target
    ends with EOS) every step past its length would silently be compared with that EOS.

    Example:
        >>> align_steps([5, 6, 7], [5, 7], "auto", range(3), "example 0")     # 6 deleted: it faces 7
        {0: 0, 1: 1, 2: 1}
    """
    if not contrast:
        raise ValueError(
            f"{where}: the contrast adds no tokens after its prompt; there is nothing to compare"
        )
    if spec is None and len(original) == len(contrast):
        return {i: i for i in explained}
    if spec is None or spec == "auto":
        mapping, next_j = {}, 0
        matched = dict(align_tokens(original, contrast))
        for i in range(len(original)):
            mapping[i] = matched.get(i, next_j)
            next_j = mapping[i] + (i in matched)
        missing = [i for i in explained if mapping[i] >= len(contrast)]
        if missing:
            raise ValueError(
                f"{where}: original continuation token(s) {missing} have no counterpart in the contrast "
                "target "
                f"(they are deleted at its end, where no contrast token follows); pass explicit "
                f"contrast_targets_alignments=[(i, j), ...] or a longer contrast target"
            )
        to_eos = [i for i in explained if original[i] not in eos_ids and contrast[mapping[i]] in eos_ids]
        if to_eos:
            raise ValueError(
                f"{where}: the automatic step alignment would compare original continuation token(s) "
                f"{to_eos} with the contrast's end-of-sequence token: the original continuation has "
                f"{len(original)} tokens, the contrast's {len(contrast)} (EOS included), so these steps have "
                "no counterpart in the contrast. Pass a contrast target of matching length, explain fewer "
                "steps (attr_pos_end=), or say which contrast token each step faces with "
                "contrast_targets_alignments=[(i, j), ...]"
            )
        return {i: mapping[i] for i in explained}
    if isinstance(spec, str):
        raise ValueError(
            f"contrast_targets_alignments must be 'auto', None or a list of (i, j) pairs, got {spec!r}"
        )
    mapping = {}
    for pair in spec:
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
            raise TypeError(
                f"{where}: contrast_targets_alignments entries must be (i, j) integer pairs, got {pair!r}"
            )
        i, j = pair
        if not (0 <= i < len(original) and 0 <= j < len(contrast)):
            raise ValueError(
                f"{where}: alignment pair {(i, j)} is out of range: the original continuation has "
                f"{len(original)} tokens and the contrast continuation {len(contrast)} (indices start at 0)"
            )
        if i in mapping and mapping[i] != j:
            raise ValueError(
                f"{where}: original continuation token {i} is aligned twice ({mapping[i]} and {j})"
            )
        mapping[i] = j
    missing = [i for i in explained if i not in mapping]
    if missing:
        raise ValueError(
            f"{where}: explained continuation token(s) {missing} have no pair in "
            "contrast_targets_alignments; "
            "give one (i, j) pair for every explained step, or use 'auto'"
        )
    return {i: mapping[i] for i in explained}


@dataclass
class ContrastExample:
    """One example's contrast sequence and how it faces the original (positions are unpadded)."""

    source_ids: list[int]
    target_ids: list[int]
    step_positions: list[int]
    """Contrast target position whose token faces each explained step."""
    source_shared: list[int]
    """Per contrast source position: the original source position it shares, or -1."""
    target_shared: list[int]
    """Per contrast target position: the original target position it shares, or -1."""
    alignment: Alignment
    """The step alignment as continuation indices ``(i, j)``, for the output's info."""


def _texts_per_example(texts: str | Sequence[str] | None, count: int, argument: str) -> list[str | None]:
    if texts is None:
        return [None] * count
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) != count:
        raise ValueError(f"got {count} input_texts but {len(texts)} {argument}; give one per input")
    return texts


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int) for v in value)


def _alignments_per_example(spec: Any, count: int) -> list[Any]:
    """One alignment spec per example: None / "auto" apply to all; bare pairs belong to a single example."""
    if spec is None or isinstance(spec, str):
        return [spec] * count
    spec = list(spec)
    if spec and all(_is_pair(pair) for pair in spec):
        if count != 1:
            raise ValueError(
                f"contrast_targets_alignments is one list of pairs, but there are {count} examples; "
                "give a list of pairs per example (or 'auto')"
            )
        return [spec]
    if len(spec) != count:
        raise ValueError(
            f"got {count} input_texts but {len(spec)} contrast_targets_alignments; give one per input"
        )
    return spec


def encode_contrasts(
    model: AttributionModel,
    input_texts: list[str],
    encoded: list[tuple[list[int], list[int], int]],
    examples: list[EncodedExample],
    contrast_targets: str | Sequence[str] | None,
    contrast_sources: str | Sequence[str] | None,
    alignments: Any,
) -> list[ContrastExample]:
    """Tokenize the contrast of every example and align it (see the module docstring for the contract)."""
    count = len(examples)
    targets = _texts_per_example(contrast_targets, count, "contrast_targets")
    sources = _texts_per_example(contrast_sources, count, "contrast_sources")
    specs = _alignments_per_example(alignments, count)
    eos_ids = frozenset(model.eos_ids({}))
    contrasts = []
    for i, ((source, target, start), example) in enumerate(zip(encoded, examples, strict=True)):
        for argument, text in (("contrast_targets", targets[i]), ("contrast_sources", sources[i])):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"{argument}[{i}] must be a non-empty string, got {text!r}")
        if example.attr_pos_start < start:
            raise ValueError(
                f"example {i}: contrastive attribution compares continuation tokens, but attr_pos_start="
                f"{example.attr_pos_start} is inside the prompt (which ends at {start}); "
                f"set attr_pos_start >= {start}"
            )
        prompt = model.family.contrast_prompt(source, target, start)
        prompt_text = input_texts[i]
        if sources[i] is not None:
            prompt, prompt_text = model.tokenizer(sources[i])["input_ids"], sources[i]
            model.check_length(len(prompt), f"contrast_sources[{i}]")
            if not prompt:
                raise ValueError(f"contrast_sources[{i}] tokenizes to no tokens")
        if targets[i] is not None:
            c_source, c_target, c_start = model.encode_forced(
                i, prompt, targets[i], prompt_text, "contrast_targets"
            )
        else:  # the example's own continuation after the contrast prompt
            c_source, c_target, c_start = model.family.generated_example(prompt, target[start:], target[0])
        where = f"example {i}"
        explained = range(example.attr_pos_start - start, example.attr_pos_end - start)
        mapping = align_steps(target[start:], c_target[c_start:], specs[i], explained, where, eos_ids)
        contrasts.append(
            ContrastExample(
                source_ids=list(c_source),
                target_ids=list(c_target),
                step_positions=[c_start + mapping[k] for k in explained],
                source_shared=shared_positions(source, c_source),
                target_shared=shared_positions(target, c_target),
                alignment=sorted(mapping.items()),
            )
        )
    return contrasts


def contextless_contrasts(
    model: AttributionModel,
    encoded: list[tuple[list[int], list[int], int]],
    examples: list[EncodedExample],
) -> list[ContrastExample]:
    """Each example's prompt without its context (``layout.contextless_ids``, `seqattr.segments`) continued
    with the example's own output tokens, step facing step: the contrast of the trace's context reliance,
    as ``contrast_sources=`` would give it for that prompt.

    Example:
        >>> contrasts = contextless_contrasts(model, encoded, examples)          # doctest: +SKIP
    """
    contrasts = []
    for i, ((source, target, start), example) in enumerate(zip(encoded, examples, strict=True)):
        if example.attr_pos_start < start:
            raise ValueError(
                f"example {i}: context reliance compares the output's steps with and without the context, "
                f"but attr_pos_start={example.attr_pos_start} is inside the prompt (which ends at {start}); "
                f"set attr_pos_start >= {start} or drop context_parts"
            )
        prompt = list(example.layout.contextless_ids)
        model.check_length(len(prompt), f"input_texts[{i}] without its context_parts")
        c_source, c_target, c_start = model.family.generated_example(prompt, target[start:], target[0])
        explained = range(example.attr_pos_start - start, example.attr_pos_end - start)
        contrasts.append(
            ContrastExample(
                source_ids=list(c_source),
                target_ids=list(c_target),
                step_positions=[c_start + k for k in explained],
                source_shared=shared_positions(source, c_source),
                target_shared=shared_positions(target, c_target),
                alignment=[(k, k) for k in explained],
            )
        )
    return contrasts


def _with_shared(
    constant: Float[Tensor, "n length hidden"],
    shared: Int[Tensor, "n length"],
    attributed: Float[Tensor, "n attributed_len hidden"] | None,
) -> Float[Tensor, "n length hidden"]:
    """``constant`` with every shared position replaced by the attributed embedding it shares."""
    if attributed is None:
        return constant
    # A shared position beyond the attributed prefix (truncated to what the steps need) keeps its constant.
    usable = (shared >= 0) & (shared < attributed.shape[1])
    index = shared.clamp(0, attributed.shape[1] - 1)[..., None].expand(-1, -1, attributed.shape[-1])
    return torch.where(usable[..., None], attributed.gather(1, index).to(constant.dtype), constant)


@dataclass
class ContrastBatch:
    """The contrast sequences of one `AttributionBatch`, padded, with the step alignment in padded indices."""

    padded: AttributionBatch
    step_positions: Int[Tensor, "batch steps"]
    """Padded contrast target position facing each step column (padding columns repeat the last real one)."""
    step_target_ids: Int[Tensor, "batch steps"]
    source_embeds: Float[Tensor, "batch contrast_source_len hidden"] | None
    target_embeds: Float[Tensor, "batch contrast_target_len hidden"]
    source_shared: Int[Tensor, "batch contrast_source_len"] | None
    """Padded original source position each contrast source position shares, or -1."""
    target_shared: Int[Tensor, "batch contrast_target_len"]

    @classmethod
    def from_examples(
        cls, model: AttributionModel, batch: AttributionBatch, contrasts: list[ContrastExample]
    ) -> ContrastBatch:
        windows = [EncodedExample(c.source_ids, c.target_ids, 1, len(c.target_ids)) for c in contrasts]
        padded = AttributionBatch.from_examples(windows, model.pad_token_id, model.family, model.device)
        device = padded.target_ids.device
        positions = torch.zeros(batch.size, batch.num_steps, dtype=torch.long)
        target_shared = torch.full(padded.target_ids.shape, -1, dtype=torch.long)
        source_shared = (
            None if padded.source_ids is None else torch.full(padded.source_ids.shape, -1, dtype=torch.long)
        )
        for b, contrast in enumerate(contrasts):
            offset, original_offset = int(padded.target_offsets[b]), int(batch.target_offsets[b])
            steps = torch.tensor(contrast.step_positions) + offset
            positions[b, : len(steps)] = steps
            positions[b, len(steps) :] = steps[-1]
            shared = torch.tensor(contrast.target_shared, dtype=torch.long)
            target_shared[b, offset : offset + len(shared)] = torch.where(
                shared >= 0, shared + original_offset, -1
            )
            if source_shared is not None:  # encoder inputs are right-padded: indices need no offset
                source_shared[b, : len(contrast.source_shared)] = torch.tensor(
                    contrast.source_shared, dtype=torch.long
                )
        positions = positions.to(device)
        with torch.no_grad():
            source_embeds = None if padded.source_ids is None else model.embed(padded.source_ids)
            target_embeds = model.embed(padded.target_ids)
        return cls(
            padded=padded,
            step_positions=positions,
            step_target_ids=padded.target_ids.gather(1, positions),
            source_embeds=source_embeds,
            target_embeds=target_embeds,
            source_shared=None if source_shared is None else source_shared.to(device),
            target_shared=target_shared.to(device),
        )

    def step_logits(
        self,
        model: AttributionModel,
        rows: Int[Tensor, " n"],
        source_embeds: Float[Tensor, "n source_len hidden"] | None,
        target_embeds: Float[Tensor, "n prefix_len hidden"],
        steps: slice,
    ) -> Float[Tensor, "n steps vocab"]:
        """The contrast's next-token logits at the steps facing ``steps``: one forward pass for all of them.

        ``source_embeds`` / ``target_embeds`` are the original's (attributed) embeddings of the same call; the
        contrast reads them at its shared positions.
        """
        positions = self.step_positions[rows][:, steps]
        length = int(positions.max())  # the longest contrast prefix the selected steps need
        target = _with_shared(
            self.target_embeds[rows, :length], self.target_shared[rows, :length], target_embeds
        )
        source = None
        if self.source_embeds is not None:
            source = _with_shared(self.source_embeds[rows], self.source_shared[rows], source_embeds)
        # The LM head runs once per distinct position; each row then picks its own steps' positions.
        distinct, index = torch.unique(positions, sorted=True, return_inverse=True)
        logits = model.step_logits(self.padded, rows, source, target, distinct)
        return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
