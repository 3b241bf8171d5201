"""`EvaluationResult`: the faithfulness metrics of an output, per step, per example and overall.

Each metric comes with its *random level*: the same metric for a random ranking of the same features
(`seqattr.evaluation.faithfulness`). Per-step values are NaN where a step has no features to remove; every
mean skips NaN. The overall mean pools the steps of all examples (a long example weighs more than a short
one); `sequence_means` gives one mean per example.

Example:
    >>> result = model.evaluate(out, metrics=["comprehensiveness", "sufficiency"])
    >>> sorted(result.means())
    ['comprehensiveness', 'sufficiency']
    >>> result.save(tmp / "eval.json"); again = EvaluationResult.load(tmp / "eval.json")
    >>> again.means() == result.means()
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seqattr.data.io import tensor_from_json, tensor_to_json

FORMAT = "seqattr-evaluation"
FORMAT_VERSION = 1


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


@dataclass(eq=False)
class EvaluationResult:
    """What `AttributionModel.evaluate` returns: each metric per step of each example, with its random level.

    Example:
        >>> result = model.evaluate(out, metrics=["comprehensiveness"])
        >>> result.per_step[0]["comprehensiveness"].shape == (out[0].num_steps,)
        True
        >>> result.show()                                     # doctest: +SKIP
    """

    metrics: list[str]
    per_step: list[dict[str, Tensor]]
    """Per example, each metric's value at every step (``[steps]``, float64; NaN: no feature to remove)."""
    random_per_step: list[dict[str, Tensor]]
    """The same for the random ranking: the chance level of each value."""
    step_values: list[Tensor]
    """Per example, ``f_t(x)``: the evaluated step function on the unperturbed input, one per step."""
    steps: list[list[str]]
    """Per example, the explained tokens (one per step)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How the metrics were computed: fractions, removal, baseline, ranking, seed, step function, method."""

    def __len__(self) -> int:
        return len(self.per_step)

    def sequence_means(self, random: bool = False) -> dict[str, list[float]]:
        """Each metric's mean over the steps of each example (the random level's with ``random=True``)."""
        source = self.random_per_step if random else self.per_step
        return {metric: [_nanmean(example[metric]) for example in source] for metric in self.metrics}

    def means(self, random: bool = False) -> dict[str, float]:
        """Each metric's mean over all steps of all examples (NaN steps skipped)."""
        source = self.random_per_step if random else self.per_step
        return {
            metric: _nanmean(torch.cat([example[metric] for example in source])) if source else math.nan
            for metric in self.metrics
        }

    def random_means(self) -> dict[str, float]:
        """The random levels of `means`: what a random ranking of the same features scores."""
        return self.means(random=True)

    def show(self, console=None) -> None:
        """Print a table: each metric's mean, its random level and which direction is better.

        Example:
            >>> result.show()                                 # doctest: +SKIP
        """
        from rich.console import Console
        from rich.table import Table

        from seqattr.evaluation.faithfulness import HIGHER_IS_BETTER

        settings = self.settings
        count = sum(len(steps) for steps in self.steps)
        title = (
            f"faithfulness of {settings.get('method', '?')} ({len(self)} example(s), {count} steps; "
            f"f = {settings.get('step_function', '?')}, removal = {settings.get('removal', '?')})"
        )
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("random", justify="right")
        table.add_column("better")
        means, random = self.means(), self.random_means()
        for metric in self.metrics:
            table.add_row(
                metric,
                f"{means[metric]:.4f}",
                f"{random[metric]:.4f}",
                "higher" if HIGHER_IS_BETTER[metric] else "lower",
            )
        (console or Console()).print(table)

    def to_dataframe(self):
        """Long-format pandas frame: one row per (example, step, metric) with ``value`` and ``random``.

        Columns: ``example``, ``step``, ``step_token``, ``step_value`` (``f_t(x)``), ``metric``, ``value``,
        ``random``.

        Example:
            >>> df = result.to_dataframe()                     # doctest: +SKIP
            >>> df.groupby("metric")[["value", "random"]].mean()   # doctest: +SKIP
        """
        import pandas as pd

        columns: dict[str, list] = {
            name: [] for name in ("example", "step", "step_token", "step_value", "metric", "value", "random")
        }
        for example, (values, random, clean, steps) in enumerate(
            zip(self.per_step, self.random_per_step, self.step_values, self.steps, strict=True)
        ):
            for metric in self.metrics:
                for step, token in enumerate(steps):
                    columns["example"].append(example)
                    columns["step"].append(step)
                    columns["step_token"].append(token)
                    columns["step_value"].append(float(clean[step]))
                    columns["metric"].append(metric)
                    columns["value"].append(float(values[metric][step]))
                    columns["random"].append(float(random[metric][step]))
        return pd.DataFrame(columns)

    def save(self, path: str | Path) -> None:
        """Write the result to a JSON file; `EvaluationResult.load` reads it back exactly."""
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metrics": self.metrics,
            "settings": self.settings,
            "examples": [
                {
                    "steps": steps,
                    "step_values": tensor_to_json(clean),
                    "per_step": {metric: tensor_to_json(v) for metric, v in values.items()},
                    "random_per_step": {metric: tensor_to_json(v) for metric, v in random.items()},
                }
                for values, random, clean, steps in zip(
                    self.per_step, self.random_per_step, self.step_values, self.steps, strict=True
                )
            ],
        }
        Path(path).write_text(json.dumps(payload, default=str))

    @classmethod
    def load(cls, path: str | Path) -> EvaluationResult:
        """Read a result written by `save`.

        Example:
            >>> result.save(tmp / "eval.json")                # doctest: +SKIP
            >>> EvaluationResult.load(tmp / "eval.json").means() == result.means()   # doctest: +SKIP
            True
        """
        try:
            payload = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a JSON file: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a seqattr evaluation file (no 'format': '{FORMAT}' field)")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {payload.get('format_version')}, but this seqattr reads version "
                f"{FORMAT_VERSION}; load it with the seqattr version that wrote it"
            )
        examples = payload["examples"]
        return cls(
            metrics=payload["metrics"],
            per_step=[{m: tensor_from_json(v) for m, v in e["per_step"].items()} for e in examples],
            random_per_step=[
                {m: tensor_from_json(v) for m, v in e["random_per_step"].items()} for e in examples
            ],
            step_values=[tensor_from_json(e["step_values"]) for e in examples],
            steps=[e["steps"] for e in examples],
            settings=payload["settings"],
        )

    def __repr__(self) -> str:
        means = ", ".join(f"{metric}={value:.4g}" for metric, value in self.means().items())
        return f"EvaluationResult({len(self)} example(s), {means})"
