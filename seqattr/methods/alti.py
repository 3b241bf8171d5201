"""ALTI-Logit (Ferrando et al. 2023), with ALTI+'s source/target tracking for encoder-decoders (Ferrando et
al. 2022): each step's logit decomposed into per-token contributions, in one pass per sequence.

Step ``t`` explains the logit of its target token ``w`` at query ``n = p_t - 1``. Notation: ``x^l_i`` the
residual stream of position ``i`` entering layer ``l``; the final norm is linearised with its std
(LayerNorm) or RMS (RMSNorm) frozen at position ``n``, so a vector ``v`` added to ``n``'s residual stream
moves the logit by ``g_n · v`` with ``g_n`` the norm's linear part transposed applied to ``w``'s unembedding
row. Per layer:

- **attention** (per head, through the output projection): ``T_{i<-j} = sum_h A^h_ij v^h_j W_O^h``, with the
  value ``v^h_j`` as the model computes it (its input norm's bias and the value bias included: the reference's
  "affine" transformed vectors). The layer's logit contribution of position ``j`` is ``g_n · T_{n<-j}``; it is
  carried back to the input tokens by the ALTI rollout ``M`` of the layer's input (ALTI-Logit's
  ``Δlogit^l · M^{l-1}``; ``M`` is the identity before layer 0);
- **ALTI** contributions of the layer: ``z_ij = T_{i<-j}`` plus ``x_i`` for ``j = i`` (the residual),
  ``y_i = sum_j z_ij + b_O``; ``c_ij = max(0, |y_i|_1 - |y_i - z_ij|_1)``, rows normalised to 1; the rollout
  is ``M <- C M``;
- **MLP**: it does not mix tokens: its direct logit ``g_n · mlp^l_n`` goes to the tokens in the proportions
  of its input (the rollout row ``M_n`` after the layer's attention); the embedding ``x^0_n`` (position
  embeddings included) goes to token ``n``. These two *residual terms* are what makes the contributions sum
  to the logit; the paper's ALTI-Logit tracks the attention terms only (``residual_terms=False`` gives
  exactly that).

Encoder-decoders (ALTI+): the encoder's ALTI rollout ``M_enc`` (source x source) says what each encoder output
is made of; decoder states are mixtures over [source tokens, target tokens]. A cross-attention contributes
``g_n · T_{n<-j}`` for source ``j``, carried by ``M_enc``; its ALTI contributions weigh the residual ``h_i``
(one input, keeping its mixture) against the source vectors ``T_{i<-j}``.

Sum: with the residual terms, each step's contributions (source and target together) sum to its logit less
the bias terms no token owns: the unembedding bias, each attention's output-projection bias ``g_n · b_O``
(GPT-2's ``c_proj``), and the final norm's bias projected on the unembedding row (GPT-2's ``ln_f``). Llama,
Qwen2 and T5 have none of these: their contributions sum to the logit (tests/test_alti.py).

Follows the authors' implementation (github.com/mt-upc/logit-explanations, ``src/contributions.py``:
``aff_x_j`` and ``get_logit_contributions``; ``extract_explanations.py``: ``track2input_tokens``), written
anew on the model's own modules through hooks. The attributed function is not used: the method explains the
logit of each step's target token (the output's info says so).

Cost: one forward pass over the padded batch (eager attention, for the weights), then per layer the
transformed vectors of every (query, key) pair, ``O(T^2 d)`` operations, held a chunk of query rows at a time
(at most `_CHUNK_ELEMENTS` values), so memory stays bounded on long sequences. The decoder is causal: row
``n`` depends on rows ``<= n`` only, so that one pass gives every step; the stepwise reference runs one pass
per step on its prefix.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, output_dtype
from seqattr.methods.internals import each_example, eager_attention
from seqattr.methods.options import MethodOptions
from seqattr.typing import Float, Tensor


@dataclass(frozen=True)
class AttentionPaths:
    """Module paths, inside a layer, of an attention's value projection and output projection."""

    values: str
    output: str
    fused_qkv: bool = False
    """The values are the last third of one fused query/key/value projection (GPT-2's ``c_attn``)."""


@dataclass(frozen=True)
class StackPaths:
    """A stack of pre-norm transformer layers: the layers, their attentions and MLP."""

    layers: str
    self_attention: AttentionPaths
    mlp: str
    cross_attention: AttentionPaths | None = None


@dataclass(frozen=True)
class AltiLayout:
    decoder: StackPaths
    final_norm: str
    encoder: StackPaths | None = None


_LLAMA_LIKE = AltiLayout(
    StackPaths("model.layers", AttentionPaths("self_attn.v_proj", "self_attn.o_proj"), "mlp"), "model.norm"
)
_T5_SELF = AttentionPaths("layer.0.SelfAttention.v", "layer.0.SelfAttention.o")
LAYOUTS: dict[str, AltiLayout] = {
    "gpt2": AltiLayout(
        StackPaths("transformer.h", AttentionPaths("attn.c_attn", "attn.c_proj", fused_qkv=True), "mlp"),
        "transformer.ln_f",
    ),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "t5": AltiLayout(
        StackPaths(
            "decoder.block",
            _T5_SELF,
            "layer.2.DenseReluDense",
            AttentionPaths("layer.1.EncDecAttention.v", "layer.1.EncDecAttention.o"),
        ),
        "decoder.final_layer_norm",
        StackPaths("encoder.block", _T5_SELF, "layer.1.DenseReluDense"),
    ),
}
"""``config.model_type`` -> where ALTI-Logit finds each quantity. Every listed architecture is pre-norm
(``x + attn(norm(x))``, ``+ mlp(norm(.))``); post-norm ones (BART, Marian) need the later norms' rescaling of
the residual stream in ``g``, which this module does not implement."""

SUPPORTED_ARCHITECTURES = {"gpt2": "GPT-2", "llama": "Llama (SmolLM2)", "qwen2": "Qwen2", "t5": "T5"}


def layout_of(model: nn.Module) -> AltiLayout:
    """The layout of ``model``, or a ValueError naming the supported architectures.

    Example:
        >>> layout_of(hf_model).decoder.layers                  # the tiny GPT-2
        'transformer.h'
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        listed = ", ".join(f"{name} ({key})" for key, name in SUPPORTED_ARCHITECTURES.items())
        raise ValueError(
            f"alti_logit does not support {type(model).__name__} (model_type {model_type!r}): its "
            f"decomposition is written for the pre-norm layers of {listed}. Use one of these architectures, "
            "or a method that works on any model (attention_rollout, value_zeroing, input_x_gradient)"
        )
    return LAYOUTS[model_type]


@dataclass
class AltiLogitOptions(MethodOptions):
    per_layer: bool = False
    """Keep a layers dimension, ``[positions, steps, layers]``: layer ``l``'s attention terms and its MLP's
    residual term (layer 0 also holds the embedding's); the layers sum to the default output."""
    residual_terms: bool = True
    """Include the residual stream's direct logits (embeddings, MLP outputs) so that contributions sum to the
    logit less the bias terms; False keeps the paper's ALTI-Logit (attention terms only)."""


class _Recorder:
    """Forward hooks recording, per stack: each layer's input, its attentions' values and its MLP's output;
    and the final norm's input."""

    def __init__(self, model: nn.Module, layout: AltiLayout) -> None:
        self.model, self.layout = model, layout
        self.records: dict[str, list] = defaultdict(list)

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Recorder]:
        handles = []
        stacks = [("decoder", self.layout.decoder)]
        if self.layout.encoder is not None:
            stacks.append(("encoder", self.layout.encoder))
        try:
            for name, stack in stacks:
                for layer in self.model.get_submodule(stack.layers):
                    handles.append(
                        layer.register_forward_pre_hook(self._input(f"{name}.input"), with_kwargs=True)
                    )
                    handles.append(layer.get_submodule(stack.mlp).register_forward_hook(self._output(name)))
                    attentions = [("self", stack.self_attention), ("cross", stack.cross_attention)]
                    for kind, paths in attentions:
                        if paths is not None:
                            values = layer.get_submodule(paths.values)
                            handles.append(
                                values.register_forward_hook(self._values(f"{name}.{kind}", paths.fused_qkv))
                            )
            final = self.model.get_submodule(self.layout.final_norm)
            handles.append(final.register_forward_pre_hook(self._input("final"), with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _input(self, key: str):
        def hook(module, args, kwargs):
            self.records[key].append((args[0] if args else kwargs["hidden_states"]).detach())

        return hook

    def _output(self, stack: str):
        def hook(module, args, output):
            self.records[f"{stack}.mlp"].append(output.detach())

        return hook

    def _values(self, key: str, fused: bool):
        def hook(module, args, output):
            # A fused projection holds queries, keys and values, a third each, values last.
            self.records[f"{key}.values"].append(
                output[..., 2 * output.shape[-1] // 3 :] if fused else output
            )

        return hook


def output_matrix(projection: nn.Module) -> Tensor:
    """An attention output projection as ``[heads * head_dim, hidden]`` (``y = x @ matrix + bias``)."""
    if isinstance(projection, nn.Linear):
        return projection.weight.T
    return projection.weight  # transformers' Conv1D (GPT-2) stores [in, out]


def output_bias(projection: nn.Module, hidden: int) -> Tensor:
    bias = getattr(projection, "bias", None)
    return torch.zeros(hidden, dtype=torch.float64) if bias is None else bias.detach().double().cpu()


_CHUNK_ELEMENTS = 2**24
"""Transformed vectors held at once (query rows x keys x hidden; 128 MiB in float64): ALTI's contributions
are computed in chunks of query rows, so memory stays bounded on long sequences."""


@dataclass
class AttentionTerms:
    """One attention layer as ALTI sees it: ``T_{i<-j} = sum_h A^h_ij v^h_j W_O^h`` (float64, on the CPU),
    what key ``j`` adds to query ``i``'s attention output, the output projection's ``bias`` apart.
    Grouped-query values serve ``heads / kv_heads`` heads each.

    Example:
        >>> projection = nn.Linear(4, 3, bias=False)
        >>> weights, values = torch.softmax(torch.randn(1, 2, 5, 5), -1), torch.randn(1, 5, 4)
        >>> terms = AttentionTerms.of(weights, values, projection)
        >>> heads = (weights @ values.view(1, 5, 2, 2).transpose(1, 2)).transpose(1, 2).reshape(1, 5, 4)
        >>> torch.allclose(terms.vectors(slice(None)).sum(2), projection(heads).double(), atol=1e-6)
        True
    """

    weights: Float[Tensor, "n heads queries keys"]
    per_head: Float[Tensor, "n heads keys hidden"]
    """Each head's value vectors through its slice of the output projection."""
    bias: Float[Tensor, " hidden"]

    @classmethod
    def of(
        cls,
        weights: Float[Tensor, "n heads queries keys"],
        values: Float[Tensor, "n keys kv_width"],
        projection,
    ) -> AttentionTerms:
        n, heads, _, keys = weights.shape
        matrix = output_matrix(projection).detach().double().cpu()
        head_dim = matrix.shape[0] // heads
        values = values.double().cpu().reshape(n, keys, -1, head_dim)
        values = values.repeat_interleave(heads // values.shape[2], dim=2)  # kv head of head h: h // group
        per_head = torch.einsum("nkhe,hed->nhkd", values, matrix.reshape(heads, head_dim, -1))
        return cls(weights.double().cpu(), per_head, output_bias(projection, matrix.shape[1]))

    def vectors(self, rows: slice) -> Float[Tensor, "n rows keys hidden"]:
        # A batched matmul over (n, key): [rows, heads] @ [heads, hidden]; einsum's own path for this
        # contraction was 7x slower on the CPU (measured).
        weights = self.weights[:, :, rows].permute(0, 3, 2, 1)
        return (weights @ self.per_head.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)

    def output(self) -> Float[Tensor, "n queries hidden"]:
        """The attention's output, bias included (``sum_j T_{i<-j} + b_O``)."""
        return torch.einsum("nhqk,nhkd->nqd", self.weights, self.per_head) + self.bias

    def logits(self, queries: Tensor, direction: Float[Tensor, "n steps hidden"]) -> Tensor:
        """``g_t · T_{q_t<-j}``: each step's logit contribution of each key, ``[n, steps, keys]``."""
        projected = torch.einsum("nhkd,ntd->nhtk", self.per_head, direction)
        return (self.weights[:, :, queries] * projected).sum(1)

    def contributions(self, residual: Float[Tensor, "n queries hidden"], self_attention: bool) -> Tensor:
        """ALTI contributions of the sublayer ``residual + attention``: ``[n, queries, keys]`` for a
        self-attention (the residual joins its own key), ``[n, queries, 1 + keys]`` for a cross-attention
        (the residual first, as one more input)."""
        n, _, queries, keys = self.weights.shape
        resultant = residual + self.output()
        step = max(1, _CHUNK_ELEMENTS // max(1, n * keys * residual.shape[-1]))
        chunks = []
        for start in range(0, queries, step):
            rows = slice(start, min(start + step, queries))
            pieces = self.vectors(rows)
            if self_attention:
                own = torch.arange(rows.start, rows.stop)
                pieces[:, own - rows.start, own] += residual[:, rows]
            else:
                pieces = torch.cat([residual[:, rows].unsqueeze(2), pieces], 2)
            chunks.append(alti_contributions(resultant[:, rows], pieces))
        return torch.cat(chunks, 1)


def alti_contributions(
    resultant: Float[Tensor, "*rows hidden"], pieces: Float[Tensor, "*rows inputs hidden"]
) -> Float[Tensor, "*rows inputs"]:
    """ALTI's contributions (Ferrando et al. 2022) of the ``pieces`` that sum (with biases) to ``resultant``:
    ``max(0, |y|_1 - |y - z_j|_1)``, normalised to sum to 1 (a row where every one is 0 goes to the first
    input, the residual: it never happened on the tested models, and keeps the rollout's rows summing to 1).

    Example:
        >>> y = torch.tensor([[2.0, 0.0]]); pieces = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
        >>> alti_contributions(y, pieces)
        tensor([[1., 0.]])
    """
    distance = (resultant.unsqueeze(-2) - pieces).abs().sum(-1)
    raw = (resultant.abs().sum(-1, keepdim=True) - distance).clamp_min(0)
    total = raw.sum(-1, keepdim=True)
    fallback = torch.zeros_like(raw)
    fallback[..., 0] = 1
    return torch.where(total > 0, raw / total.clamp_min(torch.finfo(raw.dtype).tiny), fallback)


def logit_directions(
    norm: nn.Module, last: Float[Tensor, "n steps hidden"], rows: Float[Tensor, "n steps hidden"]
) -> tuple[Tensor, Tensor]:
    """``g`` (the final norm linearised at ``last``, transposed, applied to the unembedding ``rows``) and the
    norm's bias projected on the rows (zeros without a bias), float64.

    Example:
        >>> norm = nn.LayerNorm(4).double()
        >>> x, u = torch.randn(1, 1, 4, dtype=torch.float64), torch.randn(1, 1, 4, dtype=torch.float64)
        >>> g, bias = logit_directions(norm, x, u)
        >>> torch.allclose((g * x).sum(-1) + bias, (norm(x) * u).sum(-1))
        True
    """
    weight = norm.weight.detach().double().cpu()
    scaled = weight * rows
    if isinstance(norm, nn.LayerNorm):
        std = (last.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        direction = (scaled - scaled.mean(-1, keepdim=True)) / std  # the centring is symmetric
        bias = norm.bias
    else:  # RMSNorm (Llama, Qwen2), T5's norm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        direction = scaled * torch.rsqrt(last.pow(2).mean(-1, keepdim=True) + eps)
        bias = getattr(norm, "bias", None)
    projected = torch.zeros(rows.shape[:-1], dtype=torch.float64)
    if bias is not None:
        projected = (bias.detach().double().cpu() * rows).sum(-1)
    return direction, projected


def unembedding_rows(model: nn.Module, token_ids: Tensor) -> Tensor:
    """The explained tokens' unembedding rows, with T5's rescaling of a tied head (``d_model ** -0.5``)."""
    rows = model.get_output_embeddings().weight.detach()[token_ids.cpu()].double().cpu()
    config = model.config
    if config.model_type == "t5" and config.tie_word_embeddings:
        rows = rows * config.d_model**-0.5
    return rows


def encoder_rollout(model: nn.Module, stack: StackPaths, records, attentions) -> Tensor:
    """The encoder's ALTI rollout ``[n, source, source]``: what each encoder output is made of."""
    layers = model.get_submodule(stack.layers)
    inputs = records["encoder.input"]
    rollout = None
    for index, layer in enumerate(layers):
        x = inputs[index].double().cpu()
        projection = layer.get_submodule(stack.self_attention.output)
        terms = AttentionTerms.of(attentions[index], records["encoder.self.values"][index], projection)
        mixing = terms.contributions(x, self_attention=True)
        rollout = mixing if rollout is None else mixing @ rollout
        if index + 1 < len(layers):  # the last layer's output goes to the encoder's final norm, unrecorded
            rebuilt = x + terms.output() + records["encoder.mlp"][index].double().cpu()
            check_layer(model, "encoder", index, rebuilt, inputs[index + 1])
    return rollout


def check_layer(model: nn.Module, stack: str, index: int, rebuilt: Tensor, actual: Tensor) -> None:
    """Refuse a layer whose output is not ``x + attention + mlp`` as rebuilt from the recorded parts (a
    variant of a listed architecture computing something else would get contributions that mean nothing)."""
    tolerance = max(1e-3, 64 * torch.finfo(actual.dtype).eps)
    actual = actual.double().cpu()
    if not torch.allclose(rebuilt, actual, rtol=tolerance, atol=tolerance * float(actual.abs().max())):
        raise ValueError(
            f"alti_logit: {stack} layer {index} of {type(model).__name__} does not compute x + attention "
            "(values mixed by the attention weights through the output projection) + mlp as the "
            "decomposition assumes; this model's layers are not the supported pre-norm layout. Use a method "
            "that works on any model (attention_rollout, input_x_gradient)"
        )


@dataclass
class Decomposition:
    """Per-layer logit contributions ``[n, steps, source + target, layers]`` and the bias terms
    ``[n, steps]`` they leave out."""

    contributions: Tensor
    bias: Tensor


def alti_logit(
    model: nn.Module,
    records: dict,
    attentions: dict[str, tuple],
    queries: Tensor,
    token_ids: Tensor,
    residual_terms: bool = True,
) -> Decomposition:
    """ALTI-Logit of the logits of ``token_ids`` (``[n, steps]``) at decoder positions ``queries``
    (``[steps]``) from one recorded forward pass (see the module docstring)."""
    layout = layout_of(model)
    stack = layout.decoder
    inputs = records["decoder.input"]
    n, target_len, _ = inputs[0].shape
    source_len = 0
    source_mixture = None
    if layout.encoder is not None:
        encoder = encoder_rollout(model, layout.encoder, records, attentions["encoder"])
        source_len = encoder.shape[1]
        source_mixture = nn.functional.pad(encoder, (0, target_len))  # over [source, target]
    steps = len(queries)
    mixture = torch.zeros(n, target_len, source_len + target_len, dtype=torch.float64)
    mixture[:, :, source_len:] = torch.eye(target_len, dtype=torch.float64)
    last = records["final"][0].double().cpu()[:, queries]
    direction, bias = logit_directions(
        model.get_submodule(layout.final_norm), last, unembedding_rows(model, token_ids)
    )
    head = getattr(model.get_output_embeddings(), "bias", None)
    if head is not None:
        bias = bias + head.detach().double().cpu()[token_ids.cpu()]
    layers = model.get_submodule(stack.layers)
    contributions = torch.zeros(n, steps, source_len + target_len, len(layers), dtype=torch.float64)
    columns = torch.arange(steps)
    if residual_terms:
        embedding = (inputs[0].double().cpu()[:, queries] * direction).sum(-1)
        contributions[:, columns, source_len + queries.cpu(), 0] = embedding
    for index, layer in enumerate(layers):
        x = inputs[index].double().cpu()
        projection = layer.get_submodule(stack.self_attention.output)
        terms = AttentionTerms.of(
            attentions["decoder"][index], records["decoder.self.values"][index], projection
        )
        contributions[..., index] += terms.logits(queries, direction) @ mixture
        bias = bias + (direction * terms.bias).sum(-1)
        mixture = terms.contributions(x, self_attention=True) @ mixture
        residual = x + terms.output()
        if stack.cross_attention is not None:
            projection = layer.get_submodule(stack.cross_attention.output)
            terms = AttentionTerms.of(
                attentions["cross"][index], records["decoder.cross.values"][index], projection
            )
            contributions[..., index] += terms.logits(queries, direction) @ source_mixture
            bias = bias + (direction * terms.bias).sum(-1)
            shares = terms.contributions(residual, self_attention=False)
            mixture = shares[..., :1] * mixture + shares[..., 1:] @ source_mixture
            residual = residual + terms.output()
        mlp = records["decoder.mlp"][index].double().cpu()
        following = inputs[index + 1] if index + 1 < len(layers) else records["final"][0]
        check_layer(model, "decoder", index, residual + mlp, following)
        if residual_terms:
            direct = (mlp[:, queries] * direction).sum(-1, keepdim=True)
            contributions[..., index] += direct * mixture[:, queries]
    return Decomposition(contributions, bias)


class AltiLogit(AttributionMethod):
    """ALTI-Logit (Ferrando et al. 2023): each step's logit decomposed into per-token contributions."""

    name = "alti_logit"
    Options = AltiLogitOptions

    def _decompose(
        self, inputs: MethodInputs, target_embeds: Tensor, queries: Tensor, options: AltiLogitOptions
    ) -> tuple[Decomposition, str]:
        """One recorded pass over ``target_embeds`` (one example), decomposed at ``queries``."""
        batch, hf_model = inputs.batch, self.model.model
        layout = layout_of(hf_model)
        recorder = _Recorder(hf_model, layout)
        rows = torch.arange(batch.size, device=batch.target_ids.device)
        with torch.no_grad(), eager_attention(hf_model) as note, recorder.attached():
            out = self.model.forward(batch, rows, inputs.source_embeds, target_embeds, output_attentions=True)
        if layout.encoder is not None:
            attentions = {
                "encoder": out.encoder_attentions,
                "decoder": out.decoder_attentions,
                "cross": out.cross_attentions,
            }
        else:
            attentions = {"decoder": out.attentions}
        token_ids = batch.target_ids[:, queries + 1]
        decomposition = alti_logit(
            hf_model, recorder.records, attentions, queries.cpu(), token_ids, options.residual_terms
        )
        return decomposition, note

    def _output(
        self, inputs: MethodInputs, contributions: Tensor, options: AltiLogitOptions, note: str
    ) -> MethodOutput:
        """``[n, steps, source + target, layers]`` into a `MethodOutput`."""
        source_len = 0 if inputs.source_embeds is None else inputs.source_embeds.shape[1]
        layers = contributions.shape[-1]
        if not options.per_layer:
            contributions = contributions.sum(-1)
        contributions = contributions.transpose(1, 2).to(output_dtype(self.model.dtype))
        info = {
            "attention_implementation": note,
            "explained": "logit of each step's target token",
            "residual_terms": options.residual_terms,
            "extra_dims": ["layer"] if options.per_layer else [],
        }
        if options.per_layer:
            info["layers"] = list(range(layers))
        return MethodOutput(
            contributions[:, :source_len] if inputs.attribute_source else None,
            contributions[:, source_len:] if inputs.attribute_target else None,
            info=info,
        )

    def attribute_fused(self, inputs: MethodInputs, options: AltiLogitOptions) -> MethodOutput:
        return self._fused(inputs, options)

    def attribute_stepwise(self, inputs: MethodInputs, options: AltiLogitOptions) -> MethodOutput:
        return each_example(self.model, inputs, lambda single: self._stepwise(single, options))

    def _fused(self, inputs: MethodInputs, options: AltiLogitOptions) -> MethodOutput:
        queries = inputs.batch.step_positions - 1
        decomposition, note = self._decompose(inputs, inputs.target_embeds, queries, options)
        return self._output(inputs, decomposition.contributions, options, note)

    def _stepwise(self, inputs: MethodInputs, options: AltiLogitOptions) -> MethodOutput:
        batch = inputs.batch
        target_len = batch.target_ids.shape[1]
        columns, note = [], ""
        for column in range(batch.num_steps):
            prefix = int(batch.step_positions[column])
            query = batch.step_positions[column : column + 1] - 1
            decomposition, note = self._decompose(inputs, inputs.target_embeds[:, :prefix], query, options)
            # Target positions from the prefix on do not exist for this step: zeros (NaN in the output).
            columns.append(nn.functional.pad(decomposition.contributions, (0, 0, 0, target_len - prefix)))
        return self._output(inputs, torch.cat(columns, 1), options, note)
