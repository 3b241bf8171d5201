"""Saliency and input x gradient equal an independent autograd computation, step by step on each prefix.

The reference below is a few lines of plain torch: run the Hugging Face model on the step's prefix as token
ids (no seqattr code, not even its ``inputs_embeds`` convention), take the probability of the step's token
and ``torch.autograd.grad`` it w.r.t. the outputs of the model's input embedding layer, caught by a hook.
It is checked for every tiny architecture, both engines (fused and stepwise), with and without
``attribute_target``, in float64 within 1e-5 (see tests/exact.py), and in float32 (the default precision)
within the float32 rounding of these ill-conditioned random models.
"""

from __future__ import annotations

import pytest
import torch

import seqattr
from exact import assert_close, exact_model, float64_model, probability64
from seqattr.methods.gradient import HeadCut, batched_step_backward
from seqattr.testing import ARCHITECTURES, tiny_model

PROMPTS = ["the cat sat on the mat", "Paris is a beautiful city"]
NEW_TOKENS = 4


def reference_gradients(hf_model, seq: seqattr.SequenceAttribution, position: int):
    """Gradient of p(target[position] | prefix) w.r.t. the source and prefix embeddings, plus the embeddings.

    The model runs on token ids, exactly as transformers runs it; a forward hook keeps the outputs of its
    input embedding layer (encoder call first, then decoder), with respect to which the gradient is taken.
    Returns ``(source_grad, source_embeds, prefix_grad, prefix_embeds)``, ``[len, hidden]`` each (the source
    pair is None for decoder-only models).
    """
    embedded = []
    layers = [hf_model.get_input_embeddings()]
    if (
        hf_model.config.is_encoder_decoder
    ):  # e.g. T5's encoder and decoder hold their own (tied) embedding layer
        layers = [
            hf_model.get_encoder().get_input_embeddings(),
            hf_model.get_decoder().get_input_embeddings(),
        ]
    layers = list({id(layer): layer for layer in layers}.values())  # a shared layer runs twice: hook it once
    hooks = [
        layer.register_forward_hook(lambda module, args, output: embedded.append(output)) for layer in layers
    ]
    try:
        prefix_ids = torch.tensor([seq.target_ids[:position]])
        if hf_model.config.is_encoder_decoder:
            source_ids = torch.tensor([seq.source_ids])
            logits = hf_model(input_ids=source_ids, decoder_input_ids=prefix_ids, use_cache=False).logits[
                0, -1
            ]
        else:
            logits = hf_model(input_ids=prefix_ids, use_cache=False).logits[0, -1]
    finally:
        for hook in hooks:
            hook.remove()
    probability = torch.softmax(logits, dim=-1)[seq.target_ids[position]]
    grads = torch.autograd.grad(probability, embedded)
    if hf_model.config.is_encoder_decoder:
        (source, prefix), (source_grad, prefix_grad) = embedded, grads
        return source_grad[0], source[0].detach(), prefix_grad[0], prefix[0].detach()
    return None, None, grads[0][0], embedded[0][0].detach()


def reduce(method: str, grad: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """The methods' definitions (default options: absolute gradient, hidden summed)."""
    return grad.abs().sum(-1) if method == "saliency" else (grad * embeds).sum(-1)


def check_against_reference(out, hf_model, method: str, attribute_target: bool, rtol: float) -> None:
    encoder_decoder = hf_model.config.is_encoder_decoder
    for i, seq in enumerate(out):
        assert seq.num_steps >= 1
        if encoder_decoder:
            assert seq.source_attributions.shape == (len(seq.source_ids), seq.num_steps)
            assert (seq.target_attributions is not None) == attribute_target
        else:
            assert seq.source_attributions is None
            assert seq.target_attributions.shape == (len(seq.target_ids), seq.num_steps)
        for step in range(seq.num_steps):
            position = seq.attr_pos_start + step
            source_grad, source, prefix_grad, prefix = reference_gradients(hf_model, seq, position)
            where = f"example {i} step {step}"
            if encoder_decoder:
                expected = reduce(method, source_grad, source)
                assert_close(seq.source_attributions[:, step], expected, rtol, f"{where} source")
            if seq.target_attributions is not None:
                column = seq.target_attributions[:, step]
                # attribute_target=False on a decoder-only model: the prompt only (the generated prefix NaN).
                seen = position if encoder_decoder or attribute_target else seq.attr_pos_start
                expected = reduce(method, prefix_grad, prefix)[:seen]
                assert_close(column[:seen], expected, rtol, f"{where} target")
                assert column[seen:].isnan().all(), f"{where}: positions not attributed are not NaN"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
@pytest.mark.parametrize("attribute_target", [False, True], ids=["source", "target"])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_equals_direct_autograd_on_each_prefix(architecture, method, attribute_target, fused):
    model = exact_model(architecture, method)
    out = model.attribute(
        PROMPTS,
        generation_args={"max_new_tokens": NEW_TOKENS},
        attribute_target=attribute_target,
        attributed_fn=probability64,
        fused=fused,
        show_progress=False,
    )
    assert out.info["engine"] == ("fused" if fused else "stepwise")
    check_against_reference(out, model.model, method, attribute_target, rtol=1e-5)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama", "qwen2"])
def test_the_backward_cut_below_the_output_head_equals_autograd(architecture, method, monkeypatch):
    """A built-in step function of the step's own logits: the batched backward starts below the output head
    (`HeadCut`), in chunks of several steps; the gradients still equal the direct computation."""
    cut_shapes = []
    backward = HeadCut.backward

    def spy(self, scores, wrt):
        cut_shapes.extend(leaf.shape for _, leaf in self.cuts)
        return backward(self, scores, wrt)

    monkeypatch.setattr(HeadCut, "backward", spy)
    model = exact_model(architecture, method)
    out = model.attribute(
        PROMPTS,
        generation_args={"max_new_tokens": NEW_TOKENS},
        attributed_fn="probability",
        show_progress=False,
    )
    check_against_reference(out, model.model, method, attribute_target=True, rtol=1e-5)
    # One cut per chunk, at the head input of every step of the chunk (two examples, 4 steps, one chunk).
    assert [tuple(shape[:2]) for shape in cut_shapes] == [(2, NEW_TOKENS)]


def test_a_head_cut_that_does_not_fit_carries_every_seed_through_the_head():
    """Where the head's input is not one row per step (here: every position), the cut gradients still equal
    the uncut batched backward, whose scores mix positions."""
    torch.manual_seed(0)
    inputs = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    body, head = torch.nn.Linear(3, 4).double(), torch.nn.Linear(4, 6).double()

    def scores() -> torch.Tensor:  # [2 rows, 3 steps]: each step reads every position's logits
        logits = head(torch.tanh(body(inputs)))
        return torch.stack([logits[:, : t + 2].pow(2).sum((1, 2)) for t in range(3)], 1)

    expected = batched_step_backward(scores(), [inputs])
    with HeadCut.at(head) as cut:
        actual = cut.backward(scores(), [inputs])
    assert len(cut.cuts) == 1 and cut.cuts[0][1].shape[:2] != (2, 3)
    assert_close(actual[0], expected[0], 1e-12, "cut gradients")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_float32_default_probability_matches_autograd(architecture):
    """The default precision and attributed function; float32 rounding of the random tiny models reaches ~1e-4
    of a step's largest score (tests/exact.py), far below the O(1) error of a wrong position or mask."""
    hf_model, tokenizer = tiny_model(architecture)
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    out = model.attribute(
        PROMPTS, generation_args={"max_new_tokens": NEW_TOKENS}, attribute_target=True, show_progress=False
    )
    reference_model = float64_model(architecture)[0]
    check_against_reference(out, reference_model, "saliency", attribute_target=True, rtol=2e-3)


@pytest.mark.parametrize("architecture", ["llama", "bart"])
def test_raw_gradient_and_reductions(architecture):
    """``hidden_reduction=None`` with ``abs=False`` is the raw gradient; each reduction is a function of
    it."""
    model = exact_model(architecture)
    text = "the cat sat on the mat"
    kwargs = dict(
        generation_args={"max_new_tokens": 3},
        attribute_target=True,
        attributed_fn=probability64,
        show_progress=False,
    )
    raw = model.attribute(text, hidden_reduction=None, abs=False, **kwargs)[0]
    assert raw.target_attributions.shape[-1] == model.model.get_input_embeddings().embedding_dim
    for step in range(raw.num_steps):
        position = raw.attr_pos_start + step
        source_grad, _, prefix_grad, _ = reference_gradients(model.model, raw, position)
        assert_close(raw.target_attributions[:position, step], prefix_grad, what=f"step {step} raw target")
        assert raw.target_attributions[position:, step].isnan().all()
        if source_grad is not None:
            assert_close(raw.source_attributions[:, step], source_grad, what=f"step {step} raw source")

    reductions = {
        "sum": lambda g: g.sum(-1),
        "l2": lambda g: g.norm(dim=-1),
        "mean": lambda g: g.mean(-1),
        "absmax": lambda g: g.gather(-1, g.abs().argmax(-1, keepdim=True))[..., 0],
    }
    for name, fn in reductions.items():
        reduced = model.attribute(text, hidden_reduction=name, abs=False, **kwargs)[0]
        for side in ("source_attributions", "target_attributions"):
            raw_side = getattr(raw, side)
            if raw_side is not None:
                # Scaled by the raw gradient: Bart's embedding layer norm makes its sum over hidden ~0.
                scale = float(raw_side.nan_to_num().abs().max())
                assert_close(
                    getattr(reduced, side), fn(raw_side.double()), what=f"{name} {side}", scale=scale
                )


def test_input_x_gradient_is_embeddings_times_saliency_without_abs():
    model = exact_model("qwen2")
    kwargs = dict(
        generation_args={"max_new_tokens": 3},
        attributed_fn=probability64,
        hidden_reduction=None,
        show_progress=False,
    )
    gradient = model.attribute(PROMPTS[0], abs=False, **kwargs)[0]
    product = model.attribute(PROMPTS[0], method="input_x_gradient", **kwargs)[0]
    embeds = model.model.get_input_embeddings()(torch.tensor(gradient.target_ids)).detach()
    assert_close(product.target_attributions, gradient.target_attributions.double() * embeds[:, None, :])
