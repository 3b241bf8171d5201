"""Ground-truth tasks: each tiny model learns its task (>= 99%), and methods recover its gold links.

The trained models are cached (``$SEQATTR_CACHE``, else ``~/.cache/seqattr``): the first run trains the three
tasks (under a minute each), later runs load them.
"""

from __future__ import annotations

import pytest
import torch

from seqattr.ground_truth import TASKS, alignment_scores, list_tasks, load_task
from seqattr.ground_truth.tasks import DICTIONARY, swap_neighbours
from seqattr.ground_truth.training import train

# For each task, a gradient and a perturbation method whose argmax alignments reach >= 0.9 alignment
# accuracy (measured values in docs/ground_truth.md).
RECOVERING = {
    "dictionary_translation": ("saliency", "occlusion"),
    "indexed_retrieval": ("saliency", "occlusion"),
    "copying": ("saliency", "occlusion"),
}


@pytest.fixture(scope="module", params=list_tasks())
def task(request):
    return load_task(request.param)


def test_every_task_has_recovering_methods():
    assert set(RECOVERING) == set(TASKS)


def test_task_model_reaches_99_percent(task):
    assert task.accuracy >= 0.99, f"{task.name}: accuracy {task.accuracy:.4f}"


def test_gold_links_follow_the_data(task):
    for example in task.examples:
        prompt = example.input_text.split()
        answer = example.target_text.split()
        if task.recipe.encoder_decoder:
            steps = answer
        else:
            steps = answer[len(prompt) :]
        for i, j in example.gold.sure:
            if task.name == "dictionary_translation":
                assert i == swap_neighbours(j, len(prompt)) and steps[j] == DICTIONARY[prompt[i]]
            else:  # retrieval and copying: the answer token is the linked prompt token
                assert steps[j] == prompt[i]
        assert {j for _, j in example.gold.possible} == set(range(len(steps)))  # every step has gold


def test_methods_recover_gold_links(task):
    for method in RECOVERING[task.name]:
        scores = alignment_scores(task, method)
        assert scores.accuracy >= 0.9, scores


def test_alignments_index_the_tasks_words(task):
    out = task.attribute("saliency", examples=task.examples[:2])
    for example, alignment in zip(task.examples[:2], out.alignments(), strict=True):
        prompt = example.input_text.split()
        assert alignment.source == prompt
        assert len(alignment.target) == len({j for _, j in example.gold.possible})


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown ground-truth task 'nope'; the tasks are dictionary"):
        load_task("nope")


@pytest.mark.slow
def test_training_is_deterministic():
    cached = load_task("copying").model
    model, _ = train(TASKS["copying"])
    for (name, mine), theirs in zip(model.state_dict().items(), cached.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
