"""Faithfulness evaluation of classifiers (issue 14): `AttributionModel.evaluate` on sequence classifiers
(one step: the label; pairs; multi-label), token classifiers (one step per token: its tag) and extractive QA
(two steps: the span's start and end). Every metric is checked against a direct computation that replaces
(or deletes) token ids by hand and runs the Hugging Face classifier itself; a classifier whose logit depends
on one known token orders the rankings as it must; fused == one step at a time; a dataset run of a
classifier reads back as direct `attribute` calls."""

from __future__ import annotations

import copy
import dataclasses
import functools

import datasets
import numpy as np
import pytest
import torch
from metric_definitions import direct_metrics
from test_classifiers import KNOWN, hand_built_classifier

import seqattr
from exact import assert_close, assert_sequences_close
from seqattr.data.attribution import AttributionOutput
from seqattr.testing import tiny_classifier, tiny_model, tiny_task_model

pytestmark = pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")  # n_steps=8 on purpose

FRACTIONS = (0.2, 0.5, 1.0)
SEED = 5


@functools.cache
def _float64(kind: str, architecture: str):
    """A float64 copy of a zoo classifier (tests/exact.py: float64 tells rounding from real errors)."""
    if kind == "sequence":
        hf_model, tokenizer = tiny_classifier(architecture)
    else:
        hf_model, tokenizer = tiny_task_model(kind, architecture)
    return copy.deepcopy(hf_model).double(), tokenizer


def classifier(
    kind: str, architecture: str, method: str = "input_x_gradient", **options
) -> seqattr.AttributionModel:
    hf_model, tokenizer = _float64(kind, architecture)
    return seqattr.load_model(hf_model, method, tokenizer=tokenizer, **options)


# --- the direct computation ---------------------------------------------------------------------------------


def _token_types(model, ids: list[int]) -> list[int]:
    """BERT's segments, as its tokenizer makes them: 1 after the first [SEP] (a pair's second text)."""
    sep = model.tokenizer.sep_token_id
    return [int(sep in ids[:p]) for p in range(len(ids))]


def _probability(model, seq, step: int, removed: set[int], removal: str, baseline_id: int) -> float:
    """The explained label's probability at ``step`` with the source tokens at ``removed`` replaced by
    ``baseline_id`` or deleted, from token ids through the Hugging Face classifier."""
    if removal == "delete":
        ids = [t for p, t in enumerate(seq.source_ids) if p not in removed]
    else:
        ids = [baseline_id if p in removed else t for p, t in enumerate(seq.source_ids)]
    kwargs = {"input_ids": torch.tensor([ids])}
    if "token_type_ids" in model.tokenizer.model_input_names:
        kwargs["token_type_ids"] = torch.tensor([_token_types(model, ids)])
    label = seq.target_ids[seq.attr_pos_start + step]
    with torch.no_grad():
        output = model.model(**kwargs)
    task = model.family.task
    if task == "question-answering":
        logits = (output.start_logits, output.end_logits)[step][0]
    elif task == "token-classification":
        logits = output.logits[0, step]  # step j tags token j
    else:
        logits = output.logits[0]
    if model.family.multi_label:
        return float(torch.sigmoid(logits[label]))
    return float(torch.softmax(logits, -1)[label])


def _features(model, seq, step: int) -> list[int]:
    """The source positions step ``step`` sees, special tokens left out ([CLS], [SEP] stay in place)."""
    special = set(model.tokenizer.all_special_ids)
    visible = [p for p, t in enumerate(seq.source_ids) if t not in special]
    if model.family.task == "token-classification" and "decoder" in model.family.name:
        visible = [p for p in visible if p <= step]  # a causal tagger's token j sees tokens 0..j
    return visible


def _direct_metrics(model, seq, step, scores, removal, baseline_id, soft_draws) -> dict[str, float]:
    """Every metric of one step for one ranking (``scores``, one per feature), by the definitions."""
    features = _features(model, seq, step)

    def f(removed_indices) -> float:
        return _probability(model, seq, step, {features[i] for i in removed_indices}, removal, baseline_id)

    return direct_metrics(f, len(features), scores, FRACTIONS, soft_draws)


def _check_against_direct(model, out, result, removal: str, baseline_id: int) -> None:
    for index, seq in enumerate(out):
        for step in range(seq.num_steps):
            features = _features(model, seq, step)
            # The documented draws: one stream per (seed, example, step position): random scores, then the
            # soft draws of the attribution, then those of the random ranking.
            generator = np.random.default_rng([SEED, index, seq.attr_pos_start + step])
            random_scores = list(generator.random(len(features)))
            soft_attribution = generator.random((2, len(features)))
            soft_random = generator.random((2, len(features)))
            scores = [float(seq.source_attributions[p, step]) for p in features]
            expected = _direct_metrics(model, seq, step, scores, removal, baseline_id, soft_attribution)
            chance = _direct_metrics(model, seq, step, random_scores, removal, baseline_id, soft_random)
            for metric in seqattr.evaluation.METRICS:
                for values, reference in ((result.per_step, expected), (result.random_per_step, chance)):
                    assert_close(
                        values[index][metric][step],
                        torch.tensor(reference[metric], dtype=torch.float64),
                        what=f"example {index} step {step} {metric}",
                    )
            assert_close(
                result.step_values[index][step],
                torch.tensor(
                    _probability(model, seq, step, set(), removal, baseline_id), dtype=torch.float64
                ),
                what="f(x)",
            )


SEQUENCE_CASES = [
    # (architecture, inputs, removal): two texts (the random stream is per example), a pair (segments kept),
    # a decoder-based classifier under deletion (it pools its last token: rows of one length per batch).
    ("bert", ["the movie was wonderful.", "my day was sad and the music was boring."], "replace"),
    ("bert", [("the movie was wonderful.", "my day was sad.")], "replace"),
    ("roberta", ["the weather was nice."], "delete"),
    ("llama", ["the movie was wonderful.", "my day was sad and boring."], "delete"),
]


@pytest.mark.parametrize(("architecture", "texts", "removal"), SEQUENCE_CASES)
def test_sequence_classification_metrics_equal_a_direct_computation(architecture, texts, removal):
    model = classifier("sequence", architecture)
    out = model.attribute(texts, show_progress=False)
    baseline_id = model.tokenizer.unk_token_id
    result = model.evaluate(out, fractions=FRACTIONS, baseline=baseline_id, removal=removal, seed=SEED)
    assert [len(values["comprehensiveness"]) for values in result.per_step] == [1] * len(texts)
    _check_against_direct(model, out, result, removal, baseline_id)


def test_a_pair_keeps_both_segments_and_its_separators():
    model = classifier("sequence", "bert")
    out = model.attribute(("the movie was wonderful.", "my day was sad."), show_progress=False)
    seq = out[0]
    features = _features(model, seq, 0)
    # The separators stay: the pair's second text is still segment 1 in every perturbed row (the direct
    # computation above reads the segments from the perturbed ids, so a moved [SEP] would show there).
    assert [seq.source[p] for p in range(len(seq.source)) if p not in features] == ["[CLS]", "[SEP]", "[SEP]"]
    result = model.evaluate(out, metrics=["deletion_auc"], baseline=model.tokenizer.unk_token_id)
    assert not result.per_step[0]["deletion_auc"].isnan().any()


def test_multi_label_metrics_read_the_sigmoid_of_each_label():
    model = classifier("multi-label-classification", "bert")
    out = model.attribute("the weather was nice.", show_progress=False)
    assert out[0].steps == ["positive", "weather"]  # two steps, one per predicted label
    baseline_id = model.tokenizer.unk_token_id
    result = model.evaluate(out, fractions=FRACTIONS, baseline=baseline_id, seed=SEED)
    _check_against_direct(model, out, result, "replace", baseline_id)


@pytest.mark.parametrize("architecture", ["bert", "qwen2"])
def test_token_classification_metrics_equal_a_direct_computation(architecture):
    model = classifier("token-classification", architecture)
    out = model.attribute("bob went to london.", show_progress=False)
    seq = out[0]
    assert seq.num_steps == len(seq.source_ids)  # one step per token
    baseline_id = model.tokenizer.unk_token_id or 0
    result = model.evaluate(out, fractions=FRACTIONS, baseline=baseline_id, seed=SEED)
    _check_against_direct(model, out, result, "replace", baseline_id)
    if architecture == "qwen2":
        # A causal tagger's first token sees itself only: one feature, so removing it is every curve point.
        assert [len(_features(model, seq, step)) for step in range(seq.num_steps)] == list(
            range(1, seq.num_steps + 1)
        )


def test_question_answering_metrics_equal_a_direct_computation():
    model = classifier("question-answering", "bert")
    out = model.attribute(question="where does bob live?", context="bob went to london.", show_progress=False)
    seq = out[0]
    assert seq.num_steps == 2 and seq.steps[0].startswith("london")
    baseline_id = model.tokenizer.unk_token_id
    result = model.evaluate(out, fractions=FRACTIONS, baseline=baseline_id, seed=SEED)
    _check_against_direct(model, out, result, "replace", baseline_id)


# --- fused: one row gives every step's score ----------------------------------------------------------------


def _rows_seen(model, call) -> tuple[object, int]:
    """``call()``'s result and how many rows the Hugging Face model ran."""
    rows = []

    def count(module, args, kwargs):
        rows.append((kwargs.get("inputs_embeds", kwargs.get("input_ids"))).shape[0])

    handle = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        return call(), sum(rows)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("kind", "inputs"),
    [
        ("token-classification", {"input_texts": "bob went to london."}),
        ("question-answering", {"question": "who is in paris?", "context": "alice lives in paris."}),
    ],
)
def test_fused_evaluation_equals_one_step_at_a_time_and_runs_fewer_rows(kind, inputs):
    model = classifier(kind, "bert")
    out = model.attribute(**inputs, show_progress=False)
    seq = out[0]
    settings = {"metrics": ["comprehensiveness", "sufficiency"], "fractions": FRACTIONS}
    fused, fused_rows = _rows_seen(model, lambda: model.evaluate(out, **settings))
    alone_rows = 0
    for step in range(seq.num_steps):
        alone, rows = _rows_seen(
            model, lambda step=step: model.evaluate(AttributionOutput([seq[step]], out.info), **settings)
        )
        alone_rows += rows
        for metric in fused.metrics:
            for mine, theirs in (
                (fused.per_step, alone.per_step),
                (fused.random_per_step, alone.random_per_step),
            ):
                assert_close(
                    mine[0][metric][step : step + 1], theirs[0][metric], what=f"step {step} {metric}"
                )
    # Every step's perturbed rows run together, each distinct row once (the unperturbed one is shared).
    assert fused_rows <= alone_rows - (seq.num_steps - 1)


# --- a classifier whose logit depends on one known token ----------------------------------------------------


def test_removing_the_known_token_drops_the_probability_most():
    hf_model, tokenizer = hand_built_classifier()
    model = seqattr.load_model(hf_model, "occlusion", tokenizer=tokenizer)
    out = model.attribute(f"the movie was {KNOWN} and the music was cold", "positive", show_progress=False)
    seq = out[0]
    known = seq.source.index("▁" + KNOWN)
    right = torch.zeros_like(seq.source_attributions)
    right[known] = 1.0
    settings = {"metrics": ["comprehensiveness", "sufficiency", "deletion_auc"], "fractions": (0.1, 0.3)}
    best = model.evaluate(
        AttributionOutput([dataclasses.replace(seq, source_attributions=right)], out.info), **settings
    )
    worst = model.evaluate(
        AttributionOutput([dataclasses.replace(seq, source_attributions=-right)], out.info), **settings
    )
    # By hand: the known token's embedding zeroed (the "zeros" baseline) leaves both logits at 0: p = 1/2.
    ids = torch.tensor([seq.source_ids])
    with torch.no_grad():
        embeds = hf_model.get_input_embeddings()(ids)
        clean = float(torch.softmax(hf_model(inputs_embeds=embeds).logits[0], -1)[1])
        embeds[0, known] = 0.0
        without = float(torch.softmax(hf_model(inputs_embeds=embeds).logits[0], -1)[1])
    assert clean > 0.55 and without == pytest.approx(0.5, abs=1e-6)
    drop = clean - without
    # Ranked first, the token goes at every fraction: the largest drop; ranked last, it stays (k <= 0.3).
    # Other tokens reach the logit only through the last position's norm (its huge epsilon makes that a
    # change of ~1e-5): "nothing" below is a thousandth of the drop.
    nothing = 1e-3 * drop
    assert best.per_step[0]["comprehensiveness"].item() == pytest.approx(drop, abs=nothing)
    assert abs(worst.per_step[0]["comprehensiveness"].item()) < nothing
    assert abs(best.per_step[0]["sufficiency"].item()) < nothing
    assert worst.per_step[0]["sufficiency"].item() == pytest.approx(drop, abs=nothing)
    assert best.means()["deletion_auc"] < worst.means()["deletion_auc"] - 0.1
    assert best.random_means()["comprehensiveness"] < best.means()["comprehensiveness"] - 1e-3
    # Occlusion finds the token (removing it is the only change): its own attribution scores the maximum.
    found = model.evaluate(out, **settings)
    assert found.per_step[0]["comprehensiveness"].item() == pytest.approx(drop, abs=nothing)


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "inputs", "reason"),
    [
        ("token-classification", {"input_texts": "bob went to london."}, "each step explains the tag"),
        (
            "question-answering",
            {"question": "where does bob live?", "context": "bob went to london."},
            "the explained labels are input positions",
        ),
    ],
)
def test_deleting_tokens_is_refused_where_steps_are_input_positions(kind, inputs, reason):
    model = classifier(kind, "bert", "saliency")
    out = model.attribute(**inputs, show_progress=False)
    with pytest.raises(
        ValueError, match=f"removal='delete' cannot evaluate a {kind} model: {reason}.*'replace'"
    ):
        model.evaluate(out, removal="delete")


def test_another_classifiers_output_is_refused_naming_both_kinds():
    tagger = classifier("token-classification", "bert", "saliency")
    sentiment = classifier("sequence", "bert", "saliency")
    out = tagger.attribute("bob went to london.", show_progress=False)
    with pytest.raises(
        ValueError, match="made with a token-classification model.*is a sequence-classifier model"
    ):
        sentiment.evaluate(out)
    hf_model, tokenizer = tiny_model("gpt2")
    generative = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="made with a sequence-classification model.*decoder-only"):
        generative.evaluate(sentiment.attribute("a good film", show_progress=False))


# --- dataset runs -------------------------------------------------------------------------------------------


def _dataset(kind: str, tokenizer) -> tuple[list[str], list[str]]:
    """A few texts of ``kind``'s toy task and a target per text, as a dataset's column holds it: a label
    name; a tagger's tags (one per token), a multi-label classifier's labels, space-separated."""
    if kind == "sequence":
        return ["the movie was wonderful.", "my day was sad and the music was boring."], [
            "negative",
            "negative",
        ]
    if kind == "multi-label-classification":
        return ["the weather was nice.", "my day was sad."], ["weather", "negative weather"]
    texts = ["bob went to london.", "alice lives in new york."]
    tags = []
    for text in texts:
        tokens = tokenizer.tokenize(text)
        tags.append(" ".join(["B-PER", *["O"] * (len(tokens) - 2), "B-LOC"]))  # not all the predicted ones
    return texts, tags


@pytest.mark.parametrize(
    ("kind", "target_column"),
    [
        ("sequence", None),
        ("sequence", "target"),
        ("token-classification", None),
        ("token-classification", "target"),
        ("multi-label-classification", "target"),
    ],
)
def test_a_dataset_run_of_a_classifier_reads_back_as_direct_calls(tmp_path, kind, target_column):
    model = classifier(kind, "bert", "integrated_gradients", n_steps=8)
    texts, targets = _dataset(kind, model.tokenizer)
    data = datasets.Dataset.from_dict({"text": texts, "target": targets})
    run = model.attribute_dataset(
        data,
        output_dir=tmp_path / "run",
        target_column=target_column,
        batch_size=2,
        show_progress=False,
        step_scores=["probability"],
    )
    assert run.errors == [] and run.info["task"] == model.family.task
    assert run.info["method_options"]["n_steps"] == 8
    rows = list(run)
    assert [row for row, _ in rows] == list(range(len(texts)))
    for row, seq in rows:
        # attribute()'s own form of one text's target: a label, or a list of tags / labels.
        target = None
        if target_column is not None:
            target = targets[row] if kind == "sequence" else targets[row].split()
        direct = model.attribute(texts[row], target, step_scores=["probability"], show_progress=False)
        if kind == "token-classification" and target is not None:
            assert seq.steps[1:-1] == target  # the words' tags as given; [CLS] and [SEP] keep their own
        elif target is not None:
            assert seq.steps == ([target] if kind == "sequence" else target)
        assert_sequences_close(seq, direct[0])
