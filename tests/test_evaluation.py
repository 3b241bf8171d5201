"""Faithfulness evaluation (`AttributionModel.evaluate`): every metric against a direct computation that runs
the perturbed token ids through the Hugging Face model by hand, fused == one step at a time, a model whose
steps depend on one known token, bad input, saving, frames and the command line."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from metric_definitions import direct_metrics

import seqattr
from exact import assert_close, exact_model
from seqattr.cli import main
from seqattr.data.attribution import AttributionOutput
from seqattr.testing import tiny_model

PROMPT = "the cat sat on the mat"
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _output(model: seqattr.AttributionModel, method: str = "saliency", **kwargs) -> AttributionOutput:
    return model.attribute(
        PROMPT, method=method, generation_args={"max_new_tokens": 3}, show_progress=False, **kwargs
    )


# --- the direct computation ---------------------------------------------------------------------------------


def _probability(model, seq, step: int, removed: set, removal: str, baseline_id: int | None) -> float:
    """``f_t`` (the target token's probability) with the ``(side, position)`` tokens in ``removed`` replaced
    by ``baseline_id`` or deleted, from token ids through the Hugging Face model."""
    position = seq.attr_pos_start + step

    def perturb(ids, side):
        if removal == "delete":
            return [t for p, t in enumerate(ids) if (side, p) not in removed]
        return [baseline_id if (side, p) in removed else t for p, t in enumerate(ids)]

    prefix = perturb(seq.target_ids[:position], "target")
    with torch.no_grad():
        if model.is_encoder_decoder:
            logits = model.model(
                input_ids=torch.tensor([perturb(seq.source_ids, "source")]),
                decoder_input_ids=torch.tensor([prefix]),
            ).logits[0, -1]
        else:
            if not prefix:
                return math.nan
            logits = model.model(input_ids=torch.tensor([prefix])).logits[0, -1]
    return float(torch.softmax(logits.double(), -1)[seq.target_ids[position]])


def _features(model, seq, step: int) -> list[tuple[str, int]]:
    """The tokens step ``step`` sees that the attribution scores, special tokens left out (source first)."""
    special = set(model.tokenizer.all_special_ids)
    features = []
    if model.is_encoder_decoder:
        features += [("source", p) for p, t in enumerate(seq.source_ids) if t not in special]
    if seq.target_attributions is not None:
        position = seq.attr_pos_start + step
        features += [("target", p) for p, t in enumerate(seq.target_ids[:position]) if t not in special]
    return features


def _score(seq, feature, step) -> float:
    side, position = feature
    values = seq.source_attributions if side == "source" else seq.target_attributions
    return float(values[position, step])


def _direct_metrics(
    model, seq, step, scores, fractions, removal, baseline_id, soft_draws
) -> dict[str, float]:
    """Every metric of one step for one ranking (``scores``, one per feature), by the definitions."""
    features = _features(model, seq, step)

    def f(removed_indices) -> float:
        return _probability(model, seq, step, {features[i] for i in removed_indices}, removal, baseline_id)

    return direct_metrics(f, len(features), scores, fractions, soft_draws)


CASES = [
    ("gpt2", "replace"),
    ("llama", "replace"),
    ("llama", "delete"),  # llama has a BOS token, which is never deleted: every prefix stays runnable
    ("t5", "replace"),
    ("bart", "delete"),
]


@pytest.mark.parametrize(("architecture", "removal"), CASES)
def test_every_metric_equals_a_direct_computation(architecture, removal):
    model = exact_model(architecture)
    kwargs = {"attribute_target": True} if model.is_encoder_decoder else {}
    out = _output(model, "input_x_gradient", attributed_fn="probability", **kwargs)
    seq = out[0]
    baseline_id = model.tokenizer.unk_token_id
    result = model.evaluate(out, fractions=FRACTIONS, baseline=baseline_id, removal=removal, seed=3)
    for step in range(seq.num_steps):
        features = _features(model, seq, step)
        # The documented draws: one stream per (seed, example, step position): random scores, then the soft
        # draws of the attribution, then those of the random ranking.
        generator = np.random.default_rng([3, 0, seq.attr_pos_start + step])
        random_scores = list(generator.random(len(features)))
        soft_attribution, soft_random = (
            generator.random((2, len(features))),
            generator.random((2, len(features))),
        )
        scores = [_score(seq, feature, step) for feature in features]
        expected = _direct_metrics(
            model, seq, step, scores, FRACTIONS, removal, baseline_id, soft_attribution
        )
        chance = _direct_metrics(
            model, seq, step, random_scores, FRACTIONS, removal, baseline_id, soft_random
        )
        for metric in seqattr.evaluation.METRICS:
            for values, reference in ((result.per_step, expected), (result.random_per_step, chance)):
                actual = values[0][metric][step]
                assert_close(actual, torch.tensor(reference[metric], dtype=torch.float64), what=metric)
        assert_close(
            result.step_values[0][step], torch.tensor(_probability(model, seq, step, set(), removal, 0))
        )


def test_signed_and_abs_rankings_differ_only_where_a_negative_score_leads():
    model = exact_model("gpt2")
    out = _output(model, "input_x_gradient")
    signed = model.evaluate(out, metrics=["comprehensiveness"], by="signed")
    magnitude = model.evaluate(out, metrics=["comprehensiveness"], by="abs")
    flipped = dataclasses.replace(out[0], target_attributions=-out[0].target_attributions)
    by_abs_of_negated = model.evaluate(
        AttributionOutput([flipped], out.info), metrics=["comprehensiveness"], by="abs"
    )
    # |s| ranks s and -s alike; the signed ranking of input x gradient (mixed signs) is another one.
    assert torch.equal(
        magnitude.per_step[0]["comprehensiveness"], by_abs_of_negated.per_step[0]["comprehensiveness"]
    )
    assert not torch.equal(
        signed.per_step[0]["comprehensiveness"], magnitude.per_step[0]["comprehensiveness"]
    )


@pytest.mark.parametrize(
    ("architecture", "removal"), [("qwen2", "replace"), ("t5", "delete"), ("gpt2", "delete")]
)
def test_fused_evaluation_equals_one_step_at_a_time(architecture, removal):
    model = exact_model(architecture)
    out = _output(model)
    fused = model.evaluate(out, removal=removal)
    seq = out[0]
    for step in range(seq.num_steps):
        alone = model.evaluate(AttributionOutput([seq[step]], out.info), removal=removal)
        for metric in fused.metrics:
            for mine, theirs in (
                (fused.per_step, alone.per_step),
                (fused.random_per_step, alone.random_per_step),
            ):
                assert_close(
                    mine[0][metric][step : step + 1], theirs[0][metric], what=f"step {step} {metric}"
                )


def test_without_the_random_ranking_the_method_values_are_unchanged():
    # A second method on the same output skips the random level (it is the same); the soft metrics' draws
    # must not shift when the random ranking's rows are left out.
    model = exact_model("gpt2")
    out = _output(model)
    both = model.evaluate(out, seed=3)
    alone = model.evaluate(out, seed=3, random_ranking=False)
    for metric in both.metrics:
        assert_close(alone.per_step[0][metric], both.per_step[0][metric], what=metric)
        assert alone.random_per_step[0][metric].isnan().all(), metric


def test_curves_of_a_negative_step_function_are_nan_with_a_warning():
    # A log-probability is negative: a share of it would flip the deletion curve (a drop reads as a rise).
    model = exact_model("gpt2")
    out = _output(model, attributed_fn="logprob")
    with pytest.warns(UserWarning, match=r"deletion_auc.* not positive at 3 of 3 steps.*'probability'"):
        result = model.evaluate(out, metrics=["comprehensiveness", "deletion_auc", "abpc"])
    assert result.per_step[0]["deletion_auc"].isnan().all() and result.per_step[0]["abpc"].isnan().all()
    assert not result.per_step[0]["comprehensiveness"].isnan().any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a difference holds for any step function: nothing to warn about
        model.evaluate(out, metrics=["comprehensiveness", "sufficiency"])


def test_step_function_measures_the_rankings_with_another_quantity():
    # An output attributed on the log-probability (or a contrast, or ContextCite's log-odds) ranked by its own
    # scores, measured on the probability: every metric equals the direct computation on the probability.
    model = exact_model("gpt2")
    out = _output(model, "input_x_gradient", attributed_fn="logprob")
    seq, baseline_id = out[0], model.tokenizer.unk_token_id
    settings = {"fractions": FRACTIONS, "baseline": baseline_id, "seed": 3, "random_ranking": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the probability is positive: the curves are defined
        result = model.evaluate(out, step_function="probability", **settings)
    assert result.settings["step_function"] == "probability"
    for step in range(seq.num_steps):
        features = _features(model, seq, step)
        generator = np.random.default_rng([3, 0, seq.attr_pos_start + step])
        generator.random(len(features))  # the random ranking's scores come first in the stream
        soft = generator.random((2, len(features)))
        scores = [_score(seq, feature, step) for feature in features]
        expected = _direct_metrics(model, seq, step, scores, FRACTIONS, "replace", baseline_id, soft)
        for metric in seqattr.evaluation.METRICS:
            reference = torch.tensor(expected[metric], dtype=torch.float64)
            assert_close(result.per_step[0][metric][step], reference, what=metric)
    # A contrastive output's ranking can be measured the same way; a contrastive measure cannot (no contrast).
    contrastive = AttributionOutput(
        out.sequence_attributions, dict(out.info, contrast={"contrast_targets": ["x"]})
    )
    again = model.evaluate(contrastive, step_function="probability", **settings)
    assert again.means() == pytest.approx(result.means(), nan_ok=True)
    with pytest.raises(ValueError, match="'contrast_prob' reads a contrast.*step_function='probability'"):
        model.evaluate(out, step_function="contrast_prob")
    with pytest.raises(ValueError, match="unknown step function 'prob'; valid names: .*probability"):
        model.evaluate(out, step_function="prob")


def test_a_decoder_only_step_with_no_token_left_is_nan_under_delete():
    # GPT-2's tokenizer adds no BOS: deleting every prefix token leaves nothing to predict from.
    model = exact_model("gpt2")
    result = model.evaluate(_output(model), metrics=["deletion_auc", "comprehensiveness"], removal="delete")
    assert result.per_step[0]["deletion_auc"].isnan().all()
    assert not result.per_step[0]["comprehensiveness"].isnan().any()


# --- a model whose every step depends on one known token --------------------------------------------------


@pytest.fixture(scope="module")
def last_token_model() -> seqattr.AttributionModel:
    """GPT-2 with every attention and MLP output zeroed: the residual stream at position p is token p's and
    position p's embedding, so the step predicting position p depends on token p - 1 alone."""
    model, tokenizer = tiny_model("gpt2")
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
    return seqattr.load_model(model, "saliency", tokenizer=tokenizer)


def test_the_last_token_model_depends_on_that_token_only(last_token_model):
    seq = _output(last_token_model)[0]
    p = seq.attr_pos_start
    clean = _probability(last_token_model, seq, 0, set(), "replace", 0)
    assert (
        _probability(last_token_model, seq, 0, {("target", q) for q in range(p - 1)}, "replace", 0) == clean
    )
    assert _probability(last_token_model, seq, 0, {("target", p - 1)}, "replace", 0) != clean


def test_ranking_the_one_token_first_scores_maximal_comprehensiveness(last_token_model):
    model = last_token_model
    out = _output(model)
    seq = out[0]
    steps = torch.arange(seq.num_steps)
    right = torch.zeros_like(seq.target_attributions)
    right[seq.attr_pos_start - 1 + steps, steps] = 1.0  # step t: the token just before its prediction
    right = right.masked_fill(seq.target_attributions.isnan(), math.nan)
    wrong = -right  # the same token ranked last
    settings = {"metrics": ["comprehensiveness"], "fractions": (0.1, 0.3, 0.5), "baseline": "zeros"}
    best = model.evaluate(
        AttributionOutput([dataclasses.replace(seq, target_attributions=right)], out.info), **settings
    )
    worst = model.evaluate(
        AttributionOutput([dataclasses.replace(seq, target_attributions=wrong)], out.info), **settings
    )
    # The largest drop the step can show: its one token removed (every other removal changes nothing).
    embeds_only = model.model.get_input_embeddings()
    maximal = []
    for step in range(seq.num_steps):
        position = seq.attr_pos_start + step
        ids = torch.tensor([seq.target_ids[:position]])
        with torch.no_grad():
            embeds = embeds_only(ids)
            clean = torch.softmax(model.model(inputs_embeds=embeds).logits[0, -1], -1)[
                seq.target_ids[position]
            ]
            embeds[0, -1] = 0.0
            removed = torch.softmax(model.model(inputs_embeds=embeds).logits[0, -1], -1)[
                seq.target_ids[position]
            ]
        maximal.append(float(clean - removed))
    maximal = torch.tensor(maximal, dtype=torch.float64)
    assert (maximal > 0).all()
    assert_close(best.per_step[0]["comprehensiveness"], maximal, what="token ranked first")
    assert (worst.per_step[0]["comprehensiveness"].abs() < 1e-12).all()  # never removed at k <= 0.5
    assert best.random_means()["comprehensiveness"] < best.means()["comprehensiveness"] - 1e-3
    # An attribution method that finds the token (ablating it is the only change) scores the maximum too.
    ablation = model.evaluate(_output(model, "feature_ablation"), **settings)
    assert_close(ablation.per_step[0]["comprehensiveness"], maximal, what="feature ablation")


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_output():
    model = exact_model("gpt2")
    return model, _output(model)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"metrics": ["aopc"]}, "unknown metric 'aopc'; valid: 'comprehensiveness'"),
        ({"metrics": []}, "no metric to compute"),
        ({"fractions": (0.0, 0.5)}, "fractions must lie in (0, 1]"),
        ({"fractions": (1.5,)}, "fractions must lie in (0, 1]"),
        ({"fractions": (-0.1,)}, "fractions must lie in (0, 1]"),
        ({"fractions": ()}, "fractions is empty"),
        ({"removal": "drop"}, "unknown removal 'drop'"),
        ({"by": "magnitude"}, "unknown ranking 'magnitude'"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"baseline": "mean"}, "unknown baseline 'mean'"),
    ],
)
def test_bad_settings_are_refused(gpt2_output, settings, message):
    model, out = gpt2_output
    with pytest.raises(ValueError) as err:
        model.evaluate(out, **settings)
    assert message in str(err.value)


def test_an_output_of_another_model_is_refused(gpt2_output):
    _, out = gpt2_output
    with pytest.raises(ValueError, match="not this model's tokens"):
        exact_model("llama").evaluate(out)
    with pytest.raises(ValueError, match="made with a decoder-only model"):
        exact_model("t5").evaluate(out)


def test_outputs_that_cannot_be_evaluated_are_refused(gpt2_output):
    model, out = gpt2_output
    with pytest.raises(ValueError, match="aggregated .*evaluate the token-level output"):
        model.evaluate(out.aggregate("word"))
    raw = model.attribute(
        PROMPT, generation_args={"max_new_tokens": 2}, hidden_reduction=None, show_progress=False
    )
    with pytest.raises(ValueError, match="reduce them first"):
        model.evaluate(raw)
    contrastive = dict(out.info, contrast={"contrast_targets": ["x"]})
    with pytest.raises(ValueError, match="contrastive"):
        model.evaluate(AttributionOutput(out.sequence_attributions, contrastive))
    with pytest.raises(ValueError, match="not registered"):
        model.evaluate(AttributionOutput(out.sequence_attributions, dict(out.info, attributed_fn="my_fn")))


# --- the result ---------------------------------------------------------------------------------------------


def test_result_means_frame_save_and_show(gpt2_output, tmp_path, capsys):
    model, out = gpt2_output
    two = AttributionOutput.merge([out, out])
    result = model.evaluate(two, metrics=["comprehensiveness", "deletion_auc"])
    values = result.per_step[0]["comprehensiveness"]
    assert_close(result.per_step[1]["comprehensiveness"], values, what="the same example twice")
    assert result.sequence_means()["comprehensiveness"][0] == pytest.approx(float(values.mean()))
    assert result.means()["comprehensiveness"] == pytest.approx(float(values.mean()))
    frame = result.to_dataframe()
    assert len(frame) == 2 * 2 * out[0].num_steps
    assert frame.columns.tolist() == [
        "example",
        "step",
        "step_token",
        "step_value",
        "metric",
        "value",
        "random",
    ]
    path = tmp_path / "eval.json"
    result.save(path)
    again = seqattr.EvaluationResult.load(path)
    for mine, theirs in zip(
        result.per_step + result.random_per_step, again.per_step + again.random_per_step, strict=True
    ):
        for metric in result.metrics:
            assert torch.equal(mine[metric].view(torch.int64), theirs[metric].view(torch.int64))
    assert again.settings == result.settings and again.steps == result.steps
    result.show()
    printed = capsys.readouterr().out
    assert "comprehensiveness" in printed and "random" in printed and "higher" in printed
    with pytest.raises(ValueError, match="not a seqattr evaluation file"):
        out.save(tmp_path / "out.json")
        seqattr.EvaluationResult.load(tmp_path / "out.json")


def test_nan_steps_are_skipped_by_the_means():
    values = {"comprehensiveness": torch.tensor([1.0, math.nan, 3.0], dtype=torch.float64)}
    result = seqattr.EvaluationResult(
        ["comprehensiveness"], [values], [values], [torch.ones(3)], [["a", "b", "c"]]
    )
    assert result.means()["comprehensiveness"] == 2.0


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_evaluate_matches_the_api(tmp_path, capsys):
    model, tokenizer = tiny_model("gpt2")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    attribution_model = seqattr.load_model(str(folder))
    out = _output(attribution_model)
    out.save(tmp_path / "out.json")
    saved = tmp_path / "eval.json"
    argv = [
        "evaluate",
        str(tmp_path / "out.json"),
        "-m",
        str(folder),
        "--metrics",
        "comprehensiveness",
        "sufficiency",
    ]
    assert main([*argv, "--fractions", "0.2", "0.4", "--by", "abs", "--seed", "1", "--save", str(saved)]) == 0
    printed = capsys.readouterr()
    assert "comprehensiveness" in printed.out and f"saved to {saved}" in printed.err
    expected = attribution_model.evaluate(
        out, metrics=["comprehensiveness", "sufficiency"], fractions=(0.2, 0.4), by="abs", seed=1
    )
    assert seqattr.EvaluationResult.load(saved).means() == pytest.approx(expected.means())
    assert main([*argv[:4], "--fractions", "2"]) == 2
    assert "fractions must lie in (0, 1]" in capsys.readouterr().err
    assert main([*argv[:4], "--metrics", "aopc"]) == 2
    assert "unknown metric 'aopc'" in capsys.readouterr().err
    assert main([*argv[:4], "--step-function", "prob"]) == 2
    assert "unknown step function 'prob'; valid names" in capsys.readouterr().err
    assert main([*argv, "--step-function", "logprob", "--save", str(saved)]) == 0
    capsys.readouterr()
    expected = attribution_model.evaluate(
        out, metrics=["comprehensiveness", "sufficiency"], step_function="logprob"
    )
    assert seqattr.EvaluationResult.load(saved).means() == pytest.approx(expected.means())
