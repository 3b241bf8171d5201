"""Terminal view (rich): a heatmap per example, then its step scores and its generation trace.

Rows are the source tokens (encoder-decoder models) and the target tokens (prompt and generated prefix);
columns are the explained steps, headed by the token each step produced. Cells a step cannot see are blank.

- The title says what the numbers are: the method, the attributed function and whether the scores are raw
  or normalised (``#0 saliency of probability, raw scores``), then the aggregations applied, in order.
  ``out.show()`` shows the scores as they are; ``out.normalize().show()`` shows each step's share
  (L1 norm 1 per step).
- Colours: red for positive, blue for negative scores, scaled by the largest absolute score of the example;
  when no score is negative (e.g. saliency's norms) the scale runs from 0 to that score in one hue.
  Every coloured cell sets its own background and a contrasting text colour, and scores near zero keep the
  terminal's own colours, so the table reads the same on dark and light terminals.
- Wide outputs are split into several tables of consecutive steps that fit the console width, never cut.
- Tokens are shown as text: byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁`` decoded, ``Ã©`` shown as ``é``.
- Masked tokens (`SequenceAttribution.mask_special`) are left out of the rows and of the colour scale.
- Tokens a perturbation method did not perturb (special tokens) show ``–``: their 0 is no measurement.
- Token text and titles are printed as text, never read as rich markup (``[/b]`` in a token stays as is).
- Attributions with extra dimensions (raw hidden vectors, layers/heads) are summed over them for display.

Example:
    >>> out.show()                                   # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    #0 saliency ...
    >>> out[0][:2].show()                            # two steps  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    sequence of ... tokens, 2 steps ┏... token ... The ... probability ... generation trace ...
"""

from __future__ import annotations

import math

import torch
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from seqattr.data.aggregation import unperturbed
from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.tokens import detect_scheme, token_labels

MAX_LABEL = 24
"""Longest row label (token text) shown; longer ones are cut with an ellipsis."""
MAX_HEADER = 12
"""Longest column header (step token) shown."""
_FAINT = 0.08  # below this fraction of the scale a cell keeps the terminal's colours

_POSITIVE = ((252, 222, 214), (178, 24, 43))  # pale -> strong red
_NEGATIVE = ((214, 230, 244), (33, 102, 172))  # pale -> strong blue
NOT_MEASURED = "–"
"""Shown for a token a perturbation method did not perturb (its stored 0 is no measurement)."""


def display_token(token: str) -> str:
    """A readable label of one token (see `seqattr.data.tokens.token_labels`)."""
    return token_labels([token])[0]


def cell_style(value: float, scale: float) -> str:
    """The rich style of a score: background on a diverging scale, text colour chosen for contrast.

    Example:
        >>> cell_style(1.0, 1.0), cell_style(0.0, 1.0)
        ('#ffffff on #b2182b', '')
    """
    if math.isnan(value) or scale <= 0 or abs(value) / scale < _FAINT:
        return ""
    strength = min(abs(value) / scale, 1.0)
    pale, strong = _POSITIVE if value > 0 else _NEGATIVE
    rgb = [round(p + (s - p) * strength) for p, s in zip(pale, strong, strict=True)]
    luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    text = "#000000" if luminance > 0.55 else "#ffffff"
    return f"{text} on #{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}"


def format_score(value: float) -> str:
    if math.isnan(value):
        return ""
    magnitude = abs(value)
    if magnitude >= 100 or (0 < magnitude < 0.001):
        return f"{value:.2g}"
    return f"{value:.3f}" if magnitude < 10 else f"{value:.2f}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(attributions: torch.Tensor) -> torch.Tensor:
    return (
        attributions.reshape(*attributions.shape[:2], -1).sum(-1) if attributions.dim() > 2 else attributions
    )


class HeatmapView:
    """The rich renderable of one example; it splits its steps into tables that fit the console width."""

    def __init__(self, seq: SequenceAttribution, title: str | None = None) -> None:
        self.seq = seq
        self.title = title
        scheme = detect_scheme([*seq.source, *seq.target])
        self.source_labels = [_clip(t, MAX_LABEL) for t in token_labels(seq.source, scheme)]
        self.target_labels = [_clip(t, MAX_LABEL) for t in token_labels(seq.target, scheme)]
        self.step_labels = [
            _clip(t, MAX_HEADER) for t in self.target_labels[seq.attr_pos_start : seq.attr_pos_end]
        ]
        # Rows shown: (kind, label, values), masked tokens left out.
        self.rows: list[tuple[str, str, list[float]]] = []
        self.not_measured: set[int] = set()
        """Indices into ``rows`` of tokens no perturbation feature held: shown as `NOT_MEASURED`."""
        for side, labels, values, masked in [
            ("source", self.source_labels, seq.source_attributions, set(seq.masked_source)),
            ("target", self.target_labels, seq.target_attributions, set(seq.masked_target)),
        ]:
            if values is None:
                continue
            flat = _flatten(values.float()).tolist()
            skipped = unperturbed(seq, side)
            for i in range(len(labels)):
                if i in masked:
                    continue
                if i in skipped:
                    self.not_measured.add(len(self.rows))
                self.rows.append((side, labels[i], flat[i]))
        finite = [
            v
            for r, (_, _, row) in enumerate(self.rows)
            if r not in self.not_measured
            for v in row
            if not math.isnan(v)
        ]
        self.scale = max((abs(v) for v in finite), default=0.0)
        self.unsigned = all(v >= 0 for v in finite)
        self.hidden = len(seq.masked_source) + len(seq.masked_target)

    def _column_width(self, step: int) -> int:
        widest_value = max((len(format_score(row[step])) for _, _, row in self.rows), default=0)
        widest_score = max(
            (len(format_score(float(s[step]))) for s in self.seq.step_scores.values()), default=0
        )
        return max(len(self.step_labels[step]), widest_value, widest_score, 1)

    def chunks(self, width: int) -> list[range]:
        """Consecutive step ranges whose tables fit in ``width`` columns (at least one step each)."""
        names = [name for name in self.seq.step_scores]
        label_width = max((len(label) for _, label, _ in self.rows), default=5)
        label_width = max(label_width, *(len(n) for n in names), 5)
        available = width - (label_width + 3) - 1  # label column with its padding and borders
        chunks, start, used = [], 0, 0
        for step in range(self.seq.num_steps):
            cost = self._column_width(step) + 3
            if step > start and used + cost > available:
                chunks.append(range(start, step))
                start, used = step, 0
            used += cost
        if self.seq.num_steps:
            chunks.append(range(start, self.seq.num_steps))
        return chunks

    def table(self, steps: range, part: str) -> Table:
        # The example's title is printed above the tables (a line of its own, never wrapped to the width
        # of a narrow table); a split table's caption says which steps it holds.
        table = Table(title=part or None, header_style="bold", title_style="dim", pad_edge=True)
        table.add_column("token", no_wrap=True)
        for step in steps:
            table.add_column(Text(self.step_labels[step]), justify="right", no_wrap=True)
        previous_side = None
        for row, (side, label, values) in enumerate(self.rows):
            if side == "target" and all(math.isnan(values[s]) for s in steps):
                continue  # a token after the last step of this table: no step here sees it
            if previous_side is not None and side != previous_side:
                table.add_section()
            previous_side = side
            style = "cyan" if side == "source" else "magenta"
            if row in self.not_measured:
                cells = [Text("" if math.isnan(values[s]) else NOT_MEASURED, style="dim") for s in steps]
            else:
                cells = [
                    Text(format_score(values[s]), style=cell_style(values[s], self.scale)) for s in steps
                ]
            table.add_row(Text(label, style=style), *cells)
        if self.seq.step_scores:
            table.add_section()
            for name, scores in self.seq.step_scores.items():
                table.add_row(
                    Text(name, style="bold"), *(Text(format_score(float(scores[s]))) for s in steps)
                )
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        chunks = self.chunks(options.max_width)
        title = self.title or f"sequence of {len(self.seq.target)} tokens, {self.seq.num_steps} steps"
        if not chunks:
            yield Text(f"{title}: no explained steps")
            return
        yield Text(title, style="bold")
        for chunk in chunks:
            part = (
                "" if len(chunks) == 1 else f"(steps {chunk.start}-{chunk.stop - 1} of {self.seq.num_steps})"
            )
            yield self.table(chunk, part)
        notes = []
        if self.hidden:
            notes.append(f"{self.hidden} masked token(s) not shown")
        if self.seq.extra_dims:
            notes.append(f"scores summed over extra dimensions {self.seq.attribution_shape[2:]}")
        if self.not_measured:
            notes.append(f"{NOT_MEASURED}: not perturbed")
        top = format_score(self.scale) or "0"
        notes.append(f"colour scale: 0 to {top}" if self.unsigned else f"colour scale: ±{top}")
        yield Text("; ".join(notes), style="dim")
        if self.seq.trace is not None:
            yield trace_table(self.seq)


def trace_table(seq: SequenceAttribution) -> Table:
    """One row per step: the chosen token, its probability and rank, the entropy, the context reliance (when
    the prompt named a context), the top alternatives.

    Steps whose token was not the model's first choice (rank > 0) are marked in bold yellow.
    """
    trace = seq.trace
    # The trace's tokens alone may carry no word marker: take the scheme from the whole sequence.
    scheme = detect_scheme([*seq.source, *seq.target, *trace.tokens])
    table = Table(title="generation trace", header_style="bold", title_style="bold")
    for name, justify in [
        ("step", "right"),
        ("token", "left"),
        ("p", "right"),
        ("rank", "right"),
        ("entropy", "right"),
        *([("context reliance", "right")] if trace.context_reliance is not None else []),
        ("top alternatives", "left"),
    ]:
        table.add_column(name, justify=justify, no_wrap=name != "top alternatives")
    for step in range(len(trace)):
        rank = int(trace.ranks[step])
        alternatives = ", ".join(
            f"{label} {float(p):.2f}"
            for label, p in zip(
                token_labels(trace.top_tokens[step], scheme, sequence=False),
                trace.top_probabilities[step],
                strict=True,
            )
        )
        table.add_row(
            str(step),
            Text(token_labels([trace.tokens[step]], scheme)[0]),
            f"{float(trace.probabilities[step]):.3f}",
            str(rank),
            f"{float(trace.entropy[step]):.2f}",
            # KL(with || without the context), in nats: how much the step's distribution moves without it.
            *([f"{float(trace.context_reliance[step]):.3f}"] if trace.context_reliance is not None else []),
            Text(alternatives),
            style="bold yellow" if rank > 0 else None,
        )
    return table


def render_sequence(seq: SequenceAttribution, title: str | None = None) -> HeatmapView:
    """A rich renderable of one example: heatmap tables, step scores, trace."""
    return HeatmapView(seq, title)


def scores_description(info: dict) -> str:
    """What the numbers of an output are: method, attributed function, raw or normalised, aggregations.

    Example:
        >>> scores_description({"method": "saliency", "attributed_fn": "probability",
        ...                     "aggregations": ["mask_special", "normalize"]})
        'saliency of probability, normalised per step (L1 = 1) [mask_special, normalize]'
    """
    aggregations = [str(a) for a in info.get("aggregations") or []]
    units = "raw scores"
    for step in aggregations:  # the last normalisation applied decides what the numbers are
        if step == "normalize":
            units = "normalised per step (L1 = 1)"
        elif step.startswith("rescale"):
            units = "rescaled to [-1, 1]"
    what = str(info.get("method", "?"))
    if info.get("attributed_fn"):
        what += f" of {info['attributed_fn']}"
    suffix = f" [{', '.join(aggregations)}]" if aggregations else ""
    return f"{what}, {units}{suffix}"


def render_output(output: AttributionOutput) -> Group:
    description = scores_description(output.info)
    return Group(
        *(
            render_sequence(seq, title=f"#{i} {description}")
            for i, seq in enumerate(output.sequence_attributions)
        )
    )


def renderable(attributions: AttributionOutput | SequenceAttribution) -> HeatmapView | Group:
    """What rich prints for an output (every example) or one example."""
    if isinstance(attributions, SequenceAttribution):
        return render_sequence(attributions)
    return render_output(attributions)


def _default_normalize(attributions: AttributionOutput) -> bool:
    """Normalise by default the scores that have no unit, unless already normalised or rescaled, or not one
    score per token (hidden dimensions kept)."""
    done = any(str(a).startswith(("normalize", "rescale")) for a in attributions.info.get("aggregations", []))
    return (
        bool(attributions.info.get("unitless_scores"))
        and not done
        and all(seq.extra_dims == 0 for seq in attributions)
    )


def show(
    attributions: AttributionOutput | SequenceAttribution,
    console: Console | None = None,
    normalize: bool | None = None,
) -> None:
    """Print an output or one example; ``normalize``: see `seqattr.data.views.Views.show`.

    Example:
        >>> saliency = model.attribute("the cat", "the cat sat on")      # plain gradients have no unit
        >>> show(saliency, normalize=False)                 # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        #0 saliency of probability, raw scores ...
    """
    if isinstance(attributions, AttributionOutput):
        if normalize is None:
            normalize = _default_normalize(attributions)
        if normalize:
            attributions = attributions.normalize()
    elif normalize:
        attributions = attributions.normalize()
    (console or Console()).print(renderable(attributions))
