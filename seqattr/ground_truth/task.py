"""A ground-truth task: a tiny model trained on data whose dependencies are known, with gold links per step.

`TaskRecipe` says how to make the task (its vocabulary, its data sampler, its model and its training);
`Task` is the trained result: the model and tokenizer, a fixed evaluation set with its gold alignments, and
the model's accuracy on that set (measured when the task is loaded, so the gold links describe what the
model really does).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seqattr.metrics.gold import GoldAlignment


@dataclass(frozen=True)
class TaskExample:
    """One example: the input, the forced output (decoder-only: prompt + continuation), the gold links.

    ``gold`` counts positions as `seqattr.data.alignment` does: 0-based source words (the prompt's, for
    decoder-only tasks) and explained steps, special tokens left out.
    """

    input_text: str
    target_text: str
    gold: GoldAlignment


@dataclass(frozen=True)
class TaskRecipe:
    """How a task's data, model and training are made (everything that decides the trained weights)."""

    name: str
    description: str
    """What the task is and which positions each step depends on (shown by `list_tasks`)."""
    words: tuple[str, ...]
    """The vocabulary, after the special tokens."""
    sample: Callable[[random.Random], TaskExample]
    """Draws one example; training and evaluation use separate seeds."""
    model_class: str
    """A transformers class: BartForConditionalGeneration, GPT2LMHeadModel, LlamaForCausalLM."""
    config: dict[str, Any]
    """The model's config arguments, beside the vocabulary size and special token ids."""
    steps: int
    batch_size: int = 64
    learning_rate: float = 3e-3
    eval_size: int = 40
    train_seed: int = 0
    eval_seed: int = 1234

    @property
    def encoder_decoder(self) -> bool:
        return self.model_class == "BartForConditionalGeneration"

    def fingerprint(self) -> str:
        """What changes the trained model, as text: the cache folder's name hashes it."""
        fields = {
            k: getattr(self, k) for k in ("words", "model_class", "steps", "batch_size", "learning_rate")
        }
        return repr(
            sorted({**fields, "config": sorted(self.config.items()), "seed": self.train_seed}.items())
        )

    def eval_examples(self) -> list[TaskExample]:
        rng = random.Random(self.eval_seed)
        return [self.sample(rng) for _ in range(self.eval_size)]


@dataclass(eq=False)
class Task:
    """A trained ground-truth task (see `seqattr.ground_truth.load_task`).

    Example:
        >>> from seqattr.ground_truth import load_task
        >>> task = load_task("dictionary_translation")      # doctest: +SKIP
        >>> example = task.examples[0]                     # doctest: +SKIP
        >>> example.input_text, example.target_text, example.gold.to_text()  # doctest: +SKIP
        ('s1 s0 s1 s9 s0 s10', 't2 t9 t0 t9 t11 t2', '1-2 2-1 3-4 4-3 5-6 6-5')
    """

    recipe: TaskRecipe
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    examples: list[TaskExample]
    accuracy: float
    """Share of the evaluation set's answer tokens the model predicts (greedy, teacher-forced)."""
    folder: str | None = None
    """Where the trained model is cached."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def gold(self) -> list[GoldAlignment]:
        """The gold alignment of every evaluation example, in order."""
        return [example.gold for example in self.examples]

    def attribution_model(self, method: str = "saliency", **options: Any):
        """The task's model bound to an attribution method: ``seqattr.load_model(model, method, ...)``."""
        from seqattr.models.loading import load_model

        return load_model(self.model, method, tokenizer=self.tokenizer, **options)

    def attribute(self, method: str = "saliency", examples: Sequence[TaskExample] | None = None, **options):
        """Attribute the evaluation examples (or ``examples``) with their forced outputs.

        ``options`` go to ``attribute`` (method options such as ``n_steps``, or ``batch_size``).
        """
        examples = list(self.examples if examples is None else examples)
        model = self.attribution_model(method)
        return model.attribute(
            [e.input_text for e in examples],
            [e.target_text for e in examples],
            show_progress=False,
            **options,
        )

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {type(self.model).__name__}, accuracy={self.accuracy:.4f})"
