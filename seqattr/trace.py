"""The per-step generation trace: what the model chose at each explained step and what else it considered.

For every step: the chosen (generated or forced) token, its probability and rank, the ``top_k`` most probable
tokens with their probabilities, and the entropy of the next-token distribution; when the prompt has a context
(``attribute(..., context_parts=[...])``), also the step's context reliance: the KL divergence between its
next-token distribution with and without the context, the same reply forced in both. It is computed from the
no-grad forward pass that also gives the step scores, so it costs nothing extra, and it shows where a
generation went astray (a low-probability or non-top-ranked token, a flat distribution), which is the step to
ask a contrastive question about.

Example:
    >>> seq = model.attribute("The capital of France is").sequence_attributions[0]
    >>> seq.trace.tokens == seq.steps, seq.trace.probabilities.shape, len(seq.trace.top_tokens[3])
    (True, torch.Size([20]), 5)
    >>> seq.trace.off_greedy_steps()        # steps whose token was not the model's first choice
    []
    >>> forced = model.attribute("The capital of France is", "The capital of France is Paris.")[0]
    >>> forced.steps, forced.trace.ranks.shape          # rank 0: the model's first choice
    (['Ġ', 'Paris', '.'], torch.Size([3]))
    >>> forced.trace.off_greedy_steps() == [i for i, r in enumerate(forced.trace.ranks) if r > 0]
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from seqattr.step_functions import MULTI_LABEL_THRESHOLD, bernoulli_entropy, log_probabilities, promote
from seqattr.typing import Float, Int, Tensor

DEFAULT_TOP_K = 5
TRACE_BLOCK_BYTES = 2**20
"""On a CPU the trace's statistics run on blocks of steps whose logits take about this many bytes."""
CONTEXT_RELIANCE = "context_reliance"
"""The name of the context reliance column: a step score of the output and a field of its trace."""


@dataclass(eq=False)
class GenerationTrace:
    """One sequence's trace; tensors have one row per explained step (``T`` steps, ``k`` alternatives)."""

    token_ids: Int[Tensor, " steps"]
    """The token each step produced (or was forced to produce)."""
    tokens: list[str]
    probabilities: Float[Tensor, " steps"]
    """Probability of the chosen token."""
    ranks: Int[Tensor, " steps"]
    """Rank of the chosen token: how many tokens had a strictly higher logit (0 = greedy choice)."""
    entropy: Float[Tensor, " steps"]
    """Entropy of the next-token distribution, in nats."""
    top_ids: Int[Tensor, "steps k"]
    top_tokens: list[list[str]]
    top_probabilities: Float[Tensor, "steps k"]
    """Probabilities of the ``k`` most probable tokens, in decreasing order."""
    context_reliance: Float[Tensor, " steps"] | None = None
    """KL(with context || without context) of the next-token distributions, in nats (the metric
    `seqattr.context_attribution` scores context sensitivity with); None when no context was named."""

    def __len__(self) -> int:
        return len(self.tokens)

    def off_greedy_steps(self) -> list[int]:
        """Steps whose chosen token was not the most probable one (rank > 0).

        Example:
            >>> greedy = model.attribute("The capital of France is", generation_args={"max_new_tokens": 3})[0]
            >>> greedy.trace.off_greedy_steps()       # greedy generation: every token was the first choice
            []
        """
        return [int(step) for step in torch.nonzero(self.ranks > 0).flatten()]

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> GenerationTrace:
        """A copy with ``fn`` applied to every tensor."""
        return dataclasses.replace(
            self,
            **{
                f.name: fn(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def allclose(self, other: GenerationTrace, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        """Same tokens and ranks, close probabilities and entropies."""
        if (self.tokens, self.top_tokens) != (other.tokens, other.top_tokens):
            return False
        exact = all(
            torch.equal(getattr(self, n), getattr(other, n)) for n in ("token_ids", "ranks", "top_ids")
        )
        close = all(
            torch.allclose(getattr(self, n), getattr(other, n), rtol=rtol, atol=atol)
            for n in ("probabilities", "entropy", "top_probabilities")
        )
        mine, theirs = self.context_reliance, other.context_reliance
        if (mine is None) != (theirs is None):
            return False
        if mine is not None and not torch.allclose(mine, theirs, rtol=rtol, atol=atol):
            return False
        return exact and close


@dataclass
class BatchTrace:
    """The trace of a padded batch (``[batch, steps, ...]``), before it is sliced per example."""

    token_ids: Int[Tensor, "batch steps"]
    probabilities: Float[Tensor, "batch steps"]
    ranks: Int[Tensor, "batch steps"]
    entropy: Float[Tensor, "batch steps"]
    top_ids: Int[Tensor, "batch steps k"]
    top_probabilities: Float[Tensor, "batch steps k"]
    context_reliance: Float[Tensor, "batch steps"] | None = None

    @classmethod
    def from_logits(
        cls,
        logits: Float[Tensor, "batch steps vocab"],
        target_ids: Int[Tensor, "batch steps"],
        top_k: int,
        multi_label: bool = False,
    ) -> BatchTrace:
        """The trace of every step from its next-token logits; for a ``multi_label`` classifier each label's
        own probability ``sigmoid(logit)`` (`seqattr.step_functions.log_probabilities`), its entropy the sum
        of the labels' yes/no entropies, and the alternatives every label above 0.5 however many (at least
        ``top_k``), so that the table lists the whole prediction.

        Example:
            >>> trace = BatchTrace.from_logits(torch.randn(1, 3, 10), torch.tensor([[1, 2, 3]]), top_k=2)
            >>> trace.top_ids.shape
            torch.Size([1, 3, 2])
        """
        logits = promote(logits.detach())  # computed in float64 for float64 logits, stored as float32
        vocab = logits.shape[-1]
        if multi_label and logits.numel():  # every label above the threshold: sigmoid(x) > t <=> x > logit(t)
            above = logits > math.log(MULTI_LABEL_THRESHOLD / (1 - MULTI_LABEL_THRESHOLD))
            top_k = max(top_k, int(above.sum(-1).max()))
        top_k = min(top_k, vocab)
        rows, ids = logits.reshape(-1, vocab), target_ids.reshape(-1, 1)
        # Each statistic is a pass over the vocabulary; on a CPU they run on blocks of a few steps, which stay
        # in the cache from one pass to the next (right after a SmolLM2 forward pass, 40 steps of its 49k
        # vocabulary: 13.8 -> 11.9 ms, most of an attention run's work besides that pass).
        block = (
            max(1, TRACE_BLOCK_BYTES // (vocab * logits.element_size()))
            if logits.is_cpu
            else max(len(rows), 1)
        )
        starts = range(0, max(len(rows), 1), block)  # one (empty) block for a batch without steps
        parts = [
            _step_statistics(rows[i : i + block], ids[i : i + block], top_k, multi_label) for i in starts
        ]
        probabilities, ranks, entropy, top_ids, top_probabilities = (
            torch.cat(column).reshape(*target_ids.shape, *column[0].shape[1:])
            for column in zip(*parts, strict=True)
        )
        return cls(
            token_ids=target_ids.detach().cpu(),
            probabilities=probabilities.float().cpu(),
            ranks=ranks.long().cpu(),
            entropy=entropy.float().cpu(),
            top_ids=top_ids.long().cpu(),
            top_probabilities=top_probabilities.float().cpu(),
        )

    def example(
        self, index: int, num_steps: int, to_tokens: Callable[[Sequence[int]], list[str]]
    ) -> GenerationTrace:
        """Example ``index``'s trace, its first ``num_steps`` step columns (the rest are padding)."""
        top_ids = self.top_ids[index, :num_steps].clone()
        token_ids = self.token_ids[index, :num_steps].clone()
        return GenerationTrace(
            token_ids=token_ids,
            tokens=to_tokens(token_ids.tolist()),
            probabilities=self.probabilities[index, :num_steps].clone(),
            ranks=self.ranks[index, :num_steps].clone(),
            entropy=self.entropy[index, :num_steps].clone(),
            top_ids=top_ids,
            top_tokens=[to_tokens(row) for row in top_ids.tolist()],
            top_probabilities=self.top_probabilities[index, :num_steps].clone(),
            context_reliance=None
            if self.context_reliance is None
            else self.context_reliance[index, :num_steps].clone(),
        )


def check_top_k(top_k: int) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(
            f"trace_top_k must be a positive integer (the alternatives shown per step), got {top_k!r}"
        )
    return top_k


def _step_statistics(
    logits: Float[Tensor, "rows vocab"], target_ids: Int[Tensor, "rows 1"], top_k: int, multi_label: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(probability of the target, its rank, entropy, top ids, their probabilities)`` of each row."""
    logprobs = log_probabilities(logits, multi_label)
    probs = logprobs.exp()
    if multi_label:
        entropy = bernoulli_entropy(logits).sum(-1)
    else:
        entropy = -torch.linalg.vecdot(probs, logprobs)
    chosen_logit = logits.gather(-1, target_ids)
    ranks = (logits > chosen_logit).sum(-1, dtype=torch.int32)  # an int32 count: a faster sum than int64
    top_logprobs, top_ids = logprobs.topk(top_k, dim=-1)
    return logprobs.gather(-1, target_ids)[:, 0].exp(), ranks, entropy, top_ids, top_logprobs.exp()
