"""Internal cuts of a model by name: a block, its MLP, its self- or cross-attention, an attention head.

Every architecture names its modules its own way (``transformer.h.3.mlp``, ``model.layers.3.mlp``,
``decoder.block.3.layer.2.DenseReluDense``, ``model.decoder.layers.3.fc2``). Besides a module's dotted
name, seqattr accepts the same short names on every model:

- ``3`` or ``"decoder.3"``: block 3 of the decoder (negative indices count from the end); ``"encoder.3"``:
  block 3 of an encoder-decoder's encoder (a decoder-only model has one stack, named ``decoder`` here);
- ``"decoder.3.mlp"``, ``"decoder.3.attention"`` (self-attention), ``"decoder.3.cross_attention"`` (an
  encoder-decoder's decoder attending to the encoder), ``"encoder.3.mlp"``, ``"encoder.3.attention"``.

An unknown name is refused with the valid short names of the model and the closest dotted names. An attention
head is selected by its attention module and its index (`attention_heads`): its output is the head's slice of
the input of the attention's output projection (the heads' concatenated outputs).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

from seqattr.models.family import ENCODER_DECODER, family_of

PARTS = ("mlp", "attention", "cross_attention")
"""The parts of a block a short name can select."""

_PART_MODULES = {
    # The module names of each part, by architecture: Llama/Qwen2/GPT-2/T5 MLPs; BART/Marian have no MLP
    # module, their MLP's output is fc2's (before dropout and the residual).
    "mlp": ("mlp", "DenseReluDense", "fc2"),
    "attention": ("self_attn", "attn", "SelfAttention"),
    "cross_attention": ("encoder_attn", "crossattention", "EncDecAttention"),
}
_OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "o", "out_proj")
"""An attention module's output projection, whose input is the heads' outputs side by side."""
_SHORT_NAME = re.compile(r"^(?:(encoder|decoder)\.)?(-?\d+)(?:\.(\w+))?$")


def stacks(hf_model: nn.Module) -> dict[str, nn.ModuleList]:
    """The model's block lists by side: ``{"decoder": ...}`` for a decoder-only model, ``{"encoder": ...,
    "decoder": ...}`` for an encoder-decoder.

    Example:
        >>> {side: len(blocks) for side, blocks in stacks(hf_model).items()}
        {'decoder': 2}
    """
    sides = {"decoder": hf_model}
    if _has_encoder(hf_model):
        sides = {"encoder": hf_model.get_encoder(), "decoder": hf_model.get_decoder()}
    found = {}
    for side, stack in sides.items():
        # The stack's blocks: its first non-empty ModuleList in module order (T5's blocks hold ModuleLists of
        # sub-layers too, which come after the list of blocks).
        lists = [m for m in stack.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if lists:
            found[side] = lists[0]
    return found


def valid_short_names(hf_model: nn.Module) -> list[str]:
    """The short names this model accepts, compactly (``decoder.0..3``, ``decoder.N.mlp``, ...).

    Example:
        >>> valid_short_names(hf_model)
        ['decoder.0..1 (or 0..1)', 'decoder.N.mlp', 'decoder.N.attention']
    """
    names = []
    for side, blocks in stacks(hf_model).items():
        span = f"{side}.0..{len(blocks) - 1}"
        names.append(f"{span} (or 0..{len(blocks) - 1})" if side == "decoder" else span)
        names += [f"{side}.N.{part}" for part in PARTS if _part(blocks[0], part) is not None]
    return names


def _part(block: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    """``(relative dotted name, module)`` of ``part`` inside ``block``, or None where the block has none."""
    for name, module in block.named_modules():
        if name and name.rsplit(".", 1)[-1] in _PART_MODULES[part]:
            return name, module
    return None


def resolve_module(
    hf_model: nn.Module, layer: str | int | nn.Module, what: str = "layer"
) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of ``layer``: a module of the model, its dotted name, or a short name (see
    the module docstring). Anything else is refused with the model's valid names.

    Example:
        >>> resolve_module(hf_model, "decoder.1.mlp")[0], resolve_module(hf_model, -1)[0]
        ('transformer.h.1.mlp', 'transformer.h.1')
        >>> resolve_module(hf_model, "decoder.7")
        Traceback (most recent call last):
        ...
        ValueError: layer 'decoder.7': the decoder has 2 blocks (indices 0..1, or negative)
    """
    names = {module: name for name, module in hf_model.named_modules()}
    if isinstance(layer, nn.Module):
        if layer not in names:
            raise ValueError(f"{what} {type(layer).__name__} is not a module of the model")
        return names[layer], layer
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise TypeError(
            f"{what} must be a module, its dotted name, a block index or a short name such as "
            f"'decoder.0.mlp'; got {type(layer).__name__}"
        )
    if isinstance(layer, str):
        try:
            return layer, hf_model.get_submodule(layer)
        except AttributeError:
            pass
    match = _SHORT_NAME.match(str(layer))
    if match is None:
        raise ValueError(_unknown(hf_model, layer, what, names))
    side, index, part = match.group(1) or "decoder", int(match.group(2)), match.group(3)
    blocks = stacks(hf_model).get(side)
    if blocks is None:
        raise ValueError(
            f"{what} {layer!r}: this model has no {side} (it is decoder-only); valid: "
            f"{', '.join(valid_short_names(hf_model))}"
        )
    if not -len(blocks) <= index < len(blocks):
        raise ValueError(
            f"{what} {layer!r}: the {side} has {len(blocks)} blocks "
            f"(indices 0..{len(blocks) - 1}, or negative)"
        )
    block = blocks[index]
    if part is None:
        return names[block], block
    found = _part(block, part) if part in PARTS else None
    if found is None:
        raise ValueError(
            f"{what} {layer!r}: a {side} block of {type(hf_model).__name__} has no {part!r}; valid: "
            f"{', '.join(valid_short_names(hf_model))}"
        )
    return f"{names[block]}.{found[0]}", found[1]


def _unknown(hf_model: nn.Module, layer: str | int, what: str, names: dict) -> str:
    all_names = [name for name in names.values() if name]
    close = difflib.get_close_matches(str(layer), all_names, n=6, cutoff=0.6)
    hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(all_names[1:4])}"
    return (
        f"{what} {layer!r}: {type(hf_model).__name__} has no layer named {layer!r}; {hint}; or a short name: "
        f"{', '.join(valid_short_names(hf_model))} (all names: [n for n, _ in model.model.named_modules()])"
    )


def is_in_encoder(hf_model: nn.Module, module: nn.Module) -> bool:
    """True when ``module`` belongs to an encoder-decoder's encoder (its positions are source tokens)."""
    return _has_encoder(hf_model) and any(m is module for m in hf_model.get_encoder().modules())


def _has_encoder(hf_model: nn.Module) -> bool:
    """Whether the model is an encoder-decoder (its family says: seqattr.models.family)."""
    config = getattr(hf_model, "config", None)
    return config is not None and family_of(config) is ENCODER_DECODER


@dataclass(frozen=True)
class AttentionHeads:
    """An attention module's heads: the output projection whose input holds them side by side."""

    attention: str
    """Dotted name of the attention module."""
    projection: nn.Module
    """Its output projection; its input is ``[..., heads * head_dim]``, head ``h`` from ``h * head_dim``."""
    num_heads: int


def attention_heads(hf_model: nn.Module, layer: str | int | nn.Module) -> AttentionHeads:
    """The heads of the attention module ``layer`` (any name `resolve_module` takes; a block or a block's
    number means its self-attention).

    Example:
        >>> heads = attention_heads(hf_model, "decoder.0.attention")
        >>> heads.attention, heads.num_heads
        ('transformer.h.0.attn', 4)
    """
    name, module = resolve_module(hf_model, layer, "attention layer")
    attention_names = _PART_MODULES["attention"] + _PART_MODULES["cross_attention"]
    if name.rsplit(".", 1)[-1] not in attention_names:
        found = _part(module, "attention")  # a block: its self-attention
        if found is not None and any(m is module for m in _blocks(hf_model)):
            name, module = f"{name}.{found[0]}", found[1]
    projection = _projection(module) if name.rsplit(".", 1)[-1] in attention_names else None
    if projection is None:
        raise ValueError(
            f"{name!r} is not an attention module (no output projection among its children); give an "
            f"attention, e.g. 'decoder.0.attention' or 'decoder.0.cross_attention'"
        )
    config = getattr(hf_model, "config", None)
    num_heads = next(
        (
            value
            for value in (
                getattr(module, "num_heads", None),
                getattr(module, "n_heads", None),
                getattr(getattr(module, "config", None), "num_attention_heads", None),
                getattr(config, "num_attention_heads", None),
            )
            if isinstance(value, int)
        ),
        None,
    )
    if num_heads is None:
        raise ValueError(f"cannot tell how many heads {name!r} has (no num_heads attribute or config entry)")
    return AttentionHeads(name, projection, num_heads)


def _blocks(hf_model: nn.Module) -> list[nn.Module]:
    return [block for blocks in stacks(hf_model).values() for block in blocks]


def _projection(module: nn.Module) -> nn.Module | None:
    for child_name, child in module.named_children():
        if child_name in _OUTPUT_PROJECTIONS:
            return child
    return None
