"""How many points would other integration schemes need? The study behind ``n_steps="auto"``'s refinement per
interval (docs/benchmarks.md, *Adaptive integration*; built as ``refine_chunk_locally``), on the input of
``adaptive_integration.py``: SmolLM2-135M-Instruct, the UNK baseline, 20 forced steps.

Usage: ``python3 benchmarks/adaptive_refinement.py [CURVES.pt]`` (one torch thread; about 6 minutes for the
curves, which are cached in CURVES.pt, default /tmp/adaptive_curves.pt).

Integrated gradients of step ``t`` integrates ``g_t(alpha) = d/dalpha f_t(b + alpha (x - b))`` over [0, 1];
its convergence delta is the quadrature's error on that integral. One no-grad forward pass at a point of the
path gives ``f_t`` there for every step at once (the model is causal), so ``f_t`` on a fine grid (1,458
intervals) gives ``g_t`` by central differences, and with it the error any rule would leave, without running
the rule. The script prints:

- the nested midpoint rule's mean |delta| at 3, 9, 27 and 81 points (what ``n_steps="auto"`` runs; these
  match fixed ``integration_method="riemann_middle"`` runs to about 0.001);
- Richardson extrapolation between two nested levels, ``(9 M_3n - M_n) / 8``;
- the nested rule refined per step until ``|delta| <= tolerance`` (the points ``n_steps="auto"`` uses);
- local refinement: only the intervals whose last split changed the estimate the most (at least half the
  largest change) are split in three, until ``|delta| <= tolerance`` or intervals of 1/729; with 2 new points
  per split (the old midpoint's gradient kept) or 3 (evaluated again, since its weight changes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

PROMPT = "The old lighthouse keeper climbed the stairs every evening to light the lamp, and"
FULL = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp, and now, he's gone. "
    "He's gone to the sea. He's gone to the sea."
)
INTERVALS = 2 * 3**6
"""Grid of f: every midpoint of the nested rule up to 3**6 intervals is a grid point."""
FINEST = 1 / 3**6


def curves(path: Path) -> torch.Tensor:
    """``f_t(alpha)`` at ``alpha = i / INTERVALS`` for every step t, ``[INTERVALS + 1, steps]`` (float64)."""
    if path.exists():
        return torch.load(path)
    import seqattr

    torch.set_num_threads(1)
    model = seqattr.load_model(None, "integrated_gradients")
    tokenizer, hf_model = model.tokenizer, model.model
    ids = torch.tensor([tokenizer(FULL)["input_ids"]])
    prompt_length = len(tokenizer(PROMPT)["input_ids"])
    embed = hf_model.get_input_embeddings()
    with torch.no_grad():
        x = embed(ids)
        b = embed(torch.full_like(ids, tokenizer.unk_token_id))
        targets = ids[0, prompt_length:]
        values = []
        for alphas in torch.linspace(0, 1, INTERVALS + 1).split(243):
            logits = hf_model(inputs_embeds=b + alphas[:, None, None] * (x - b)).logits[
                :, prompt_length - 1 : -1
            ]
            probabilities = torch.softmax(logits.double(), -1)
            values.append(probabilities.gather(-1, targets.expand(len(alphas), -1)[..., None])[..., 0])
    f = torch.cat(values)
    torch.save(f, path)
    return f


def study(f: torch.Tensor) -> None:
    h = 1 / INTERVALS
    gap = f[-1] - f[0]

    def g(alpha: float) -> torch.Tensor:
        i = round(alpha * INTERVALS)
        return (f[i + 1] - f[i - 1]) / (2 * h)

    def midpoint(n: int) -> torch.Tensor:
        return sum(g((2 * j + 1) / (2 * n)) for j in range(n)) / n - gap

    deltas = {3**k: midpoint(3**k) for k in range(1, 5)}
    for n, delta in deltas.items():
        print(f"midpoint, {n} points: mean |delta| {delta.abs().mean():.4f}")
    for n in (9, 27, 81):
        extrapolated = (9 * deltas[n] - deltas[n // 3]) / 8
        print(f"Richardson, {n} points: mean |delta| {extrapolated.abs().mean():.4f}")

    def local(step: int, tolerance: float, split_cost: int) -> tuple[int, float]:
        # Leaves [left, width, contribution, indicator]; the first split is [0, 1] into thirds.
        leaves = [[j / 3, 1 / 3, g(j / 3 + 1 / 6)[step].item() / 3, 0.0] for j in range(3)]
        first = abs(sum(leaf[2] for leaf in leaves) - g(0.5)[step].item())
        for leaf in leaves:
            leaf[3] = first / 3
        points = 3
        while True:
            error = sum(leaf[2] for leaf in leaves) - gap[step].item()
            splittable = [leaf for leaf in leaves if leaf[1] > FINEST + 1e-12]
            if abs(error) <= tolerance or not splittable:
                return points, abs(error)
            top = max(leaf[3] for leaf in splittable)
            chosen = {id(leaf) for leaf in splittable if leaf[3] >= 0.5 * top}
            refined = []
            for leaf in leaves:
                if id(leaf) not in chosen:
                    refined.append(leaf)
                    continue
                left, width = leaf[0], leaf[1] / 3
                kids = [
                    [left + i * width, width, width * g(left + (i + 0.5) * width)[step].item(), 0.0]
                    for i in range(3)
                ]
                change = abs(sum(kid[2] for kid in kids) - leaf[2])
                for kid in kids:
                    kid[3] = change / 3
                refined += kids
                points += split_cost
            leaves = refined

    steps = f.shape[1]
    for tolerance in (0.1, 0.05):
        nested = []
        for step in range(steps):
            n = next(n for n in deltas if abs(deltas[n][step]) <= tolerance or n == 81)
            nested.append((n, abs(deltas[n][step].item())))
        print(
            f"nested midpoint, tolerance {tolerance}: {sum(n for n, _ in nested) / steps:.1f} points, "
            f"mean |delta| {sum(d for _, d in nested) / steps:.4f}"
        )
        for cost in (2, 3):
            runs = [local(step, tolerance, cost) for step in range(steps)]
            points, error = (sum(column) / steps for column in zip(*runs, strict=True))
            print(
                f"local refinement ({cost} points per split), tolerance {tolerance}: "
                f"{points:.1f} points, mean |delta| {error:.4f}"
            )


if __name__ == "__main__":
    study(curves(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/adaptive_curves.pt")))
