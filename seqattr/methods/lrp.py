"""AttnLRP and CP-LRP (Achtibat et al. 2024): layer-wise relevance propagation through transformers, as
input x modified gradient.

LRP sends each step's score back through the network with a rule per operation; for the rules of AttnLRP the
relevance that reaches a tensor equals the tensor times a *modified* gradient (Achtibat et al. 2024, sec.
3.3), so one forward pass and one backward pass give it, and seqattr's fused gradient machinery (one forward,
one backward batched over all steps) applies unchanged. `lrp_rules` modifies the gradient of the model's own
modules with forward hooks that keep every forward value (``x.detach() + (x - x.detach()) * factor`` is ``x``
forward and ``factor * grad`` backward), and removes them on exit, always:

- **normalisation** (LayerNorm, RMSNorm, T5's norm): identity rule, i.e. the norm's std (or RMS) detached;
  LayerNorm's centring is linear and keeps its gradient;
- **elementwise activations** (GELU, SiLU, ReLU, ...): identity rule, relevance passed unchanged: the
  gradient becomes ``f(x) / x``;
- **attention** (AttnLRP): the products ``q k^T`` and ``softmax · v`` by the uniform rule, relevance split
  half and half between their two factors: gradients at the query and key projections x 1/4, at the values
  x 1/2.
  The softmax keeps its true gradient, which in input x gradient form *is* the paper's softmax rule
  ``R_in = x (R_out - s sum(R_out))``. The rules sit on the projections, before the attention kernel, so they
  hold with every attention implementation (eager, SDPA) and the model's own is kept;
- **attention** (CP-LRP, Ali et al. 2022): queries and keys detached: the attention weights are constants and
  relevance flows through the values only;
- **gated MLPs** (``act(gate) * up``, SwiGLU): the uniform rule (AttnLRP: the product's gradient halved);
  CP-LRP detaches the gate, as the authors' implementation (lxt) does.

Linear layers keep their gradient: the epsilon rule with the bias absorbing its share. Conservation: each
step's relevances sum to the attributed score (use ``attributed_fn="logit"``, the quantity LRP explains) less
what biases (linear and norm biases, position embeddings, T5's relative attention bias) absorb; CP-LRP on a
model without biases conserves exactly; AttnLRP's softmax rule is not conservative by itself (a row passes on
``sum_j z_j (R_j - s_j sum(R))`` instead of ``sum(R)``; docs/methods_gradient.md).

The rules are written for the module layouts in `SUPPORTED_ARCHITECTURES`; another architecture is refused
with the list (its attention or MLP may hide a product the rules would not see).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from captum.attr import InputXGradient as CaptumInputXGradient
from torch import nn
from transformers.activations import ACT2CLS

from seqattr.methods.base import MethodInputs, MethodOutput
from seqattr.methods.gradient import GradientOptions, PointwiseGradientMethod
from seqattr.methods.layer_gradient_x_activation import LayerGradientXActivation
from seqattr.methods.options import TargetLayer
from seqattr.typing import Tensor

SUPPORTED_ARCHITECTURES = {
    "gpt2": "GPT-2",
    "llama": "Llama (SmolLM2)",
    "qwen2": "Qwen2",
    "t5": "T5",
    "bart": "BART",
    "marian": "Marian",
}
"""``config.model_type`` -> name: the architectures whose modules the rules were checked on
(tests/test_lrp.py)."""

ATTENTION_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
"""Query, key and value projections by attribute name: Llama, Qwen2, BART, Marian; T5."""
FUSED_ATTENTION_PROJECTION = "c_attn"
"""GPT-2's one projection whose output holds the queries, keys and values, a third each, in that order."""
GATED_MLPS = (("gate_proj", "up_proj", "down_proj"), ("wi_0", "wi_1", "wo"))
"""``down(act(gate(x)) * up(x))`` by attribute name: Llama, Qwen2 (SwiGLU); T5's gated variants."""
ACTIVATIONS = tuple(
    {cls[0] if isinstance(cls, tuple) else cls for cls in ACT2CLS.values()}
    | {nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Sigmoid}
)
"""Elementwise activations (transformers' ``ACT2FN`` classes and torch's): the identity rule applies."""

VARIANTS = ("attnlrp", "cp_lrp")


def scale_gradient(x: Tensor, factor: Tensor | float) -> Tensor:
    """``x`` in the forward pass, ``factor * grad`` in the backward pass (plain autograd: vmap-safe).

    Example:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> y = scale_gradient(x, 0.25)
        >>> torch.equal(y, x), torch.autograd.grad(y.sum(), x)[0].tolist()
        (True, [0.25, 0.25])
    """
    fixed = x.detach()
    return fixed + (x - fixed) * factor


def with_gradient_of(output: Tensor, linear: Tensor) -> Tensor:
    """``output``'s values with ``linear``'s gradient (``linear`` must equal ``output`` up to constants)."""
    return output.detach() + (linear - linear.detach())


class UnsupportedNorm(ValueError):
    """A normalisation module whose output the rule's formula does not reproduce."""


def linearised_norm(module: nn.Module, x: Tensor) -> Tensor:
    """The norm of ``x`` with its std (LayerNorm) or RMS (RMSNorm) detached, less its bias: the identity
    rule."""
    if isinstance(module, nn.LayerNorm):
        # In float32 at least, as torch's kernel computes it (half precision would round the statistics).
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        centred = wide - wide.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        normed = (centred / std.detach()).to(x.dtype)
        return normed * module.weight if module.weight is not None else normed
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    # RMSNorm: transformers computes the RMS in float32 and casts back before the gain.
    wide = x.float()
    scale = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return module.weight * (wide * scale.detach()).to(x.dtype)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, or an RMSNorm by its class name (transformers' ``*RMSNorm``, T5's ``T5LayerNorm``)."""
    if isinstance(module, nn.LayerNorm):
        return True
    name = type(module).__name__
    has_eps = hasattr(module, "variance_epsilon") or hasattr(module, "eps")
    return ("RMSNorm" in name or name == "T5LayerNorm") and has_eps and hasattr(module, "weight")


def check_architecture(model: nn.Module, method: str) -> None:
    """Refuse a model whose architecture the rules were not written for, naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        listed = ", ".join(f"{name} ({key})" for key, name in SUPPORTED_ARCHITECTURES.items())
        raise ValueError(
            f"{method} does not support {type(model).__name__} (model_type {model_type!r}) yet: its rules "
            f"are written for the modules of {listed}. Use one of these architectures, or a method that "
            "works on any model (input_x_gradient, integrated_gradients)"
        )


@dataclass
class RuleHooks:
    """The forward hooks of one variant's rules, attached to a model's modules by `lrp_rules`."""

    variant: str

    def projections(self, output: Tensor, role: str) -> Tensor:
        if self.variant == "cp_lrp":
            return output if role == "value" else output.detach()
        return scale_gradient(output, 0.5 if role == "value" else 0.25)

    def fused_projection(self, output: Tensor) -> Tensor:
        width = output.shape[-1] // 3
        if self.variant == "cp_lrp":
            factors = [0.0, 0.0, 1.0]
        else:
            factors = [0.25, 0.25, 0.5]
        factor = torch.cat([output.new_full((width,), f) for f in factors])
        return scale_gradient(output, factor)

    def hooks(self, model: nn.Module) -> Iterator[tuple[nn.Module, str, object]]:
        """``(module, "forward" | "pre", hook)`` for every module a rule applies to."""
        for module in model.modules():
            if is_norm(module):
                yield module, "forward", self.norm_hook()
            elif isinstance(module, ACTIVATIONS):
                yield module, "forward", identity_hook
            fused = getattr(module, FUSED_ATTENTION_PROJECTION, None)
            if isinstance(fused, nn.Module) and type(module).__name__.endswith("Attention"):
                yield fused, "forward", lambda _m, _a, out: self.fused_projection(out)
            for names in ATTENTION_PROJECTIONS:
                if all(isinstance(getattr(module, n, None), nn.Module) for n in names):
                    for name, role in zip(names, ("query", "key", "value"), strict=True):
                        yield (
                            getattr(module, name),
                            "forward",
                            lambda _m, _a, out, role=role: self.projections(out, role),
                        )
            for gate, _up, down in GATED_MLPS:
                if all(isinstance(getattr(module, n, None), nn.Module) for n in (gate, _up, down)):
                    if self.variant == "cp_lrp":
                        yield getattr(module, gate), "forward", lambda _m, _a, out: out.detach()
                    else:
                        yield getattr(module, down), "pre", halve_input_gradient

    @staticmethod
    def norm_hook():
        checked: set[int] = set()

        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            linear = linearised_norm(module, args[0])
            if id(module) not in checked:
                # The rule rewrites the norm's gradient from its formula: refuse a norm it does not reproduce.
                bias = getattr(module, "bias", None)
                expected = linear + bias if bias is not None else linear
                # A wrong formula (e.g. a gain of 1 + weight) is off by O(1); rounding by a few ulps.
                tolerance = max(1e-3, 8 * torch.finfo(output.dtype).eps)
                scale = float(output.detach().abs().max()) + 1e-6
                if not torch.allclose(
                    expected.detach(), output.detach(), rtol=tolerance, atol=tolerance * scale
                ):
                    raise UnsupportedNorm(
                        f"{type(module).__name__} computes no LayerNorm or RMSNorm the LRP rules know "
                        "(x / rms(x) * weight or (x - mean) / std * weight + bias); use a method without "
                        "rules for this model (input_x_gradient, integrated_gradients)"
                    )
                checked.add(id(module))
            return with_gradient_of(output, linear)

        return hook


def identity_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Identity rule on an elementwise activation: relevance passes unchanged (the gradient is f(x) / x)."""
    x = args[0]
    ratio = torch.where(x != 0, output / x, torch.zeros_like(x)).detach()
    return output.detach() + (x - x.detach()) * ratio


def halve_input_gradient(module: nn.Module, args: tuple) -> tuple:
    """Uniform rule on the product ``act(gate) * up`` feeding ``module``: each factor gets half."""
    return (scale_gradient(args[0], 0.5), *args[1:])


@contextlib.contextmanager
def lrp_rules(model: nn.Module, variant: str, method: str | None = None) -> Iterator[None]:
    """Inside the block, ``model``'s gradients are the modified gradients of ``variant`` (``"attnlrp"`` or
    ``"cp_lrp"``); forward values are unchanged. Every hook is removed on exit, also after an exception.

    Example:
        >>> def hooks(model):  # the doctest model is shared: compare with what it had before
        ...     return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        >>> before = hooks(hf_model)
        >>> inputs = hf_tokenizer("The cat sat", return_tensors="pt")
        >>> embeds = hf_model.get_input_embeddings()(inputs.input_ids).detach().requires_grad_()
        >>> with lrp_rules(hf_model, "attnlrp"):
        ...     logit = hf_model(inputs_embeds=embeds).logits[0, -1, 7]
        ...     relevance = (embeds * torch.autograd.grad(logit, embeds)[0]).sum(-1)
        >>> relevance.shape                                   # one relevance per token
        torch.Size([1, 4])
        >>> hooks(hf_model) == before                         # the rules' hooks are gone
        True
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown LRP variant {variant!r}; valid: {', '.join(VARIANTS)}")
    check_architecture(model, method or variant)
    handles = []
    try:
        for module, kind, hook in RuleHooks(variant).hooks(model):
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class AttnLRP(PointwiseGradientMethod):
    """AttnLRP relevance (Achtibat et al. 2024): input x the gradient modified by the LRP rules."""

    name = "attnlrp"
    variant = "attnlrp"
    Options = GradientOptions
    unitless = False  # relevance is in the units of the attributed score, which it decomposes

    def point_attribution(self, gradient: Tensor, points: Tensor, options: GradientOptions) -> Tensor:
        return gradient * points

    def captum_method(self, forward, options: GradientOptions):
        # Captum's input x gradient on each step's prefix; the rules' hooks modify the gradient it takes.
        return CaptumInputXGradient(forward), {}

    def _with_rules(self, run, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        with lrp_rules(self.model.model, self.variant, self.name):
            output = run(inputs, options)
        output.info["lrp_rules"] = self.variant
        return output

    def attribute_fused(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        return self._with_rules(super().attribute_fused, inputs, options)

    def attribute_stepwise(self, inputs: MethodInputs, options: GradientOptions) -> MethodOutput:
        return self._with_rules(super().attribute_stepwise, inputs, options)


class CPLRP(AttnLRP):
    """CP-LRP relevance (Ali et al. 2022): LRP with the attention weights held constant (values only)."""

    name = "cp_lrp"
    variant = "cp_lrp"


@dataclass
class LayerLRPOptions(TargetLayer, GradientOptions):
    """Options of the layer variants: the layer, the hidden reduction."""

    multiply_by_inputs: ClassVar[bool] = True  # relevance is activation x modified gradient, always


class LayerAttnLRP(LayerGradientXActivation):
    """AttnLRP relevance at a layer's activations (default layer: the input embeddings)."""

    name = "layer_attnlrp"
    variant = "attnlrp"
    Options = LayerLRPOptions
    unitless = False

    def attribute_fused(self, inputs: MethodInputs, options: LayerLRPOptions) -> MethodOutput:
        with lrp_rules(self.model.model, self.variant, self.name):
            output = super().attribute_fused(inputs, options)
        output.info["lrp_rules"] = self.variant
        return output

    def attribute_stepwise(self, inputs: MethodInputs, options: LayerLRPOptions) -> MethodOutput:
        with lrp_rules(self.model.model, self.variant, self.name):
            output = super().attribute_stepwise(inputs, options)
        output.info["lrp_rules"] = self.variant
        return output


class LayerCPLRP(LayerAttnLRP):
    """CP-LRP relevance at a layer's activations (default layer: the input embeddings)."""

    name = "layer_cp_lrp"
    variant = "cp_lrp"
