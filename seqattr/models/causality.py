"""Refuse models whose predictions are not causal, and checkpoints loaded with a random language-model head.

seqattr explains a step as the prediction of a target token from the tokens before it, and the fused engine
reads every step from one forward pass over the whole sequence. Both are only right when the decoder is
causal: the logits at position ``p`` must not depend on tokens after ``p``. A bidirectional model (a BERT
checkpoint loaded by ``AutoModelForCausalLM``, a ``BertLMHeadModel`` with ``is_decoder=False``) runs and
returns numbers, but a step's probability then depends on the tokens it is supposed to predict: silently
wrong attributions, and fused and stepwise results that differ.

Rather than a table of classes (``config.is_decoder`` is False on GPT-2 too), causality is measured once per
model, like the embedding scale: one forward pass over two sequences that share their first half and differ
in the second. In a causal decoder the first half's logits are equal (masked positions contribute exactly
zero); in a bidirectional one they move by a sizeable fraction of how much the second half's logits move.

Example:
    >>> from seqattr.testing import tiny_model
    >>> check_causal(tiny_model("gpt2")[0])            # causal: nothing to say
    >>> check_causal(tiny_model("t5")[0])              # its decoder is causal
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from seqattr.models.family import family_of

_PROBE_LENGTH = 8
# Relative movement of the shared half's logits above which the model is not causal. Every causal model of
# the test zoo gives exactly 0 in float64, float32, bfloat16 and float16 (masked positions contribute exact
# zeros); the margin is for kernels that round differently per row. A BERT with BERT's own random
# initialisation (std 0.02, nearly uniform attention) gives 0.004, a trained one far more.
_TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 1e-3}
_DEFAULT_TOLERANCE = 1e-4


def _probe_ids(model: PreTrainedModel) -> torch.Tensor:
    """Two rows of token ids, equal in their first half, different in their second (fixed, not random)."""
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(vocab, (_PROBE_LENGTH,), generator=generator)
    second = first.clone()
    half = _PROBE_LENGTH // 2
    second[half:] = (first[half:] + 1 + torch.randint(vocab - 1, (half,), generator=generator)) % vocab
    return torch.stack([first, second]).to(model.device)


def prefix_dependence(model: PreTrainedModel) -> float:
    """How much the logits of a shared first half move when the second half of the sequence changes,
    relative to how much the second half's own logits move: 0 for a causal decoder.

    Example:
        >>> from seqattr.testing import tiny_model
        >>> prefix_dependence(tiny_model("llama")[0])
        0.0
    """
    ids = _probe_ids(model)
    half = _PROBE_LENGTH // 2
    with torch.no_grad():
        logits = family_of(model).probe_logits(model, ids)
    change = (logits[0] - logits[1]).float().abs()
    shared, changed = change[:half].max(), change[half:].max()
    if not torch.isfinite(shared) or not torch.isfinite(changed):
        return float("nan")
    return float(shared / changed.clamp_min(torch.finfo(torch.float32).tiny))


def check_causal(model: PreTrainedModel) -> None:
    """Raise a ValueError if the model's (decoder's) predictions depend on later tokens (classifiers, whose
    one step sees the whole text, are not checked)."""
    if not family_of(model).checks_causality:
        return
    dependence = prefix_dependence(model)
    if dependence <= _TOLERANCE.get(model.dtype, _DEFAULT_TOLERANCE):  # NaN compares False: refused too
        return
    side = family_of(model).predictor
    raise ValueError(
        f"{type(model).__name__} is not a causal language model: {side} prediction at a position changes "
        f"when later tokens change (by {dependence:.2g} of their own change), so attention runs both ways "
        "(a BERT-style encoder, or a BertLMHeadModel-style model without is_decoder=True). seqattr explains "
        "generation, where each token is predicted from the tokens before it; with this model a step's "
        "probability would depend on the tokens it predicts and every attribution would be wrong. Use a "
        "causal language model (GPT-2, Llama, Qwen, ...) or an encoder-decoder (T5, Bart, Marian, ...); set "
        "config.is_decoder=True only for a checkpoint that was trained as a decoder."
    )


def check_head_loaded(name: str, model: PreTrainedModel, missing_keys: list[str]) -> None:
    """Raise a ValueError if ``from_pretrained`` initialised (part of) the language-model head at random:
    the checkpoint has no head for this task (e.g. a ``BertModel`` loaded as a causal LM).

    Example:
        >>> from seqattr.testing import tiny_model
        >>> check_head_loaded("gpt2", tiny_model("gpt2")[0], ["lm_head.weight"])
        Traceback (most recent call last):
        ...
        ValueError: 'gpt2' has no trained language-modelling head: ...
    """
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), "")
    # The head's top-level module outside the base model (``lm_head``, BERT's ``cls``): keys missing there
    # were initialised at random. Keys missing inside the base model (a pooler, say) do not feed the logits.
    top = head_name.split(".")[0]
    if not top or top == model.base_model_prefix:
        return
    random = sorted(k for k in missing_keys if k == top or k.startswith(top + "."))
    if random:
        shown = ", ".join(random[:4]) + (", ..." if len(random) > 4 else "")
        raise ValueError(
            f"{name!r} has no trained language-modelling head: loading it as {type(model).__name__} "
            f"initialised {shown} at random, so its predictions (and any attribution of them) are noise. "
            "Use a checkpoint trained for generation (a causal LM or an encoder-decoder)."
        )
