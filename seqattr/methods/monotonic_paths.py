"""Monotonic paths through the vocabulary embeddings, the paths of discretized integrated gradients.

Sanyal & Ren (2021) replace IG's straight line by a path that passes near real words. From the input word's
embedding ``x`` towards the baseline ``b``, each step picks an *anchor* among the ``n_neighbors`` nearest
vocabulary words of the previous anchor (initially the input word; words already on the path are skipped)
and *monotonizes* it: every dimension where the anchor lies between the current point ``c`` and ``b`` keeps
the anchor's value, every other dimension moves from ``c`` a ``1 / n_steps`` of the way to ``b``. So every
dimension moves monotonically from ``x`` to ``b``. The anchor chosen is the one closest to its monotonized
point (``strategy="greedy"``) or the one with most monotonic dimensions (``"maxcount"``, ties to the
nearest). After ``n_steps - 1`` anchors the path ends at ``b``.
"""

from __future__ import annotations

import torch

from seqattr.typing import Float, Int, Tensor

STRATEGIES = ("greedy", "maxcount")


def monotonic_dims(anchors: Tensor, baseline: Tensor, current: Tensor) -> Tensor:
    """True where ``anchors`` lie between ``baseline`` and ``current`` (inclusive), dimension by dimension."""
    return ((baseline <= anchors) & (anchors <= current)) | ((current <= anchors) & (anchors <= baseline))


def monotonic_paths(
    vocabulary: Float[Tensor, "vocab hidden"],
    token_ids: Int[Tensor, " n"],
    baselines: Float[Tensor, "n hidden"],
    n_steps: int,
    strategy: str = "greedy",
    n_neighbors: int = 50,
) -> Float[Tensor, "points n hidden"]:
    """Paths ``p_0 = baseline, ..., p_{n_steps} = vocabulary[token]``, one per token.

    Example:
        >>> embeddings = hf_model.get_input_embeddings().weight.detach()      # [vocab, hidden=64]
        >>> paths = monotonic_paths(embeddings, torch.tensor([5, 9]), torch.zeros(2, 64), n_steps=10)
        >>> paths.shape   # [11, 2, hidden]; paths[0] is the baseline, paths[-1] the words' embeddings
        torch.Size([11, 2, 64])
        >>> bool((paths[0] == 0).all()), torch.equal(paths[-1], embeddings[[5, 9]])
        (True, True)
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    rows = torch.arange(len(token_ids), device=vocabulary.device)
    current = vocabulary[token_ids]
    word = token_ids
    excluded = torch.zeros(len(token_ids), len(vocabulary), dtype=torch.bool, device=vocabulary.device)
    excluded[rows, word] = True
    points = [current]
    for step in range(n_steps - 1):
        distances = torch.cdist(vocabulary[word], vocabulary).masked_fill(excluded, float("inf"))
        available = len(vocabulary) - step - 1
        if available < 1:  # a vocabulary smaller than the path: the rest of the way is straight
            points.append(current - (current - baselines) / n_steps)
            current = points[-1]
            continue
        candidates = distances.topk(min(n_neighbors, available), largest=False).indices  # nearest first
        anchors = vocabulary[candidates]
        keep = monotonic_dims(anchors, baselines[:, None], current[:, None])
        fallback = (current - (current - baselines) / n_steps)[:, None].expand_as(anchors)
        monotonized = torch.where(keep, anchors, fallback)
        if strategy == "greedy":
            score = (anchors - monotonized).norm(dim=-1)
        else:
            score = -keep.sum(-1).to(anchors.dtype)
        best = score.argmin(-1)
        current = monotonized[rows, best]
        word = candidates[rows, best]
        excluded[rows, word] = True
        points.append(current)
    points.append(baselines.to(current.dtype))
    return torch.stack(points[::-1])
