"""Activation checkpointing of a model's blocks when one sequence's graph would exceed `GRAPH_BYTES`.

A gradient method's forward pass keeps every block's activations for the backward pass: over a long
sequence that graph is most of the method's memory (SmolLM2, 30 blocks, 1,000 tokens: about 1.3 GB). With
checkpointing, a block keeps only its input; its activations are recomputed, one block at a time, when the
backward pass reaches it (`torch.utils.checkpoint`, non-reentrant: it works with the batched backward of
``is_grads_batched`` and with double backward). The cost is about one more forward pass; the numbers are the
same, since the recomputation repeats the same operations on the same values.

Whether to checkpoint is decided in each forward pass, for each stack of blocks (an encoder-decoder's encoder
and decoder apart): the first block that records a graph runs as usual while the bytes it saves are counted;
when that times the number of blocks from it to the stack's end exceeds `GRAPH_BYTES` per sequence of the
pass (its rows), the blocks after it are checkpointed. Per sequence: a graph that is large because a pass
holds many rows (integrated gradients' 50 interpolation rows of a short text) is the engine's chunking to
choose, and recomputing it would cost a third more time where memory is no concern; one that is large
because the sequence is long can only shrink by recomputation. The decision needs no estimate of the
architecture (attention implementation, MLP width): it is measured on the pass itself.

Forward hooks on a block stay outside its checkpoint (the block's ``forward`` is checkpointed, not its
``__call__``, as transformers does): a hook that reads or replaces a block's output runs once. Hooks on
modules inside a block run again during the recomputation when they are still attached during the backward
pass (LRP rules, a layer method's tap): they compute the same values again, which is all the recomputation
needs; hooks removed after the forward pass (recording a quantity of interest) do not run again. Without
gradients (no graph), blocks run as they are. The measuring block's saved tensors go through this module's
own ``saved_tensors_hooks`` (the innermost hooks apply), so a caller's hooks (e.g. ``save_on_cpu``) do not
see that block, as they do not see a checkpointed one.

Example:
    >>> embeds = hf_model.get_input_embeddings()(torch.tensor([[5, 6, 7]])).requires_grad_()
    >>> with checkpointing_when_large(hf_model, budget=0) as plan:
    ...     logits = hf_model(inputs_embeds=embeds, use_cache=False).logits
    >>> plan.checkpointed > 0          # the budget was exceeded: blocks after the first were checkpointed
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqattr.cuts import stacks
from seqattr.typing import Tensor

GRAPH_BYTES = 2**30
"""Activations one sequence of a forward pass may keep for its backward pass, per stack of blocks, before the
stack's blocks are checkpointed (1 GiB). Measured on SmolLM2 (docs/benchmarks.md, "Long contexts"): saliency
at 1,000 tokens keeps about 1.3 GB without checkpointing."""


@dataclass
class CheckpointPlan:
    """What `checkpointing_when_large` measured and decided, over all passes inside its block."""

    budget: int
    graph_bytes: dict[str, int] = field(default_factory=dict)
    """Estimated graph of each stack in the last pass that recorded one: the saved bytes of its first block
    that saved anything, times that block and the blocks after it."""
    checkpointed: int = 0
    """Block calls that ran checkpointed."""


def saved_bytes(run: Callable[[], Any], excluded: set[int]) -> tuple[Any, int]:
    """``run()`` and the bytes of the tensors autograd saved for the backward pass while it ran, each storage
    counted once and storages in ``excluded`` (data pointers: the model's weights) not at all.

    Example:
        >>> x = torch.ones(4, 8, requires_grad=True)
        >>> _, size = saved_bytes(lambda: (x * 2).exp(), excluded=set())
        >>> size                        # exp saves its output: 32 float32 values
        128
    """
    seen: set[int] = set()
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in seen and pointer not in excluded:
            seen.add(pointer)
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return result, total


@contextlib.contextmanager
def checkpointing_when_large(hf_model: nn.Module, budget: int | None = None) -> Iterator[CheckpointPlan]:
    """Inside the block, each forward pass of ``hf_model`` checkpoints the blocks of a stack whose graph would
    exceed ``budget`` bytes (default `GRAPH_BYTES`); see the module's docstring. The model is left as found on
    exit, also after an exception.

    Example:
        >>> with checkpointing_when_large(hf_model) as plan:          # a short pass: under the budget
        ...     logits = hf_model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False).logits
        >>> plan.checkpointed
        0
    """
    plan = CheckpointPlan(GRAPH_BYTES if budget is None else budget)
    if not torch.is_grad_enabled():  # no graph to record: the blocks would run as they are anyway
        yield plan
        return
    weights = {t.untyped_storage().data_ptr() for t in (*hf_model.parameters(), *hf_model.buffers())}
    patched: list[nn.Module] = []
    try:
        for side, blocks in stacks(hf_model).items():
            decision = {"measured": False, "checkpoint": False}
            for index, block in enumerate(blocks):
                if "forward" in block.__dict__:  # already wrapped (a nested call): leave it to the outer one
                    continue
                planned = _planned_forward(block.forward, index, len(blocks), side, plan, decision, weights)
                block.forward = planned
                patched.append(block)
        yield plan
    finally:
        for block in patched:
            del block.forward


def _planned_forward(
    forward: Callable[..., Any],
    index: int,
    count: int,
    side: str,
    plan: CheckpointPlan,
    decision: dict[str, bool],
    weights: set[int],
) -> Callable[..., Any]:
    """Block ``index`` of ``count``'s forward: the first block of the pass that saves anything measures and
    decides for the blocks after it; blocks before it (nothing to save: the attributed tensor enters later, as
    with a layer method's tap) run as they are."""

    def planned(*args: Any, **kwargs: Any) -> Any:
        if index == 0:  # a new pass
            decision.update(measured=False, checkpoint=False)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if not decision["measured"]:
            output, size = saved_bytes(lambda: forward(*args, **kwargs), weights)
            if size:
                plan.graph_bytes[side] = size * (count - index)
                rows = _rows(args, kwargs)
                decision.update(measured=True, checkpoint=size * (count - index) > plan.budget * rows)
            return output
        if decision["checkpoint"]:
            plan.checkpointed += 1
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return planned


def _rows(args: tuple, kwargs: dict) -> int:
    """The number of sequences in a block's input (its hidden states' first dimension; 1 if not found)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    return hidden.shape[0] if isinstance(hidden, Tensor) and hidden.dim() == 3 else 1
