"""Ground-truth tasks: tiny models trained on data whose dependencies are exactly known, with gold links.

A plausibility check of attribution methods against a truth that is the model's own behaviour: each task
trains a tiny transformers model (deterministically, on the CPU, once per machine: it is cached) to at least
99% accuracy, and knows for every step which input position the answer comes from
(`seqattr.ground_truth.tasks`).
`alignment_scores` measures how well a method's ``alignments()`` recover those links.

Example:
    >>> list_tasks()
    ['dictionary_translation', 'indexed_retrieval', 'copying']
    >>> task = load_task("copying")                                            # doctest: +SKIP
    >>> alignment_scores(task, "occlusion")                                    # doctest: +SKIP
    AlignmentScores(task='copying', method='occlusion', accuracy=1.0, aer=0.0, steps=240)
"""

from seqattr.ground_truth.scoring import AlignmentScores, alignment_scores
from seqattr.ground_truth.task import Task, TaskExample, TaskRecipe
from seqattr.ground_truth.tasks import TASKS
from seqattr.ground_truth.training import accuracy, load_or_train


def list_tasks() -> list[str]:
    """The names of the ground-truth tasks."""
    return list(TASKS)


def load_task(name: str, retrain: bool = False) -> Task:
    """The trained task ``name``: from the cache, or trained first (under a minute; ``retrain`` forces it).

    Its ``accuracy`` is measured on its evaluation set as it loads.
    """
    if name not in TASKS:
        raise ValueError(f"unknown ground-truth task {name!r}; the tasks are {', '.join(TASKS)}")
    recipe = TASKS[name]
    model, tokenizer, folder = load_or_train(recipe, retrain=retrain)
    examples = recipe.eval_examples()
    return Task(recipe, model, tokenizer, examples, accuracy(recipe, model, tokenizer, examples), str(folder))


__all__ = [
    "TASKS",
    "AlignmentScores",
    "Task",
    "TaskExample",
    "TaskRecipe",
    "alignment_scores",
    "list_tasks",
    "load_task",
]
