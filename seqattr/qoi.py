"""Quantities of interest: attribute an internal activation of the model, at each step, instead of a logit.

A quantity of interest (QoI, after TruLens) is a step function: pass it as ``attributed_fn=`` and every
attribution method that attributes a function (saliency, input x gradient, integrated gradients, the
perturbation and layer methods, ...) explains it, fused over steps like any other step function. The
activation is read where step ``t`` is computed: at the position that predicts target token ``t`` (the same
position whose logits a step function reads), in the forward pass the method runs anyway.

- `neuron` ``(layer, index)``: one unit of a layer's output (``at="input"``: of its input, e.g. an MLP's
  hidden neuron is the input of its down projection);
- `neurons` ``(layer, indices)``: the sum of several units;
- `head` ``(attention, index)``: an attention head's output (its slice of the output projection's input),
  summed (``reduce="sum"``) or its L2 norm (``reduce="l2"``);
- `direction` ``(layer, vector)``: the projection of the activation on a direction (a probe, a steering
  vector), e.g. in the residual stream (a block's output);
- `activation` ``(layer, fn)``: your own function of the activations at the steps, ``[n, steps, *dims]`` ->
  ``[n, steps]``.

Layers are named as in `seqattr.cuts`: a dotted module name, a block index, or a short name such as
``"decoder.3.mlp"`` that works on every architecture. Only decoder-side modules have a position per step
(an encoder's activations are computed once for all steps): an encoder module is refused.

Example:
    >>> out = model.attribute("The cat", "The cat sat", attributed_fn=seqattr.qoi.neuron("decoder.1.mlp", 5))
    >>> out.info["attributed_fn"]
    "neuron('decoder.1.mlp', 5)"
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from seqattr.cuts import attention_heads, is_in_encoder, resolve_module
from seqattr.typing import Float, Tensor

if TYPE_CHECKING:
    from seqattr.step_functions import StepFunctionArgs

_SIDES = ("output", "input")


class QuantityOfInterest:
    """An internal activation at each step's position, reduced to one number per step (a step function).

    Subclasses say which module's output (or input) is read and implement `reduce`. The engine records the
    activation during the step function's forward pass (`recording`) and hands it over in
    ``StepFunctionArgs.activations``.
    """

    def __init__(self, layer: str | int | nn.Module, at: str = "output") -> None:
        if at not in _SIDES:
            raise ValueError(f"at must be 'output' or 'input' (of the layer), got {at!r}")
        self.layer = layer
        self.at = at
        # Resolved per model, held weakly (a quantity may outlive a model, or serve several).
        self._resolved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- what is read ---------------------------------------------------------------------------------

    def module(self, hf_model: nn.Module) -> tuple[str, nn.Module]:
        """``(dotted name, module)`` whose output (or input) this quantity reads in ``hf_model``."""
        if hf_model not in self._resolved:
            name, module = resolve_module(hf_model, self.layer)
            if is_in_encoder(hf_model, module):
                raise ValueError(
                    f"{self!r}: {name!r} is in the encoder, whose activations are computed once for all "
                    "steps (no position per step); choose a decoder module, e.g. 'decoder.0.mlp' or "
                    "'decoder.0.cross_attention'"
                )
            self._resolved[hf_model] = (name, module)
        return self._resolved[hf_model]

    def reduce(self, values: Float[Tensor, "n steps *dims"]) -> Float[Tensor, "n steps"]:
        """The quantity from the activations at each step's position."""
        raise NotImplementedError

    def __call__(self, args: StepFunctionArgs) -> Float[Tensor, "n steps"]:
        if self not in args.activations or args.positions is None:
            raise ValueError(
                f"{self!r} reads the model's internals, which this computation does not record (a "
                "classifier, or a method that does not attribute a function); use it with a generative "
                "model and a gradient, path, perturbation or layer method"
            )
        values = args.activations[self]
        at_steps = values[:, args.positions - 1]  # position p - 1 computes step p, as the logits
        scores = self.reduced(at_steps, tuple(args.target_ids.shape))
        # Keep every input in the graph: a quantity may not depend on some of them (the decoder's first
        # self-attention reads no encoder output), and autograd (Captum's too) refuses an unused input. The
        # term adds exactly zero to the values and the gradients.
        return scores + 0.0 * args.logits[..., 0].to(scores.dtype)

    def reduced(self, at_steps: Float[Tensor, "n steps *dims"], expected: tuple[int, int]) -> Tensor:
        """`reduce` of the activations at the steps, checked to give one number per row and step."""
        scores = self.reduce(at_steps)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != expected:
            got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"{self!r} returned {got}; a quantity of interest must give one number per row and step, "
                f"{list(expected)} (it received activations {list(at_steps.shape)}: reduce the dimensions "
                "after the second)"
            )
        return scores

    def _check_last_dim(self, values: Tensor, size: int, what: str) -> None:
        if values.dim() < 3:
            raise ValueError(f"{self!r}: the layer's {self.at} has no unit dimension ({list(values.shape)})")
        if values.shape[-1] != size:
            raise ValueError(f"{self!r}: {what}")

    def _at(self) -> str:
        return "" if self.at == "output" else ", at='input'"


class Neurons(QuantityOfInterest):
    """The sum of some units of a layer's output (or input)."""

    def __init__(self, layer, indices: Sequence[int], at: str = "output", single: bool = False) -> None:
        super().__init__(layer, at)
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"neuron indices must be integers, got {index!r}")
        if not indices:
            raise ValueError("neurons() needs at least one index")
        self.indices = list(indices)
        self.single = single

    def reduce(self, values):
        if values.dim() < 3:
            raise ValueError(f"{self!r}: the layer's {self.at} has no unit dimension ({list(values.shape)})")
        size = values.shape[-1]
        bad = [i for i in self.indices if not -size <= i < size]
        if bad:
            raise ValueError(
                f"{self!r}: neuron index {bad[0]} is out of range; the layer's {self.at} has {size} units "
                f"(indices 0..{size - 1})"
            )
        return values[..., self.indices].sum(-1)

    def __repr__(self) -> str:
        which = self.indices[0] if self.single else self.indices
        return f"{'neuron' if self.single else 'neurons'}({self.layer!r}, {which!r}{self._at()})"


class Direction(QuantityOfInterest):
    """The projection of a layer's activation on a direction: ``activation @ vector``."""

    def __init__(self, layer, vector: Tensor, at: str = "output") -> None:
        super().__init__(layer, at)
        vector = torch.as_tensor(vector)
        if vector.dim() != 1 or not vector.is_floating_point():
            raise ValueError(
                f"direction needs a 1-d float vector, got shape {list(vector.shape)} {vector.dtype}"
            )
        self.vector = vector

    def reduce(self, values):
        self._check_last_dim(
            values,
            self.vector.shape[0],
            f"the direction has {self.vector.shape[0]} entries but the layer's {self.at} has "
            f"{values.shape[-1]} units; give a vector of that size",
        )
        return values @ self.vector.to(values.device, values.dtype)

    def __repr__(self) -> str:
        return f"direction({self.layer!r}, <vector of {self.vector.shape[0]}>{self._at()})"


class Head(QuantityOfInterest):
    """An attention head's output: its slice of the input of the attention's output projection."""

    def __init__(self, layer, index: int, reduce: str = "sum") -> None:
        super().__init__(layer, "input")
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"head index must be an integer, got {index!r}")
        if reduce not in ("sum", "l2"):
            raise ValueError(f"head reduce must be 'sum' or 'l2', got {reduce!r}")
        self.index = index
        self.how = reduce
        self.num_heads: int | None = None
        """The heads of the attention in the model of the current pass (set when `recording` resolves it)."""

    def module(self, hf_model):
        if hf_model not in self._resolved:
            heads = attention_heads(hf_model, self.layer)
            if is_in_encoder(hf_model, heads.projection):
                raise ValueError(
                    f"{self!r}: {heads.attention!r} is in the encoder, whose activations are computed once "
                    "for all steps; choose a decoder attention, e.g. 'decoder.0.attention' or "
                    "'decoder.0.cross_attention'"
                )
            if not -heads.num_heads <= self.index < heads.num_heads:
                raise ValueError(
                    f"{self!r}: head index {self.index} is out of range; {heads.attention!r} has "
                    f"{heads.num_heads} heads (indices 0..{heads.num_heads - 1})"
                )
            self._resolved[hf_model] = (heads.attention + " (heads)", heads.projection, heads.num_heads)
        name, projection, self.num_heads = self._resolved[hf_model]
        return name, projection

    def reduce(self, values):
        heads = values.unflatten(-1, (self.num_heads, values.shape[-1] // self.num_heads))[..., self.index, :]
        return heads.sum(-1) if self.how == "sum" else torch.linalg.vector_norm(heads, dim=-1)

    def __repr__(self) -> str:
        how = "" if self.how == "sum" else f", reduce={self.how!r}"
        return f"head({self.layer!r}, {self.index!r}{how})"


class Activation(QuantityOfInterest):
    """Your function of a layer's activations at the steps, ``[n, steps, *dims] -> [n, steps]``."""

    def __init__(self, layer, fn: Callable[[Tensor], Tensor], at: str = "output") -> None:
        super().__init__(layer, at)
        if not callable(fn):
            raise TypeError(f"activation() needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def reduce(self, values):
        return self.fn(values)

    def __repr__(self) -> str:
        return f"activation({self.layer!r}, {getattr(self.fn, '__name__', 'fn')}{self._at()})"


def neuron(layer: str | int | nn.Module, index: int, *, at: str = "output") -> QuantityOfInterest:
    """Unit ``index`` of ``layer``'s output (``at="input"``: of its input) at each step's position.

    Example:
        >>> seqattr.qoi.neuron("model.layers.5.mlp.down_proj", 123, at="input")  # an MLP hidden neuron
        neuron('model.layers.5.mlp.down_proj', 123, at='input')
    """
    return Neurons(layer, [index], at, single=True)


def neurons(
    layer: str | int | nn.Module, indices: Sequence[int], *, at: str = "output"
) -> QuantityOfInterest:
    """The sum of units ``indices`` of ``layer``'s output (or input) at each step's position.

    Example:
        >>> seqattr.qoi.neurons("decoder.1.mlp", [3, 7])
        neurons('decoder.1.mlp', [3, 7])
    """
    return Neurons(layer, list(indices), at)


def head(layer: str | int | nn.Module, index: int, *, reduce: str = "sum") -> QuantityOfInterest:
    """Head ``index`` of the attention ``layer`` (e.g. ``"decoder.2.attention"`` or
    ``"decoder.2.cross_attention"``; a block or block number means its self-attention): the head's output
    vector, summed or its L2 norm.

    Example:
        >>> seqattr.qoi.head("decoder.0.attention", 2, reduce="l2")
        head('decoder.0.attention', 2, reduce='l2')
    """
    return Head(layer, index, reduce)


def direction(layer: str | int | nn.Module, vector: Tensor, *, at: str = "output") -> QuantityOfInterest:
    """``layer``'s activation projected on ``vector`` (a probe's or steering vector's direction).

    Example:
        >>> seqattr.qoi.direction(-1, torch.ones(64))        # the last block's output: the residual stream
        direction(-1, <vector of 64>)
    """
    return Direction(layer, vector, at)


def activation(
    layer: str | int | nn.Module, fn: Callable[[Tensor], Tensor], *, at: str = "output"
) -> QuantityOfInterest:
    """``fn`` of ``layer``'s activations at the steps: it gets ``[n, steps, *dims]``, returns ``[n, steps]``.

    Example:
        >>> def norm(values):
        ...     return values.norm(dim=-1)
        >>> seqattr.qoi.activation("decoder.1", norm)
        activation('decoder.1', norm)
    """
    return Activation(layer, fn, at)


class Contrastive:
    """A quantity on the original sequence minus the same quantity on the contrast sequence, at the contrast
    step aligned with each step (`contrastive`): a step function, as the contrastive ones over the logits."""

    def __init__(self, quantity: QuantityOfInterest) -> None:
        if not isinstance(quantity, QuantityOfInterest):
            raise TypeError(
                "contrastive() takes a quantity of interest (seqattr.qoi.neuron, head, ...), "
                f"got {quantity!r}"
            )
        self.quantity = quantity

    def __call__(self, args: StepFunctionArgs) -> Float[Tensor, "n steps"]:
        original = self.quantity(args)
        args.contrast_logits  # noqa: B018  (runs the contrast pass once, which records its activations)
        values = args.contrast_activations.get(self.quantity)
        if values is None or args.contrast_positions is None:
            raise ValueError(
                f"{self!r} compares the original with the contrast sequence: pass contrast_targets= (or "
                "contrast_sources=) to attribute()"
            )
        rows = torch.arange(values.shape[0], device=values.device)[:, None]
        at_steps = values[rows, args.contrast_positions.to(values.device) - 1]
        return original - self.quantity.reduced(at_steps, tuple(original.shape))

    def __repr__(self) -> str:
        return f"contrastive({self.quantity!r})"


def contrastive(quantity: QuantityOfInterest) -> Contrastive:
    """``quantity`` on the original minus on the contrast sequence (``contrast_targets=``), step by step:
    which input tokens make a neuron fire more for this token than for the contrast's (TruLens' comparative
    quantities of interest, on seqattr's contrastive machinery).

    Example:
        >>> seqattr.qoi.contrastive(seqattr.qoi.neuron("decoder.1.mlp", 5))
        contrastive(neuron('decoder.1.mlp', 5))
    """
    return Contrastive(quantity)


def quantities_in(functions: Sequence[Callable]) -> list[QuantityOfInterest]:
    """The quantities of interest among step functions (bound with options or not; a contrastive one's)."""
    found = []
    for fn in functions:
        while hasattr(fn, "func"):  # functools.partial
            fn = fn.func
        if isinstance(fn, Contrastive):
            fn = fn.quantity
        if isinstance(fn, QuantityOfInterest) and fn not in found:  # one hook per quantity
            found.append(fn)
    return found


@contextlib.contextmanager
def recording(
    hf_model: nn.Module, quantities: Sequence[QuantityOfInterest]
) -> Iterator[dict[QuantityOfInterest, Tensor]]:
    """Inside the block, each quantity's module records its output (or input) of every forward pass; the
    dict yielded maps each quantity to what its module saw, once the block's pass has run. Hooks are removed
    on exit, always. A module that ran other than once in the pass is refused (its activations would be
    ambiguous).
    """
    seen: dict[QuantityOfInterest, list[Tensor]] = {q: [] for q in quantities}
    handles = []
    try:
        for quantity in quantities:
            _, module = quantity.module(hf_model)

            def record(module, args, output=None, _seen=seen[quantity], _q=quantity):
                value = args[0] if _q.at == "input" else output
                _seen.append(value[0] if isinstance(value, tuple) else value)

            if quantity.at == "input":
                handles.append(module.register_forward_pre_hook(record))
            else:
                handles.append(module.register_forward_hook(record))
        activations: dict[QuantityOfInterest, Tensor] = {}
        yield activations
        for quantity, values in seen.items():
            if len(values) != 1:
                name = quantity.module(hf_model)[0]
                raise ValueError(
                    f"{quantity!r}: {name!r} ran {len(values)} times in one forward pass; a quantity of "
                    "interest needs a module that runs exactly once (embedding modules are bypassed: "
                    "seqattr feeds embeddings)"
                )
            activations[quantity] = values[0]
    finally:
        for handle in handles:
            handle.remove()
