"""Dataset-level statistics of attributions: where each step's attribution goes, over a whole dataset run.

For every explained step of every example (`step_table`), then per step position and overall (`summarize`):

- **source share** (Voita et al. 2021, *Analyzing the Source and Target Contributions to Predictions in Neural
  Machine Translation*): ``|source| / (|source| + |prefix|)``, the sums of absolute scores the step gives to
  the source (an encoder-decoder's input; a decoder-only model's prompt) and to the target prefix before it
  (an encoder-decoder's decoder input, with ``attribute_target=True``; the tokens generated or forced before
  the step). Undefined (None) when the prefix side was not attributed;
- **token types**: the share of the step's absolute attribution on special tokens (``<s>``, ids the tokenizer
  calls special), punctuation (tokens whose text is only punctuation, symbols or whitespace) and content
  (the rest), over source and prefix together;
- **diagonality**: each step's argmax source token (`seqattr.data.alignment`: special and masked tokens not
  counted) at relative position ``(i + 0.5) / n`` of the ``n`` source tokens, against the step's own
  ``(j + 0.5) / m`` of ``m`` steps; ``offset`` is their difference, ``diagonal_deviation`` its mean absolute
  value (0 for a monotone alignment of equal lengths), and ``offset_histogram`` its distribution;
- **step scores** (``step_scores=["probability"]`` at attribution time): their mean and quantiles.

Masked tokens (``mask_special``, ``mask``) are left out, and a perturbation feature's one score counts once,
as in ``normalize``. Statistics are means over steps, every step of every example weighing the same; a step
where a statistic is undefined (its scores all 0 or unseen) is left out of that statistic's mean.

Example:
    >>> table = step_table(seq)                          # one value per step of one example
    >>> len(table["source_share"]) == seq.num_steps, table["source_share"][0]   # step 0 sees the prompt only
    (True, 1.0)
    >>> summary = summarize(out)
    >>> summary.num_examples, summary.by_step["step"]
    (1, [0, 1, 2, 3])
"""

from __future__ import annotations

import math
import os
import unicodedata
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from seqattr.data.aggregation import feature_repeats, is_special
from seqattr.data.alignment import aligned_steps, extract_alignment
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.tokens import detect_scheme, token_texts
from seqattr.dataset_runs.shards import DatasetOutput, load_dataset_output

if TYPE_CHECKING:
    import pandas as pd

TOKEN_TYPES = ("special", "punctuation", "content")
STEP_STATISTICS = ("source_share", "special_share", "punctuation_share", "content_share")
DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def token_type(token: str, text: str, token_id: int | None = None, special_ids: Iterable[int] = ()) -> str:
    """``"special"``, ``"punctuation"`` (a text of punctuation, symbols or whitespace only) or ``"content"``.

    ``text`` is the token's decoded text (`seqattr.data.tokens.token_texts`); a token holding only the rest
    of a character (text ``""``) is content.

    Example:
        >>> [token_type(t, t.strip()) for t in ["</s>", ",", "$", "cat", "3"]]
        ['special', 'punctuation', 'punctuation', 'content', 'content']
    """
    if is_special(token, token_id, set(special_ids)):
        return "special"
    if text and all(char.isspace() or unicodedata.category(char)[0] in "PS" for char in text):
        return "punctuation"
    return "content"


@dataclass
class _Block:
    """The absolute scores ``[rows, steps]`` of one side's counted rows, and each row's token type."""

    values: np.ndarray
    types: list[str]


def _block(seq, side: str, positions: range, special: set[int], texts: list[str]) -> _Block:
    tokens, ids = (seq.source, seq.source_ids) if side == "source" else (seq.target, seq.target_ids)
    scores = seq.source_attributions if side == "source" else seq.target_attributions
    masked = set(seq.masked_source if side == "source" else seq.masked_target)
    rows = [p for p in positions if p not in masked and p not in feature_repeats(seq, side)]
    values = scores[rows].to(torch.float64).abs().numpy() if rows else np.zeros((0, seq.num_steps))
    types = [token_type(tokens[p], texts[p], ids[p], special) for p in rows]
    return _Block(values, types)


def _held_fixed(prefix: Float[Tensor, "generated steps ..."]) -> bool:
    """Whether a decoder-only example's generated-prefix scores are NaN wherever a step sees them: the
    prompt-only convention (``attribute_target=False``), where the prefix's share is undefined, not 0.
    Generated token ``r`` is seen by steps ``t > r``."""
    seen = torch.ones(prefix.shape[:2], dtype=torch.bool).triu(diagonal=1)
    return bool(seen.any()) and bool(prefix[seen].isnan().all())


def _share(part: float, total: float) -> float:
    return part / total if total > 0 else math.nan


def step_table(seq: SequenceAttribution, special_ids: Iterable[int] | None = None) -> dict[str, list]:
    """The statistics of each explained step of one example (see the module docstring), as columns:
    ``step``, ``source_share``, ``special_share``, ``punctuation_share``, ``content_share``,
    ``relative_step``, ``relative_source``, ``offset`` and one column per step score; NaN where undefined.

    Example:
        >>> table = step_table(seq)
        >>> sorted(table)[:4], len(table["step"])
        (['content_share', 'offset', 'probability', 'punctuation_share'], 4)
    """
    if seq.extra_dims:
        raise ValueError(
            "dataset statistics need one score per token and step, but these attributions have extra "
            f"dimensions {tuple(seq.attribution_shape[2:])}; reduce them first (out.reduce('sum')), or run "
            "the dataset with the method's default reduction"
        )
    special = set(special_ids or ())
    steps, start = seq.num_steps, seq.attr_pos_start
    scheme = detect_scheme([*seq.source, *seq.target])
    source_texts, target_texts = token_texts(seq.source, scheme), token_texts(seq.target, scheme)
    source = prefix = None
    if seq.source_attributions is not None:  # encoder-decoder: the prefix is the decoder input
        source = _block(seq, "source", range(len(seq.source)), special, source_texts)
        if seq.target_attributions is not None:
            prefix = _block(seq, "target", range(len(seq.target)), special, target_texts)
    elif seq.target_attributions is not None:  # decoder-only: the prompt, then what came after it
        source = _block(seq, "target", range(start), special, target_texts)
        prefix = _block(seq, "target", range(start, len(seq.target)), special, target_texts)
        if _held_fixed(seq.target_attributions[start:]):  # attribute_target=False: no prefix share
            prefix = None
    table: dict[str, list] = {"step": list(range(steps))}
    table |= {name: [math.nan] * steps for name in (*STEP_STATISTICS, "relative_step", "relative_source")}
    table["offset"] = [math.nan] * steps
    if source is not None:
        blocks = [source] if prefix is None else [source, prefix]
        values = np.concatenate([b.values for b in blocks])
        types = np.array([t for b in blocks for t in b.types])
        for t in range(steps):
            column = np.nan_to_num(values[:, t])  # unseen (NaN) tokens hold nothing
            total = float(column.sum())
            if prefix is not None:
                table["source_share"][t] = _share(float(np.nan_to_num(source.values[:, t]).sum()), total)
            for kind in TOKEN_TYPES:
                table[f"{kind}_share"][t] = _share(float(column[types == kind].sum()), total)
        alignment = extract_alignment(seq, special_ids=special)
        counted = aligned_steps(seq, special)
        for i, j in alignment.links:
            t = counted[j]
            table["relative_source"][t] = (i + 0.5) / len(alignment.source)
            table["relative_step"][t] = (j + 0.5) / len(alignment.target)
            table["offset"][t] = table["relative_source"][t] - table["relative_step"][t]
    for name, scores in seq.step_scores.items():
        table[name] = [float(v) for v in scores.to(torch.float64).tolist()]
    return table


class _Mean:
    """A running mean per step position and over all steps; NaN values are left out."""

    def __init__(self) -> None:
        self.sums: list[float] = []
        self.counts: list[int] = []

    def add(self, values: list[float]) -> None:
        for t, value in enumerate(values):
            if t >= len(self.sums):
                self.sums.append(0.0)
                self.counts.append(0)
            if not math.isnan(value):
                self.sums[t] += value
                self.counts[t] += 1

    def by_step(self, positions: int) -> list[float | None]:
        return [
            self.sums[t] / self.counts[t] if t < len(self.counts) and self.counts[t] else None
            for t in range(positions)
        ]

    def overall(self) -> float | None:
        count = sum(self.counts)
        return sum(self.sums) / count if count else None


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


@dataclass
class DatasetSummary:
    """What `summarize` returns: plain numbers, lists and dictionaries (``to_dict`` is JSON-ready), and data
    frames of its tables (``to_dataframe``). None marks a statistic with no defined value.

    Attributes:
        num_examples: examples read. num_steps: their explained steps, all together.
        source_side, prefix_side: what "source" and "prefix" are here: ``"source"`` and ``"target prefix"``
            (encoder-decoder), or ``"prompt"`` and ``"generated prefix"`` (decoder-only).
        overall: the mean of each step statistic over every step: ``source_share``, ``special_share``,
            ``punctuation_share``, ``content_share``, ``diagonal_deviation`` (mean ``|offset|``), and the
            mean of each step score.
        by_step: the same per step position, as columns (``step``, ``examples``: how many examples have
            that step, then the statistics, then each step score's mean and quantiles, ``probability_q50``).
        offset_histogram: ``{"edges": [...], "counts": [...]}`` of the argmax offsets, over [-1, 1].
        score_quantiles: ``{score: {quantile: value}}`` over every step.
        examples: one entry per example, as columns: ``row``, ``steps``, its mean ``source_share`` and
            ``diagonal_deviation``, and the mean of each step score (``mean_probability``).
        info: the run's info (method, model, ...).
    """

    num_examples: int
    num_steps: int
    source_side: str
    prefix_side: str
    overall: dict[str, float | None]
    by_step: dict[str, list]
    offset_histogram: dict[str, list]
    score_quantiles: dict[str, dict[float, float | None]]
    examples: dict[str, list]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (quantile keys as strings, for JSON).

        Example:
            >>> import json
            >>> _ = json.dumps(summarize(out).to_dict())
        """
        return {
            "num_examples": self.num_examples,
            "num_steps": self.num_steps,
            "source_side": self.source_side,
            "prefix_side": self.prefix_side,
            "overall": self.overall,
            "by_step": self.by_step,
            "offset_histogram": self.offset_histogram,
            "score_quantiles": {
                name: {str(q): v for q, v in values.items()} for name, values in self.score_quantiles.items()
            },
            "examples": self.examples,
        }

    def to_dataframe(self, table: str = "by_step") -> pd.DataFrame:
        """The table ``"by_step"`` (a row per step position) or ``"examples"`` (a row per example) as a frame.

        Example:
            >>> summarize(out).to_dataframe("examples").columns.tolist()[:3]
            ['row', 'steps', 'source_share']
        """
        import pandas as pd

        tables = {"by_step": self.by_step, "examples": self.examples}
        if table not in tables:
            raise ValueError(f"table must be one of {sorted(tables)}, got {table!r}")
        return pd.DataFrame(tables[table])


def examples_of(data: Any) -> tuple[Iterator[tuple[int, SequenceAttribution]], dict[str, Any]]:
    """``(row, example)`` pairs of a dataset output (or its folder) or of an `AttributionOutput`, read
    lazily, and the run's info.

    Example:
        >>> pairs, info = examples_of(out)
        >>> [row for row, _ in pairs], info["method"]
        ([0], 'saliency')
    """
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_output(data)
    if isinstance(data, DatasetOutput):
        return iter(data), data.info
    if isinstance(data, AttributionOutput):
        return enumerate(data.sequence_attributions), data.info
    if isinstance(data, SequenceAttribution):
        return iter([(0, data)]), {}
    raise TypeError(
        "expected the folder of a dataset run (or seqattr.load_dataset_output's result), an "
        f"AttributionOutput or a SequenceAttribution; got {type(data).__name__}"
    )


def _quantiles(values: np.ndarray, quantiles: tuple[float, ...]) -> dict[float, float | None]:
    values = values[~np.isnan(values)]
    if not len(values):
        return dict.fromkeys(quantiles)
    return {q: float(v) for q, v in zip(quantiles, np.quantile(values, quantiles), strict=True)}


def _quantile_label(q: float) -> str:
    return f"q{round(q * 100):02d}"


def summarize(
    data: Any,
    *,
    special_ids: Iterable[int] | None = None,
    quantiles: Iterable[float] = DEFAULT_QUANTILES,
    bins: int = 20,
) -> DatasetSummary:
    """The dataset-level statistics of a dataset run (see the module docstring), read one example at a time.

    Args:
        data: the output folder of `AttributionModel.attribute_dataset`, its `seqattr.load_dataset_output`,
            or an `AttributionOutput`.
        special_ids: token ids counted as special (default: those recorded at attribution time).
        quantiles: the quantiles of the step scores, each in [0, 1].
        bins: bins of the offset histogram over [-1, 1].

    Memory grows with the number of steps only by the step scores kept for their quantiles (8 bytes each)
    and with the number of examples by one row of ``examples``.

    Example:
        >>> summary = summarize(out)                 # or summarize("runs/ig"), a dataset run's folder
        >>> summary.overall["source_share"] <= 1, summary.source_side
        (True, 'prompt')
        >>> sorted(summary.score_quantiles["probability"])     # the quantiles of every step's probability
        [0.1, 0.25, 0.5, 0.75, 0.9]
    """
    quantiles = tuple(quantiles)
    if not quantiles or not all(isinstance(q, (int, float)) and 0 <= q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must be numbers in [0, 1], got {quantiles!r}")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    pairs, info = examples_of(data)
    special = set(info.get("special_token_ids") or ()) if special_ids is None else set(special_ids)
    means = {name: _Mean() for name in (*STEP_STATISTICS, "diagonal_deviation")}
    scores: dict[str, tuple[array, array]] = {}  # name -> (step positions, values)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    examples: dict[str, list] = {"row": [], "steps": [], "source_share": [], "diagonal_deviation": []}
    positions = num_examples = num_steps = 0
    encoder_decoder = info.get("is_encoder_decoder")
    for row, seq in pairs:
        table = step_table(seq, special)
        deviation = [abs(v) for v in table["offset"]]
        for name in STEP_STATISTICS:
            means[name].add(table[name])
        means["diagonal_deviation"].add(deviation)
        offsets = np.array([v for v in table["offset"] if not math.isnan(v)])
        counts += np.histogram(offsets, bins=edges)[0]
        for name in seq.step_scores:
            if name not in scores:
                scores[name] = (array("q"), array("d"))
                examples[f"mean_{name}"] = [None] * num_examples
            scores[name][0].extend(table["step"])
            scores[name][1].extend(table[name])
        examples["row"].append(row)
        examples["steps"].append(seq.num_steps)
        examples["source_share"].append(_mean(table["source_share"]))
        examples["diagonal_deviation"].append(_mean(deviation))
        for name in scores:
            examples[f"mean_{name}"].append(_mean(table[name]) if name in seq.step_scores else None)
        if encoder_decoder is None:
            encoder_decoder = seq.source_attributions is not None
        positions = max(positions, seq.num_steps)
        num_examples += 1
        num_steps += seq.num_steps

    by_step: dict[str, list] = {"step": list(range(positions))}
    per_position = np.zeros(positions, dtype=np.int64)
    for steps in examples["steps"]:
        per_position[:steps] += 1
    by_step["examples"] = per_position.tolist()
    overall: dict[str, float | None] = {}
    for name, mean in means.items():
        by_step[name] = mean.by_step(positions)
        overall[name] = mean.overall()
    score_quantiles = {}
    for name, (steps, values) in scores.items():
        steps_np, values_np = np.frombuffer(steps, dtype=np.int64), np.frombuffer(values, dtype=np.float64)
        kept = ~np.isnan(values_np)
        overall[name] = float(values_np[kept].mean()) if kept.any() else None
        score_quantiles[name] = _quantiles(values_np, quantiles)
        by_step[name] = [None] * positions
        for q in quantiles:
            by_step[f"{name}_{_quantile_label(q)}"] = [None] * positions
        for t in range(positions):
            at = values_np[steps_np == t]
            at = at[~np.isnan(at)]
            by_step[name][t] = float(at.mean()) if len(at) else None
            for q, value in _quantiles(at, quantiles).items():
                by_step[f"{name}_{_quantile_label(q)}"][t] = value
    return DatasetSummary(
        num_examples=num_examples,
        num_steps=num_steps,
        source_side="source" if encoder_decoder else "prompt",
        prefix_side="target prefix" if encoder_decoder else "generated prefix",
        overall=overall,
        by_step=by_step,
        offset_histogram={"edges": edges.tolist(), "counts": counts.tolist()},
        score_quantiles=score_quantiles,
        examples=examples,
        info=info,
    )
