"""Attributions as tables: a long-format pandas frame, and Inseq-like nested score dictionaries.

``to_dataframe`` has one row per visible (token, step) score, with columns

- ``example``: index of the example in the output (0 for a single `SequenceAttribution`);
- ``step``: step index (column of the attribution tensors); ``step_position``: its target position;
  ``step_token``: the token it produced;
- ``side``: ``"source"`` or ``"target"``; ``position``: the token's index on its side; ``token``; ``masked``;
- ``score``: the attribution;
- one column per step score (``probability``, ...), repeated on every row of its step.

Cells a step cannot see (NaN) have no row. `from_dataframe` rebuilds the score tensors, so numbers
round-trip exactly.

Example:
    >>> df = out.to_dataframe()
    >>> df.columns.tolist()[-4:]                 # ..., then one column per step score
    ['token', 'masked', 'score', 'probability']
    >>> df[df.side == "target"].pivot_table("score", "token", "step_token").shape   # a heatmap table
    (9, 4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

    from seqattr.data.attribution import AttributionOutput, SequenceAttribution

COLUMNS = ["example", "step", "step_position", "step_token", "side", "position", "token", "masked", "score"]


def _check_reduced(seq: SequenceAttribution) -> None:
    if seq.extra_dims:
        raise ValueError(
            f"a data frame holds one score per token and step, but these attributions have extra dimensions "
            f"{seq.attribution_shape[2:]}; reduce them first, e.g. out.reduce('sum').to_dataframe()"
        )


def _sequence_rows(seq: SequenceAttribution, example: int) -> dict[str, list]:
    _check_reduced(seq)
    columns: dict[str, list] = {name: [] for name in COLUMNS} | {name: [] for name in seq.step_scores}
    sides = [
        ("source", seq.source, seq.source_attributions, set(seq.masked_source)),
        ("target", seq.target, seq.target_attributions, set(seq.masked_target)),
    ]
    step_scores = {name: scores.float().numpy() for name, scores in seq.step_scores.items()}
    for side, tokens, values, masked in sides:
        if values is None:
            continue
        array = values.float().numpy()
        positions, steps = np.nonzero(~np.isnan(array))
        order = np.lexsort((positions, steps))  # step by step, tokens in order within a step
        for position, step in zip(positions[order].tolist(), steps[order].tolist(), strict=True):
            columns["example"].append(example)
            columns["step"].append(step)
            columns["step_position"].append(seq.attr_pos_start + step)
            columns["step_token"].append(seq.target[seq.attr_pos_start + step])
            columns["side"].append(side)
            columns["position"].append(position)
            columns["token"].append(tokens[position])
            columns["masked"].append(position in masked)
            columns["score"].append(array[position, step])
            for name, scores in step_scores.items():
                columns[name].append(scores[step])
    return columns


INTERACTION_COLUMNS = [
    "example", "step", "step_position", "step_token", "side", "position", "token",
    "partner_side", "partner_position", "partner_token", "score",
]  # fmt: skip
"""Columns of ``to_dataframe(interactions=True)``: one row per visible token pair of a step."""


def feature_labels(seq: SequenceAttribution) -> list[tuple[str, int, str]]:
    """``(side, position, token)`` of each row of ``seq.interactions``: the source's, then the target's."""
    labels = []
    if seq.source_attributions is not None:
        labels += [("source", i, token) for i, token in enumerate(seq.source)]
    if seq.target_attributions is not None:
        labels += [("target", i, token) for i, token in enumerate(seq.target)]
    return labels


def _interaction_rows(seq: SequenceAttribution, example: int) -> dict[str, list]:
    if seq.interactions is None:
        raise ValueError(
            "these attributions hold no interactions; attribute with method='integrated_hessians' or "
            "'expected_hessians' (or call to_dataframe() for the per-token scores)"
        )
    columns: dict[str, list] = {name: [] for name in INTERACTION_COLUMNS}
    labels = feature_labels(seq)
    array = seq.interactions.float().numpy()
    rows, partners, steps = np.nonzero(~np.isnan(array))
    order = np.lexsort((partners, rows, steps))  # step by step, then row by row
    for row, partner, step in zip(*(x[order].tolist() for x in (rows, partners, steps)), strict=True):
        side, position, token = labels[row]
        partner_side, partner_position, partner_token = labels[partner]
        values = [example, step, seq.attr_pos_start + step, seq.target[seq.attr_pos_start + step], side]
        values += [position, token, partner_side, partner_position, partner_token, array[row, partner, step]]
        for name, value in zip(INTERACTION_COLUMNS, values, strict=True):
            columns[name].append(value)
    return columns


def to_dataframe(
    attributions: AttributionOutput | SequenceAttribution, interactions: bool = False
) -> pd.DataFrame:
    """The long-format frame of an output or of one example (see the module docstring for the columns); with
    ``interactions`` the frame of the interaction methods' token pairs (`INTERACTION_COLUMNS`: one row per
    visible pair of a step, ``score`` the pair's interaction; the diagonal pairs hold the main effects).

    Example:
        >>> df = out.to_dataframe()
        >>> df.groupby(["example", "step"]).score.sum().shape      # total attribution per step
        (4,)
    """
    import pandas as pd

    from seqattr.data.attribution import SequenceAttribution

    sequences = [attributions] if isinstance(attributions, SequenceAttribution) else list(attributions)
    frames = []
    if interactions:
        frames = [
            pd.DataFrame(_interaction_rows(seq, i)).astype({"score": "float32"})
            for i, seq in enumerate(sequences)
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INTERACTION_COLUMNS)
    for example, seq in enumerate(sequences):
        frame = pd.DataFrame(_sequence_rows(seq, example))
        frames.append(frame.astype({"score": "float32", **{name: "float32" for name in seq.step_scores}}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def scores_from_dataframe(
    frame: pd.DataFrame, seq: SequenceAttribution, example: int = 0
) -> dict[str, torch.Tensor | None]:
    """The ``source``/``target`` score tensors of ``example`` rebuilt from a frame (NaN where no row), for
    analyses done in pandas and brought back (the tokens come from ``seq``).

    Example:
        >>> target = scores_from_dataframe(out.to_dataframe(), out[0])["target"]
        >>> torch.equal(target.nan_to_num(), out[0].target_attributions.nan_to_num())   # NaN where no row
        True
    """
    rows = frame[frame["example"] == example]
    rebuilt: dict[str, torch.Tensor | None] = {}
    for side, tokens, original in [
        ("source", seq.source, seq.source_attributions),
        ("target", seq.target, seq.target_attributions),
    ]:
        if original is None:
            rebuilt[side] = None
            continue
        values = torch.full((len(tokens), seq.num_steps), float("nan"))
        part = rows[rows["side"] == side]
        # Copies: pandas hands out read-only arrays, which torch refuses to wrap.
        positions = torch.tensor(part["position"].to_numpy(dtype=np.int64, copy=True))
        steps = torch.tensor(part["step"].to_numpy(dtype=np.int64, copy=True))
        values[positions, steps] = torch.tensor(part["score"].to_numpy(dtype=np.float32, copy=True))
        rebuilt[side] = values
    return rebuilt


def scores_dict(seq: SequenceAttribution) -> dict[str, dict]:
    """Nested dicts like Inseq's ``get_scores_dicts`` entries, keyed by ``(position, token)`` pairs.

    ``{"source_attributions": {(step_position, step_token): {(position, token): score}},
    "target_attributions": {...}, "step_scores": {(step_position, step_token): {name: score}}}``; positions in
    the keys keep repeated tokens apart (Inseq keys by token text alone, so a repeated token overwrites the
    first). Unseen target tokens are left out.

    Example:
        >>> d = out[0].get_scores_dict()
        >>> out[0].target[4:7]
        ['ĠFrance', 'Ġis', 'Ġthe']
        >>> score = d["target_attributions"][(6, "Ġthe")][(5, "Ġis")]   # step "Ġthe" (position 6) on "Ġis"
        >>> score == out[0].target_attributions[5, 0].item()
        True
    """
    _check_reduced(seq)
    result: dict[str, dict] = {"source_attributions": {}, "target_attributions": {}, "step_scores": {}}
    for step, step_token in enumerate(seq.steps):
        key = (seq.attr_pos_start + step, step_token)
        for name, tokens, values in [
            ("source_attributions", seq.source, seq.source_attributions),
            ("target_attributions", seq.target, seq.target_attributions),
        ]:
            if values is None:
                continue
            column = values[:, step].tolist()
            result[name][key] = {
                (position, token): column[position]
                for position, token in enumerate(tokens)
                if not np.isnan(column[position])
            }
        result["step_scores"][key] = {name: float(scores[step]) for name, scores in seq.step_scores.items()}
    return result
