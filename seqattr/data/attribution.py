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
from typing import Any

import torch
from torch import Tensor


@dataclass(eq=False)
class SequenceAttribution:
    """Attributions of every explained step of one sequence.

    Example:
        >>> seq = out.sequence_attributions[0]          # doctest: +SKIP
        >>> seq.steps                                   # the explained (generated) tokens
        >>> seq.target_attributions[:, 0]               # scores of step 0 over the target prefix
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

    @property
    def steps(self) -> list[str]:
        """The explained target tokens, one per step (column) of the attribution tensors."""
        return self.target[self.attr_pos_start : self.attr_pos_end]

    @property
    def num_steps(self) -> int:
        return self.attr_pos_end - self.attr_pos_start

    def map_tensors(self, fn) -> SequenceAttribution:
        """A copy with ``fn`` applied to every tensor (e.g. ``lambda t: t.to("cpu")``)."""

        def apply(value):
            return fn(value) if isinstance(value, Tensor) else value

        return dataclasses.replace(
            self,
            source_attributions=apply(self.source_attributions),
            target_attributions=apply(self.target_attributions),
            step_scores={name: apply(score) for name, score in self.step_scores.items()},
        )

    def to(self, *args, **kwargs) -> SequenceAttribution:
        return self.map_tensors(lambda t: t.to(*args, **kwargs))

    def detach(self) -> SequenceAttribution:
        return self.map_tensors(Tensor.detach)

    def allclose(self, other: SequenceAttribution, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        """True when tokens match and every tensor is close (NaN positions must coincide)."""
        if (self.source_ids, self.target_ids, self.attr_pos_start, self.attr_pos_end) != (
            other.source_ids,
            other.target_ids,
            other.attr_pos_start,
            other.attr_pos_end,
        ):
            return False
        pairs = [
            (self.source_attributions, other.source_attributions),
            (self.target_attributions, other.target_attributions),
        ]
        if self.step_scores.keys() != other.step_scores.keys():
            return False
        pairs += [(self.step_scores[k], other.step_scores[k]) for k in self.step_scores]
        for mine, theirs in pairs:
            if (mine is None) != (theirs is None):
                return False
            if mine is not None and not (
                mine.shape == theirs.shape
                and torch.allclose(mine.float(), theirs.float(), rtol=rtol, atol=atol, equal_nan=True)
            ):
                return False
        return True

    def __rich__(self):
        from seqattr.viz.console import render_sequence

        return render_sequence(self)


@dataclass(eq=False)
class AttributionOutput:
    """What `AttributionModel.attribute` returns: the examples' attributions and how they were made.

    ``info`` records the method and its options, the model, library versions, timing, and whether the fused
    (one pass for all steps) or the stepwise engine ran.

    Example:
        >>> out = model.attribute("The capital of France is")    # doctest: +SKIP
        >>> out.show()
        >>> out.save("out.json"); same = seqattr.load("out.json")
    """

    sequence_attributions: list[SequenceAttribution]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequence_attributions)

    def __getitem__(self, index: int) -> SequenceAttribution:
        return self.sequence_attributions[index]

    def __iter__(self):
        return iter(self.sequence_attributions)

    def to(self, *args, **kwargs) -> AttributionOutput:
        return dataclasses.replace(
            self, sequence_attributions=[s.to(*args, **kwargs) for s in self.sequence_attributions]
        )

    def detach(self) -> AttributionOutput:
        return dataclasses.replace(self, sequence_attributions=[s.detach() for s in self.sequence_attributions])

    def save(self, path: str | Path) -> None:
        """Write the output to a JSON file; `seqattr.load` reads it back exactly (float32 bit for bit)."""
        from seqattr.data.io import save

        save(self, path)

    def show(self, console=None) -> None:
        """Print a heatmap per example in the terminal (rich)."""
        from seqattr.viz.console import show

        show(self, console=console)

    def __rich__(self):
        from seqattr.viz.console import render_output

        return render_output(self)

    def __repr__(self) -> str:
        method = self.info.get("method", "?")
        model = self.info.get("model", "?")
        return f"AttributionOutput({len(self)} sequence(s), method={method!r}, model={model!r})"
