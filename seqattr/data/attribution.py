"""The result of an attribution run: one `SequenceAttribution` per example, wrapped in an `AttributionOutput`.

Layout of one example (T = number of explained steps, step ``t`` predicts ``target[attr_pos_start + t]``):

- ``source_attributions``: ``[len(source), T, *extra]`` for encoder-decoder models, ``None`` for decoder-only;
- ``target_attributions``: ``[len(target), T, *extra]``, or ``None`` when the target side is not attributed.
  Row ``p`` of step ``t`` is NaN when step ``t`` cannot see target token ``p`` (``p >= attr_pos_start + t``);
- ``step_scores[name]``: ``[T]``.

``extra`` is empty after a hidden-dimension reduction (the default); it is ``[hidden]`` for raw gradients and
method-specific for others (e.g. ``[layers, heads]`` for attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from seqattr.data.views import Views
from seqattr.trace import GenerationTrace

if TYPE_CHECKING:
    from seqattr.data.alignment import Alignment


class Operations:
    """The aggregation and data methods of both result classes, written once.

    Each is a function of one `SequenceAttribution` (in `seqattr.data.aggregation`, `granularity`, `frames`)
    applied through `_map_sequences`: a `SequenceAttribution` applies it to itself, an `AttributionOutput` to
    every example (recording the step in ``info["aggregations"]``). So ``seq.normalize()`` and
    ``out.normalize()`` are the same method, and a method added here (e.g. a new view of the data) reaches
    both classes. The views (``show``, ``to_html``, ``plot``, ...) come from `Views` the same way.
    """

    def _map_sequences(self, fn, label: str | None = None):
        """This object with ``fn`` applied to each of its sequences; ``label`` names an aggregation step."""
        raise NotImplementedError

    def _sequences(self) -> list[SequenceAttribution]:
        raise NotImplementedError

    def _recorded(self, key: str) -> Any:
        """What the attribution run recorded under ``key`` in ``info`` (None where there is no info)."""
        return None

    def _one_per_sequence(self, values: list) -> Any:
        """A per-sequence result as the class returns it: a sequence's own value, an output's list."""
        return values[0]

    # Aggregation: each returns a new object (seqattr.data.aggregation and seqattr.data.granularity).

    def reduce(self, fn="sum", dim: int | None = None):
        """Collapse extra dimensions (`seqattr.data.aggregation.reduce`): ``out.reduce("l2")``."""
        from seqattr.data.aggregation import reduce

        label = fn if isinstance(fn, str) else getattr(fn, "__name__", "custom")
        return self._map_sequences(lambda seq: reduce(seq, fn, dim), f"reduce({label}, dim={dim})")

    def normalize(self):
        """Per step, divide by the L1 norm over unmasked source + prefix scores (`aggregation.normalize`)."""
        from seqattr.data.aggregation import normalize

        return self._map_sequences(normalize, "normalize")

    def rescale(self, per_step: bool = False):
        """Divide by the largest absolute unmasked score (`aggregation.rescale`)."""
        from seqattr.data.aggregation import rescale

        return self._map_sequences(lambda seq: rescale(seq, per_step), f"rescale(per_step={per_step})")

    def mask(self, **selection):
        """Hide tokens from normalisation and display: ``seq.mask(tokens=[...], target_positions=[0])``."""
        from seqattr.data.aggregation import mask

        return self._map_sequences(lambda seq: mask(seq, **selection), "mask")

    def mask_special(self, special_ids=None):
        """Mask special tokens: ids in ``special_ids`` (default: the tokenizer's special ids recorded at
        attribution time, on an output), plus any token shaped like one (``<s>``, ``<|im_start|>``,
        ``[CLS]``)."""
        from seqattr.data.aggregation import mask_special

        ids = self._recorded("special_token_ids") if special_ids is None else special_ids
        return self._map_sequences(lambda seq: mask_special(seq, ids), "mask_special")

    def unmask(self):
        """A copy with no token masked."""
        from seqattr.data.aggregation import unmask

        return self._map_sequences(unmask, "unmask")

    def aggregate(self, granularity: str, **options):
        """Merge tokens into words, sentences, regex matches or spans (`seqattr.data.granularity.aggregate`).

        Example:
            >>> seq.aggregate("word").normalize().target[:4]     # "Ġcapit" + "al" is one word
            ['The', 'Ġcapital', 'Ġof', 'ĠFrance']
            >>> words = out.aggregate("word").normalize()
            >>> words.info["aggregations"], words[0].target[:4]
            (['aggregate(word)', 'normalize'], ['The', 'Ġcapital', 'Ġof', 'ĠFrance'])
        """
        from seqattr.data.granularity import aggregate
        from seqattr.data.segmentation import canonical_granularity

        options.setdefault("special_ids", self._recorded("special_token_ids"))
        # Recorded under its canonical name: "words" (an alias) and "word" are the same aggregation.
        label = f"aggregate({canonical_granularity(granularity)})"
        return self._map_sequences(lambda seq: aggregate(seq, granularity, **options), label)

    # Tensors.

    def map_tensors(self, fn):
        """A copy with ``fn`` applied to every tensor (e.g. ``lambda t: t.to("cpu")``)."""
        return self._map_sequences(lambda seq: map_sequence_tensors(seq, fn))

    def to(self, *args, **kwargs):
        """A copy with every tensor moved or cast (``torch.Tensor.to``'s arguments)."""
        return self.map_tensors(lambda t: t.to(*args, **kwargs))

    def detach(self):
        return self.map_tensors(Tensor.detach)

    def allclose(self, other, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        """True when both hold as many examples, tokens match and every tensor is close (NaN positions must
        coincide)."""
        mine, theirs = self._sequences(), other._sequences()
        return len(mine) == len(theirs) and all(
            sequences_close(a, b, rtol, atol) for a, b in zip(mine, theirs, strict=True)
        )

    # Data frames and dictionaries (imported lazily: pandas loads only when used).

    def to_dataframe(self, interactions: bool = False):
        """Long-format pandas frame, one row per visible (token, step) score of every example, or with
        ``interactions`` one row per visible (token, token, step) interaction (`seqattr.data.frames`)."""
        from seqattr.data.frames import to_dataframe

        return to_dataframe(self, interactions=interactions)

    def alignments(
        self,
        threshold: float | None = None,
        *,
        top_k: int | None = None,
        signed: bool = False,
        special_ids=None,
    ) -> Alignment | list[Alignment]:
        """Hard alignments (`seqattr.data.alignment`): each step's argmax source position, or its ``top_k``,
        or every position holding at least ``threshold`` of the step's total (0-based, special tokens not
        counted; the prompt is the source of a decoder-only model). One `Alignment` for a
        `SequenceAttribution`, a list of them (one per example) for an output, whose special tokens are
        those recorded at attribution time unless ``special_ids`` is given. Score them with
        `seqattr.metrics`.

        Example:
            >>> alignment = seq.alignments()               # decoder-only: steps linked to prompt tokens
            >>> alignment.target, len(alignment.links)      # one link (the argmax) per step
            (['Ġthe', 'Ġc', 'it', 'y'], 4)
            >>> [len(a.links) for a in out.alignments()] == [len(seq.steps) for seq in out]
            True
        """
        from seqattr.data.alignment import extract_alignment

        ids = self._recorded("special_token_ids") if special_ids is None else special_ids
        found = [
            extract_alignment(seq, threshold, top_k=top_k, signed=signed, special_ids=ids)
            for seq in self._sequences()
        ]
        return self._one_per_sequence(found)

    def entities(self):
        """A token classifier's entity spans with their attributions (`seqattr.data.labels.entities`): a list
        of `Entity` for one example, one such list per example for an output.

        Example:
            >>> [(e.label, e.text) for e in tagged.entities()[0]]              # doctest: +SKIP
            [('PER', 'bob'), ('LOC', 'london')]
        """
        from seqattr.data.labels import entities

        task = self._recorded("task")
        if task is not None and task != "token-classification":
            raise ValueError(f"entities() reads a token classifier's output; this one explains {task}")
        return self._one_per_sequence([entities(seq) for seq in self._sequences()])

    def get_scores_dicts(self) -> list[dict[str, dict]]:
        """One nested dict of scores per example, Inseq-like (`seqattr.data.frames.scores_dict`): a list of
        one for a `SequenceAttribution`."""
        from seqattr.data.frames import scores_dict

        return [scores_dict(seq) for seq in self._sequences()]

    def get_scores_dict(self, example: int = 0) -> dict[str, dict]:
        """The nested dict of scores of one example, keyed by ``(position, token)``
        (`seqattr.data.frames.scores_dict`): a `SequenceAttribution`'s own, or example ``example`` of an
        output (default the first, as `plot`)."""
        sequences = self._sequences()
        if not -len(sequences) <= example < len(sequences):
            raise IndexError(
                f"example={example} is out of range: this holds {len(sequences)} example(s); "
                "use get_scores_dicts() for all of them"
            )
        return self.get_scores_dicts()[example]


@dataclass(eq=False)
class SequenceAttribution(Views, Operations):
    """Attributions of every explained step of one sequence.

    Example:
        >>> seq = out.sequence_attributions[0]          # also out[0]
        >>> seq.target                                  # prompt + continuation (here a forced one)
        ['The', 'Ġcapit', 'al', 'Ġof', 'ĠFrance', 'Ġis', 'Ġthe', 'Ġc', 'it', 'y']
        >>> seq.steps                                   # the explained (generated or forced) tokens
        ['Ġthe', 'Ġc', 'it', 'y']
        >>> seq.target_attributions.shape               # [len(target), steps]
        torch.Size([10, 4])
        >>> seq.target_attributions[:, 0].isnan().tolist()   # step 0 sees the prompt only: NaN after it
        [False, False, False, False, False, False, True, True, True, True]
    """

    source: list[str]
    target: list[str]
    source_ids: list[int]
    target_ids: list[int]
    source_attributions: Tensor | None
    target_attributions: Tensor | None
    step_scores: dict[str, Tensor] = field(default_factory=dict)
    attr_pos_start: int = 0
    attr_pos_end: int = 0
    trace: GenerationTrace | None = None
    """What the model chose at each step and what else it considered (see `seqattr.trace`)."""
    masked_source: tuple[int, ...] = ()
    """Source positions hidden from normalisation and display; their scores stay in the data (see `mask`)."""
    masked_target: tuple[int, ...] = ()
    """Target positions hidden from normalisation and display (see `mask_special`)."""
    features: dict | None = None
    """Feature-level scores: the perturbation features whose every token repeats the feature's one score,
    ``{"granularity": "word", "source": [[start, end], ...], "target": [[start, end], ...]}``; aggregation
    (`aggregate`, `normalize`) counts such a feature once, not once per token. ``None``: per-token scores."""
    interactions: Tensor | None = None
    """Pairwise token interactions of the interaction methods (``integrated_hessians``,
    ``expected_hessians``): ``[features, features, steps]`` over the source tokens, then the target tokens
    (the attributed sides, as ``source_attributions`` and ``target_attributions``), NaN where a step cannot
    see either token. Row ``i`` adds up to token ``i``'s attribution (the diagonal holds the main effects).
    ``None`` for the other methods."""
    token_roles: list[str] | None = None
    """A decoder-only prompt's roles, one per target token, when it came as chat messages or named segments
    (`seqattr.segments`): ``"system"``, ``"user"``, ``"assistant"`` (the reply), ``"tool"``, ``"prompt"`` (a
    plain text) or ``"template"`` (scaffolding: role headers, end-of-turn, BOS). ``None`` otherwise."""

    @property
    def steps(self) -> list[str]:
        """The explained target tokens, one per step (column) of the attribution tensors."""
        return self.target[self.attr_pos_start : self.attr_pos_end]

    @property
    def num_steps(self) -> int:
        return self.attr_pos_end - self.attr_pos_start

    @property
    def attribution_shape(self) -> tuple[int, ...]:
        """Shape of the (first present) attribution tensor: ``(tokens, steps, *extra)``."""
        present = self.source_attributions
        if present is None:
            present = self.target_attributions
        return tuple(present.shape) if present is not None else ()

    @property
    def extra_dims(self) -> int:
        """How many dimensions follow (tokens, steps): 0 after a reduction, 1 for raw gradients, ..."""
        return max(len(self.attribution_shape) - 2, 0)

    # The aggregation and data methods come from `Operations`, the views from `Views`.

    def _map_sequences(self, fn, label: str | None = None) -> SequenceAttribution:
        return fn(self)

    def _sequences(self) -> list[SequenceAttribution]:
        return [self]

    def word_attributions(self, step: int = 0, normalize: bool = True) -> list[tuple[str, float]]:
        """``(token, score)`` of every token step ``step`` saw, as transformers-interpret lists them
        (`seqattr.data.labels.word_attributions`); a classifier's one step by default.

        Example:
            >>> seq.word_attributions()[:2]                   # doctest: +ELLIPSIS
            [('The', ...), ('capit', ...)]
        """
        from seqattr.data.labels import word_attributions

        return word_attributions(self, step, normalize)

    def __getitem__(self, steps: int | slice) -> SequenceAttribution:
        """A range of steps: ``seq[:5]``, ``seq[-1]`` (`aggregation.slice_steps`)."""
        from seqattr.data.aggregation import slice_steps

        return slice_steps(self, steps)

    def __sub__(self, other: SequenceAttribution) -> SequenceAttribution:
        from seqattr.data.aggregation import subtract

        return subtract(self, other)


@dataclass(eq=False)
class AttributionOutput(Views, Operations):
    """What `AttributionModel.attribute` returns: the examples' attributions and how they were made.

    ``info`` records the method and its options, the model, library versions, timing, and whether the fused
    (one pass for all steps) or the stepwise engine ran.

    Example:
        >>> out = model.attribute("The capital of France is", generation_args={"max_new_tokens": 4})
        >>> out.info["method"], out.info["engine"], len(out)
        ('saliency', 'fused', 1)
        >>> out.show()                                        # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        #0 saliency ...
        >>> out.save(tmp / "out.json"); same = seqattr.load(tmp / "out.json")
        >>> torch.equal(same[0].target_attributions.nan_to_num(), out[0].target_attributions.nan_to_num())
        True
    """

    sequence_attributions: list[SequenceAttribution]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequence_attributions)

    def __getitem__(self, index: int | slice) -> SequenceAttribution | AttributionOutput:
        """One example (``out[0]``), or an output holding a range of them (``out[1:3]``)."""
        if isinstance(index, slice):
            return dataclasses.replace(self, sequence_attributions=self.sequence_attributions[index])
        return self.sequence_attributions[index]

    def __iter__(self):
        return iter(self.sequence_attributions)

    @property
    def predicted_labels(self) -> list[str]:
        """A classifier's predicted label of each text (`seqattr.data.labels.predicted_labels`)."""
        from seqattr.data.labels import predicted_labels

        return predicted_labels(self)

    @property
    def predicted_label(self) -> str:
        """A classifier's predicted label of its one text (several texts: `predicted_labels`)."""
        labels = self.predicted_labels
        if len(labels) != 1:
            raise ValueError(f"this output holds {len(labels)} texts; read out.predicted_labels")
        return labels[0]

    def word_attributions(
        self, step: int = 0, normalize: bool = True
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """``(token, score)`` pairs as transformers-interpret returns them: for one text its list, for
        several one list per text (`SequenceAttribution.word_attributions`).

        Example:
            >>> len(out.word_attributions()), out.word_attributions()[0][0]
            (6, 'The')
        """
        lists = [seq.word_attributions(step, normalize) for seq in self.sequence_attributions]
        return lists[0] if len(lists) == 1 else lists

    # The aggregation and data methods come from `Operations` (each aggregation applies to every example
    # and is listed, in order, in the new output's info["aggregations"]); the views come from `Views`.

    def _map_sequences(self, fn, label: str | None = None) -> AttributionOutput:
        sequences = [fn(seq) for seq in self.sequence_attributions]
        if label is None:
            return dataclasses.replace(self, sequence_attributions=sequences)
        return AttributionOutput(
            sequences, {**self.info, "aggregations": [*self.info.get("aggregations", []), label]}
        )

    def _sequences(self) -> list[SequenceAttribution]:
        return self.sequence_attributions

    def _recorded(self, key: str) -> Any:
        return self.info.get(key)

    def _one_per_sequence(self, values: list) -> list:
        return values

    def __sub__(self, other: AttributionOutput) -> AttributionOutput:
        """Example-wise difference of two outputs over the same tokens: ``out_ig - out_saliency``."""
        if len(self) != len(other):
            raise ValueError(f"cannot subtract outputs of {len(self)} and {len(other)} examples")
        differences = [mine - theirs for mine, theirs in zip(self, other, strict=True)]
        return AttributionOutput(differences, {"difference_of": [self.info, other.info]})

    @classmethod
    def merge(cls, outputs: list[AttributionOutput]) -> AttributionOutput:
        """One output with the examples of several (e.g. of several ``attribute`` calls), in order.

        ``info`` keeps the entries all outputs agree on, and every original info under ``"merged_from"``.

        Example:
            >>> out_a = model.attribute("The capital of France is", generation_args={"max_new_tokens": 2})
            >>> out_b = model.attribute("The cat", generation_args={"max_new_tokens": 2})
            >>> both = seqattr.AttributionOutput.merge([out_a, out_b])
            >>> len(both), both[1].target[:2], len(both.info["merged_from"])
            (2, ['The', 'Ġcat'], 2)
        """
        outputs = list(outputs)
        if not outputs or not all(isinstance(o, AttributionOutput) for o in outputs):
            raise ValueError("AttributionOutput.merge expects a non-empty list of AttributionOutput objects")
        first = outputs[0].info
        common = {k: v for k, v in first.items() if all(o.info.get(k, object()) == v for o in outputs)}
        sequences = [seq for output in outputs for seq in output.sequence_attributions]
        return cls(sequences, {**common, "merged_from": [o.info for o in outputs]})

    # Saving.

    def save(self, path: str | Path) -> None:
        """Write the output to a JSON file; `seqattr.load` reads it back exactly (bit for bit, in each
        tensor's dtype: float32, or float64 for a float64 model)."""
        from seqattr.data.io import save

        save(self, path)

    def __repr__(self) -> str:
        method = self.info.get("method", "?")
        model = self.info.get("model", "?")
        return f"AttributionOutput({len(self)} sequence(s), method={method!r}, model={model!r})"


def map_sequence_tensors(seq: SequenceAttribution, fn) -> SequenceAttribution:
    """A copy of ``seq`` with ``fn`` applied to every tensor (attributions, step scores, the trace's)."""

    def apply(value):
        return fn(value) if isinstance(value, Tensor) else value

    return dataclasses.replace(
        seq,
        source_attributions=apply(seq.source_attributions),
        target_attributions=apply(seq.target_attributions),
        step_scores={name: apply(score) for name, score in seq.step_scores.items()},
        trace=None if seq.trace is None else seq.trace.map_tensors(fn),
        interactions=apply(seq.interactions),
    )


def sequences_close(seq: SequenceAttribution, other: SequenceAttribution, rtol: float, atol: float) -> bool:
    """True when the two examples' tokens match and every tensor is close (NaN positions must coincide)."""
    if (seq.source_ids, seq.target_ids, seq.attr_pos_start, seq.attr_pos_end) != (
        other.source_ids,
        other.target_ids,
        other.attr_pos_start,
        other.attr_pos_end,
    ):
        return False
    pairs = [
        (seq.source_attributions, other.source_attributions),
        (seq.target_attributions, other.target_attributions),
        (seq.interactions, other.interactions),
    ]
    if seq.step_scores.keys() != other.step_scores.keys():
        return False
    pairs += [(seq.step_scores[k], other.step_scores[k]) for k in seq.step_scores]
    if (seq.trace is None) != (other.trace is None) or (
        seq.trace is not None and not seq.trace.allclose(other.trace, rtol=rtol, atol=atol)
    ):
        return False
    for mine, theirs in pairs:
        if (mine is None) != (theirs is None):
            return False
        if mine is not None and not (
            mine.shape == theirs.shape
            and torch.allclose(mine.float(), theirs.float(), rtol=rtol, atol=atol, equal_nan=True)
        ):
            return False
    return True
