"""`left_as_found`: a model comes back from an attribution exactly as it was given (hooks, attention).

Methods remove the hooks they attach (in ``finally`` blocks), but transformers adds some of its own: the
first forward pass with ``output_attentions=True`` or ``output_hidden_states=True`` installs an
output-capturing forward hook on every attention and decoder layer and marks the model with
``_output_capturing_hooks_installed`` (transformers >= 5, ``utils/output_capturing.py``; 60 hooks on
SmolLM2-135M). They stay for the model's lifetime. They are inert outside such a pass, but a user who counts
hooks, or a library that refuses hooked models, sees a changed model. `left_as_found` records every module's
hook dictionaries, the marker and the attention implementation, and puts them back on exit, always.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
"""The per-module dictionaries of ``torch.nn.Module`` that hold hooks (and their flags), by hook id."""

MARKERS = ("_output_capturing_hooks_installed",)
"""Attributes transformers sets on a model once it has installed hooks, so it installs them only once: reset
with the hooks, or it would never install them again."""


@contextlib.contextmanager
def left_as_found(model: nn.Module) -> Iterator[None]:
    """Inside the block anything may add hooks to ``model``'s modules (or switch its attention
    implementation); on exit every hook added is removed and the markers and the implementation are restored.
    Hooks present before are kept, in their order.

    Example:
        >>> inputs = hf_tokenizer("The cat", return_tensors="pt")
        >>> model = type(hf_model)(hf_model.config)           # a fresh copy: no pass has hooked it yet
        >>> hook_count = lambda: sum(len(m._forward_hooks) for m in model.modules())
        >>> with left_as_found(model):
        ...     _ = model(**inputs, output_attentions=True)   # transformers hooks the layers
        ...     hook_count() > 0
        True
        >>> hook_count()
        0
    """
    modules = list(model.modules())
    hooks = [{name: set(getattr(module, name, {})) for name in HOOK_DICTS} for module in modules]
    missing = object()
    markers = [{name: module.__dict__.get(name, missing) for name in MARKERS} for module in modules]
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    try:
        yield
    finally:
        for module, kept, marked in zip(modules, hooks, markers, strict=True):
            for name, ids in kept.items():
                table = getattr(module, name, None)
                for hook_id in [hook_id for hook_id in table or () if hook_id not in ids]:
                    del table[hook_id]
            for name, value in marked.items():
                if value is missing:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
        if config is not None and config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)
