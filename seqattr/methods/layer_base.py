"""Layer methods' common ground: which layer, which positions, and a tap that reads or replaces its output.

A layer method attributes the activations of one layer (``target_layer=``: a module of the model or its
dotted name; default: the input embeddings) instead of the input embeddings. Positions attributed:

- the input embeddings (default): source positions (encoder-decoder) and, when the target is attributed,
  target positions, exactly as for the input methods;
- a layer inside the encoder: source positions only (``attribute_target=True`` is refused);
- any other layer (the decoder of an encoder-decoder, every layer of a decoder-only model): target positions
  only; encoder-decoder models need ``attribute_target=True``.

A layer whose output is a tuple (e.g. T5 blocks) is attributed through its first element, the hidden states.
The layer's output passes through a `LayerTap`, an identity module: Captum's layer classes hook the tap in the
stepwise reference, and the fused paths read or replace its output through it. Layer methods interpolate
and perturb the *inputs* (their ``baseline`` is an input baseline, as in Captum); the layer's baseline
activations are the layer's output on the baseline inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from seqattr.cuts import resolve_module
from seqattr.methods.base import MethodInputs, refuse_contrast
from seqattr.methods.gradient import HeadCut
from seqattr.methods.options import check_target_layer
from seqattr.methods.path_base import Baselines, PathSpace, expand_rows
from seqattr.typing import Float, Tensor

EMBEDDINGS = "input embeddings"


class LayerTap(nn.Module):
    """Identity on the attributed activations; ``acting`` lets a fused path read or replace them."""

    def __init__(self) -> None:
        super().__init__()
        self.action: Callable[[Tensor], Tensor] | None = None

    def forward(self, activations: Tensor) -> Tensor:
        return activations if self.action is None else self.action(activations)

    @contextlib.contextmanager
    def acting(self, action: Callable[[Tensor], Tensor]) -> Iterator[None]:
        self.action = action
        try:
            yield
        finally:
            self.action = None


def resolve_layer(hf_model: nn.Module, target_layer: str | nn.Module | None) -> tuple[str, nn.Module | None]:
    """``(name, module)`` of the attributed layer; ``(EMBEDDINGS, None)`` for the input embeddings.

    Example:
        >>> name, layer = resolve_layer(hf_model, "transformer.h.0.mlp")
        >>> name, type(layer).__name__
        ('transformer.h.0.mlp', 'GPT2MLP')
    """
    check_target_layer(target_layer)
    if target_layer is None or target_layer is hf_model.get_input_embeddings():
        return EMBEDDINGS, None
    # A module, a dotted name, or a short name that works on every architecture ("decoder.3.mlp", 3).
    name, module = resolve_module(hf_model, target_layer, "target_layer")
    return (EMBEDDINGS, None) if module is hf_model.get_input_embeddings() else (name, module)


class LayerMethod:
    """Mixin that makes an input method its layer variant: ``class LayerX(LayerMethod, X)``. The input
    method's two paths run inside the `LayerRun` that `layer_run` gives (``target_layer=`` option), over the
    layer's activations; the variant declares only Captum's layer class (see ``layer_integrated_gradients.py``
    and ``layer_deeplift.py``)."""

    def layer_run(self, inputs: MethodInputs, options) -> LayerRun:
        return LayerRun(self.model, inputs, options.target_layer, options.attribute_to_layer_input)


class LayerRun:
    """One batch seen by a layer method: the tap, its side and positions, and the objective through it.

    Use as a context manager: inside, the layer's output passes through ``self.tap`` (the hook is removed on
    exit, always). Run the method on ``self.inputs``, whose objective refuses a contrast where the layer
    would run twice.
    """

    def __init__(
        self,
        model,
        inputs: MethodInputs,
        target_layer: str | int | nn.Module | None,
        to_input: bool = False,
    ) -> None:
        self.inputs = inputs
        self.name, self.module = resolve_layer(model.model, target_layer)
        self.to_input = to_input and self.module is not None
        """The tap sits on the layer's (first) input instead of its output."""
        self.tap = LayerTap()
        if self.module is None:
            self.side = "embeddings"
        elif inputs.attribute_source and any(m is self.module for m in model.model.get_encoder().modules()):
            self.side = "source"
        else:
            self.side = "target"
        if self.side == "source" and inputs.attribute_target:
            raise ValueError(
                f"layer {self.name!r} is in the encoder: it has source positions only; "
                "call attribute() without attribute_target=True"
            )
        if self.side == "target" and not inputs.attribute_target:
            raise ValueError(
                f"layer {self.name!r} is in the decoder: its positions are target positions; "
                "pass attribute_target=True"
            )
        # A layer inside the model would run again in the contrast's forward pass: a built-in contrastive
        # function is refused here; a custom one that reads the contrast meets the same error when it does,
        # through `self.inputs` (a copy with a guarded objective: the caller's inputs are left as they are).
        if self.side != "embeddings" and inputs.objective.contrast is not None:
            self.inputs = refuse_contrast(
                inputs,
                f"layer {self.name!r} cannot be attributed for a contrastive function (the layer would run "
                "twice, on the original and on the contrast sequence, with different activations)",
                "use target_layer=None (the input embeddings) or attributed_fn='probability'",
            )
        self._hook = None

    def refuse_held_prefix(self, method: str, fix: str) -> None:
        """Refuse prompt-only attribution (``attribute_target=False``, decoder-only) at a layer inside the
        decoder: the layer's baseline activations (the layer on the baseline inputs, as Captum computes them)
        move at the generated prefix too (its positions read the prompt), so the prefix would not be held, and
        ``f(x) - f(baseline)`` would not be what the prompt's attributions add up to. At the input embeddings
        the prefix's activations are its embeddings, held with the inputs.

        Example:
            >>> run.refuse_held_prefix("layer_deeplift", "use target_layer=None")   # doctest: +SKIP
        """
        if self.side == "target" and self.inputs.held_target is not None:
            raise ValueError(
                f"{method} with attribute_target=False (prompt only) at layer {self.name!r}: Captum's layer "
                "baseline (the layer on the baseline inputs) moves the generated prefix's activations too, "
                f"so the prefix would not be held; {fix} or drop attribute_target=False"
            )

    def __enter__(self) -> LayerRun:
        if self.module is not None:

            def through_tap(module, args, output):
                if isinstance(output, tuple):
                    return (self.tap(output[0]), *output[1:])
                return self.tap(output)

            def input_through_tap(module, args):
                if not args:
                    raise ValueError(
                        f"layer {self.name!r} takes its input by keyword; attribute_to_layer_input needs a "
                        "layer called with its input as first positional argument (e.g. a Linear)"
                    )
                return (self.tap(args[0]), *args[1:])

            if self.to_input:
                self._hook = self.module.register_forward_pre_hook(input_through_tap)
            else:
                self._hook = self.module.register_forward_hook(through_tap)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- positions ------------------------------------------------------------------------------------

    def split(self, values: Tensor, dim: int) -> tuple[Tensor | None, Tensor | None]:
        """The tap's positions (along ``dim``) as ``(source part, target part)``; None where there is none."""
        if self.side == "source":
            return values, None
        if self.side == "target":
            return None, values
        source_len = self.inputs.source_embeds.shape[1] if self.inputs.attribute_source else 0
        source, target = values.split([source_len, values.shape[dim] - source_len], dim)
        return (source if self.inputs.attribute_source else None), (
            target if self.inputs.attribute_target else None
        )

    def truncate(self, values: Tensor, prefix_len: int) -> Tensor:
        """Activations ``[n, positions, ...]`` of the whole sequence cut to a target prefix."""
        source, target = self.split(values, 1)
        parts = [x for x in (source, None if target is None else target[:, :prefix_len]) if x is not None]
        return torch.cat(parts, 1)

    def per_role(self, attribution: Tensor) -> tuple[Tensor | None, ...]:
        """A tap attribution as one entry per attributed input role (None for a role the layer lacks)."""
        source, target = self.split(attribution, 1)
        roles = [(source, self.inputs.attribute_source), (target, self.inputs.attribute_target)]
        return tuple(part for part, attributed in roles if attributed)

    # --- forward passes -------------------------------------------------------------------------------

    def wrap(self, forward: Callable[..., Tensor], count: int) -> Callable[..., Tensor]:
        """``forward`` (attributed embeddings first) with the input embeddings passing through the tap."""
        if self.side != "embeddings":
            return forward

        def tapped(*args: Tensor) -> Tensor:
            sizes = [x.shape[1] for x in args[:count]]
            joined = self.tap(torch.cat(args[:count], 1))
            return forward(*joined.split(sizes, 1), *args[count:])

        return tapped

    def objective(
        self, source: Tensor | None, target: Tensor, steps: slice = slice(None), rows: Tensor | None = None
    ) -> Tensor:
        """Scores ``[n, steps]`` with the layer's output going through the tap (``rows``: the batch example of
        each row, as `StepObjective` takes them; None = copies of the batch)."""
        attributed = [
            x
            for x, flag in ((source, self.inputs.attribute_source), (target, self.inputs.attribute_target))
            if flag and x is not None
        ]

        def forward(*args: Tensor) -> Tensor:
            roles = iter(args)
            s = next(roles) if self.inputs.attribute_source and source is not None else source
            t = next(roles) if self.inputs.attribute_target else target
            return self.inputs.objective(s, t, steps, **({} if rows is None else {"rows": rows}))

        return self.wrap(forward, len(attributed))(*attributed)

    def activations(self, source: Tensor | None, target: Tensor) -> Float[Tensor, "batch positions dims"]:
        """The layer's output over the whole sequence for these input embeddings (no gradient)."""
        seen: list[Tensor] = []

        def record(x: Tensor) -> Tensor:
            seen.append(x.detach())
            return x

        with torch.no_grad(), self.tap.acting(record):
            self.objective(source, target)
        if len(seen) != 1:
            cause = (
                "embedding modules other than the input embeddings are bypassed: seqattr feeds embeddings; "
                "use target_layer=None for those"
            )
            if len(seen) > 1 and self.inputs.objective.contrast is not None:
                cause = (
                    "the attributed function reads the contrast sequence, which runs the model (and the "
                    "layer) a second time; use target_layer=None (the input embeddings) or a "
                    f"non-contrastive attributed_fn such as 'probability', or else {cause}"
                )
            raise ValueError(
                f"layer {self.name!r} ran {len(seen)} times in one forward pass; a layer method needs a "
                f"layer that runs exactly once ({cause})"
            )
        activations = seen[0]
        expected = (
            target.shape[1]
            if self.side == "target"
            else (source.shape[1] if self.side == "source" else activations.shape[1])
        )
        if activations.dim() != 3 or activations.shape[:2] != (target.shape[0], expected):
            raise ValueError(
                f"layer {self.name!r} outputs shape {list(activations.shape)}; a layer method needs one "
                f"vector per token, [batch, {expected}, dims]: choose a layer inside the encoder or decoder"
            )
        return activations

    def step_gradients(
        self, values: Tensor, steps: slice, rows: Tensor | None = None
    ) -> Float[Tensor, "steps n positions dims"]:
        """Each step's gradient w.r.t. the layer's output, replaced by ``values`` (``n`` copies of the batch,
        or of the batch examples ``rows`` names, cut to the chunk's prefix), from one forward pass and one
        batched backward."""
        inputs = self.inputs
        prefix_len = int(inputs.batch.step_positions[steps].max())
        if rows is None:
            copies = values.shape[0] // inputs.batch.size
            source = expand_rows(inputs.source_embeds, copies)
            target = expand_rows(inputs.target_embeds[:, :prefix_len], copies)
        else:
            source = None if inputs.source_embeds is None else inputs.source_embeds[rows]
            target = inputs.target_embeds[rows, :prefix_len]
        leaf = values.detach().requires_grad_()

        def replace(x: Tensor) -> Tensor:
            if x.shape != leaf.shape:
                raise ValueError(
                    f"layer {self.name!r} produced shape {list(x.shape)}, expected {list(leaf.shape)}"
                )
            return leaf

        with torch.enable_grad(), self.tap.acting(replace), HeadCut.around(self.objective) as cut:
            scores = self.objective(source, target, steps, rows)
            (gradient,) = cut.backward(scores, [leaf])
        return gradient

    # --- a path method over the layer ---------------------------------------------------------------------

    def path_space(self, baselines: list[Baselines]) -> tuple[PathSpace, list[Baselines]]:
        """The layer's activations as the space of a path method (``methods/path_base.py``), and the paths'
        starts there: the activations on each baseline's inputs (one forward pass each, and one for the
        inputs). A path method's points and factors then apply to the layer unchanged."""
        inputs = self.inputs
        end = self.split(self.activations(inputs.source_embeds, inputs.target_embeds), 1)
        starts = [Baselines(*self.split(self.activations(*b.for_roles(inputs)), 1)) for b in baselines]

        def gradients(source: Tensor | None, target: Tensor | None, steps: slice, rows: Tensor | None = None):
            prefix_len = int(inputs.batch.step_positions[steps].max())
            parts = [x for x in (source, None if target is None else target[:, :prefix_len]) if x is not None]
            return self.split(self.step_gradients(torch.cat(parts, 1), steps, rows), 2)

        return PathSpace(*end, gradients), starts
