"""Token classification, extractive QA and pairs of texts as classifiers of the same engine (issue 14): a
tagger has one step per token, a reader two (the answer's start and end), a pair classifier attributes to
both texts. The tiny models (seqattr.testing.tiny_task_model) are trained on toy tasks, so their
predictions follow the words."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForMultipleChoice

import seqattr
from seqattr.models.family import QuestionAnswerer, TokenClassifier
from seqattr.testing import tiny_classifier, tiny_model, tiny_task_model

pytestmark = pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")  # n_steps=8 on purpose

SENTENCES = ["bob went to london.", "alice lives in new york."]
TAGS = [
    ["O", "B-PER", "O", "O", "B-LOC", "O", "O"],  # [CLS] bob went to london . [SEP]
    ["O", "B-PER", "O", "O", "B-LOC", "I-LOC", "O", "O"],  # [CLS] alice lives in new york . [SEP]
]
QUESTIONS = ["where does bob live?", "who is in new york?"]


@pytest.fixture(scope="module")
def tagger():
    model, tokenizer = tiny_task_model("token-classification")
    return seqattr.load_model(model, "saliency", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reader():
    model, tokenizer = tiny_task_model("question-answering")
    return seqattr.load_model(model, "saliency", tokenizer=tokenizer)


def embeddings_gradient_x_input(hf_model, encoding, score) -> torch.Tensor:
    """Input x gradient of ``score(output)`` on the word embeddings, summed over the hidden size: the direct
    autograd computation the library's numbers are checked against."""
    embeds = hf_model.get_input_embeddings()(encoding["input_ids"]).detach().requires_grad_(True)
    inputs = {k: v for k, v in encoding.items() if k != "input_ids"}
    value = score(hf_model(inputs_embeds=embeds, **inputs))
    (gradient,) = torch.autograd.grad(value, embeds)
    return (gradient * embeds).sum(-1)[0].detach()


# --- token classification -----------------------------------------------------------------------------


def test_a_tagger_explains_every_tokens_predicted_tag(tagger):
    assert isinstance(tagger.family, TokenClassifier)
    out = tagger.attribute(SENTENCES, show_progress=False, step_scores=["probability"])
    assert out.info["task"] == "token-classification"
    assert out.predicted_labels == TAGS
    for seq, tags in zip(out, TAGS, strict=True):
        assert seq.steps == tags and seq.target == ["<label>", *tags]
        # Step j explains token j's tag; a bidirectional encoder's every step sees every token: no NaN.
        assert seq.source_attributions.shape == (len(seq.source), len(tags))
        assert not seq.source_attributions.isnan().any()
        assert bool((seq.step_scores["probability"] > 0.5).all())
    entities = out.entities()
    assert [(e.label, e.text, e.start, e.end) for e in entities[0]] == [
        ("PER", "bob", 1, 2),
        ("LOC", "london", 4, 5),
    ]
    assert [(e.label, e.text) for e in out[1].entities()] == [("PER", "alice"), ("LOC", "new york")]
    new_york = out[1].entities()[1]  # two tokens: the mean of their steps
    torch.testing.assert_close(new_york.attributions, out[1].source_attributions[:, [4, 5]].mean(1))


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "input_x_gradient"])
def test_tagger_fused_equals_stepwise_and_batched_equals_single(tagger, method):
    options = {"n_steps": 8} if method == "integrated_gradients" else {}
    fused = tagger.attribute(SENTENCES, method=method, show_progress=False, **options)
    stepwise = tagger.attribute(SENTENCES, method=method, show_progress=False, fused=False, **options)
    for i, sentence in enumerate(SENTENCES):
        single = tagger.attribute(sentence, method=method, show_progress=False, **options)
        torch.testing.assert_close(
            fused[i].source_attributions, stepwise[i].source_attributions, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            fused[i].source_attributions, single[0].source_attributions, atol=1e-5, rtol=1e-4
        )


def test_tagger_scores_equal_a_direct_autograd_computation(tagger):
    hf_model, tokenizer = tiny_task_model("token-classification")
    out = tagger.attribute(
        SENTENCES[0], method="input_x_gradient", hidden_reduction="sum", show_progress=False
    )
    encoding = tokenizer(SENTENCES[0], return_tensors="pt")
    for j, tag in enumerate(TAGS[0]):
        label = hf_model.config.label2id[tag]
        expected = embeddings_gradient_x_input(
            hf_model, encoding, lambda output, j=j, label=label: output.logits.softmax(-1)[0, j, label]
        )
        torch.testing.assert_close(out[0].source_attributions[:, j], expected, atol=1e-6, rtol=1e-4)


def test_given_tags_are_explained_with_or_without_the_special_tokens(tagger):
    words_only = ["B-PER", "O", "O", "O", "O"]  # bob went to london .
    out = tagger.attribute(SENTENCES[0], target=words_only, show_progress=False)
    assert out[0].steps == ["O", *words_only, "O"]  # the special tokens keep their predicted tag
    assert out.predicted_labels == [TAGS[0]]
    both = tagger.attribute(SENTENCES, target=[TAGS[0], [0] * 8], show_progress=False)
    assert [seq.steps for seq in both] == [TAGS[0], ["O"] * 8]
    with pytest.raises(ValueError, match=r"gives 3 tag\(s\) for a text of 7 tokens \(5 without special"):
        tagger.attribute(SENTENCES[0], target=["O", "O", "O"], show_progress=False)
    with pytest.raises(ValueError, match=r"'B-ORG' is not a label of this classifier; its labels: 0='O'"):
        tagger.attribute(SENTENCES[0], target=["B-ORG"] * 5, show_progress=False)


# --- extractive question answering ---------------------------------------------------------------------


def test_a_reader_explains_the_start_and_end_of_its_answer(reader):
    assert isinstance(reader.family, QuestionAnswerer)
    out = reader.attribute(
        question=QUESTIONS, context=SENTENCES, show_progress=False, step_scores=["probability"]
    )
    assert out.info["task"] == "question-answering"
    assert [seq.steps for seq in out] == [["london@10", "london@10"], ["alice@8", "alice@8"]]
    assert out.info["segments"] == [[[1, 6], [7, 12]], [[1, 7], [8, 14]]]  # question, context
    for seq in out:
        assert seq.source_attributions.shape == (len(seq.source), 2)
        assert not seq.source_attributions.isnan().any()
        assert bool((seq.step_scores["probability"] > 0.5).all())
    # The answer's span as given: a piece of the context, or (start, end) token positions.
    given = reader.attribute(
        question=QUESTIONS[0], context=SENTENCES[0], target="went to", show_progress=False
    )
    assert given[0].steps == ["went@8", "to@9"]
    assert reader.attribute(question=QUESTIONS[0], context=SENTENCES[0], target=(8, 9), show_progress=False)[
        0
    ].steps == ["went@8", "to@9"]


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_reader_fused_equals_stepwise_and_batched_equals_single(reader, method):
    """Padding must not move a shorter example's softmax over positions: the pads' logits are masked."""
    options = {"n_steps": 8} if method == "integrated_gradients" else {}
    arguments = {"question": QUESTIONS, "context": SENTENCES, "method": method, "show_progress": False}
    fused = reader.attribute(**arguments, step_scores=["probability"], **options)
    stepwise = reader.attribute(**arguments, fused=False, **options)
    for i in range(2):
        single = reader.attribute(
            question=QUESTIONS[i],
            context=SENTENCES[i],
            method=method,
            show_progress=False,
            step_scores=["probability"],
            **options,
        )
        torch.testing.assert_close(
            fused[i].source_attributions, stepwise[i].source_attributions, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            fused[i].source_attributions, single[0].source_attributions, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(fused[i].step_scores["probability"], single[0].step_scores["probability"])


def test_reader_scores_equal_a_direct_autograd_computation(reader):
    hf_model, tokenizer = tiny_task_model("question-answering")
    out = reader.attribute(
        question=QUESTIONS[1],
        context=SENTENCES[1],
        method="input_x_gradient",
        hidden_reduction="sum",
        show_progress=False,
    )
    encoding = tokenizer(QUESTIONS[1], SENTENCES[1], return_tensors="pt")
    for step, name in enumerate(("start_logits", "end_logits")):
        expected = embeddings_gradient_x_input(
            hf_model, encoding, lambda output, name=name: getattr(output, name).softmax(-1)[0, 8]
        )
        torch.testing.assert_close(out[0].source_attributions[:, step], expected, atol=1e-6, rtol=1e-4)


def test_reader_bad_input_gets_clear_errors(reader):
    with pytest.raises(
        ValueError, match="question= needs context=: the passage the answer is extracted from"
    ):
        reader.attribute(question=QUESTIONS[0], show_progress=False)
    with pytest.raises(ValueError, match=r"a question-answering model reads a question and the context"):
        reader.attribute(SENTENCES[0], show_progress=False)
    with pytest.raises(ValueError, match=r"got 2 question\(s\) but 1 context\(s\)"):
        reader.attribute(question=QUESTIONS, context=SENTENCES[0], show_progress=False)
    with pytest.raises(ValueError, match="the answer 'paris' is not in the context"):
        reader.attribute(question=QUESTIONS[0], context=SENTENCES[0], target="paris", show_progress=False)
    with pytest.raises(ValueError, match=r"the span \(12, 40\) is not a pair of token positions"):
        reader.attribute(question=QUESTIONS[0], context=SENTENCES[0], target=(12, 40), show_progress=False)


# --- pairs of texts ------------------------------------------------------------------------------------


def test_a_pair_is_attributed_to_both_texts_with_their_token_types():
    hf_model, tokenizer = tiny_classifier("bert")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    pairs = [("the movie was wonderful.", "my day was sad."), ("the music was boring.", "the city was nice.")]
    out = model.attribute(pairs, step_scores=["probability"], show_progress=False)
    for seq, (a, b), segments in zip(out, pairs, out.info["segments"], strict=True):
        encoding = tokenizer(a, b, return_tensors="pt")
        assert seq.source_ids == encoding["input_ids"][0].tolist()
        (first, second) = segments
        assert seq.source[first[1]] == "[SEP]" and seq.source[second[1]] == "[SEP]" and first[0] == 1
        with torch.no_grad():  # the BERT reads the second text as segment 1, as the tokenizer says
            probs = hf_model(**encoding).logits.softmax(-1)[0]
        label = hf_model.config.label2id[seq.steps[0]]
        torch.testing.assert_close(seq.step_scores["probability"][0], probs[label])
        assert float(seq.source_attributions[second[0] : second[1]].abs().sum()) > 0  # both texts attributed
    single = model.attribute(pairs[1], show_progress=False)  # one pair alone: the same numbers
    torch.testing.assert_close(
        single[0].source_attributions, out[1].source_attributions, atol=1e-6, rtol=1e-5
    )


def test_a_pair_given_to_a_single_text_model_is_refused(tagger):
    gpt2, gpt2_tokenizer = tiny_model("gpt2")
    generative = seqattr.load_model(gpt2, tokenizer=gpt2_tokenizer)
    with pytest.raises(
        ValueError, match=r"input_texts\[0\] is a pair of texts, but this decoder-only model reads one"
    ):
        generative.attribute(("Hello", "world"), show_progress=False)
    with pytest.raises(ValueError, match=r"this token-classifier model reads one text"):
        tagger.attribute([SENTENCES[0], ("bob", "alice")], show_progress=False)
    with pytest.raises(TypeError, match=r"input_texts\[0\] is a tuple of 3 item\(s\)"):
        tagger.attribute([("a", "b", "c")], show_progress=False)


def test_other_heads_are_refused_with_the_supported_list():
    chooser = BertForMultipleChoice(
        BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(
        TypeError, match=r"\*ForTokenClassification \(token classification\), \*ForQuestionAnswering"
    ):
        seqattr.load_model(chooser, tokenizer=tiny_classifier("bert")[1])


# --- zero-shot classification ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nli():
    """The sentiment BERT read as an NLI model: "entailment" is its positive label. Enough to check the
    mechanics (pairs, the explained label, the scores), not a real NLI model."""
    hf_model, tokenizer = tiny_classifier("bert")
    hf_model = copy.deepcopy(hf_model)
    hf_model.config.id2label = {0: "contradiction", 1: "entailment"}
    hf_model.config.label2id = {"contradiction": 0, "entailment": 1}
    return seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)


def test_zero_shot_explains_the_entailment_of_each_label(nli):
    text, labels = "the movie was boring.", ["good", "sad", "cold"]
    out = seqattr.zero_shot(nli, text, labels, hypothesis_template="the music was {}.", show_progress=False)
    assert len(out) == 3 and all(seq.steps == ["entailment"] for seq in out)
    zero = out.info["zero_shot"]
    assert zero["hypotheses"] == ["the music was good.", "the music was sad.", "the music was cold."]
    tokenizer = nli.tokenizer
    with torch.no_grad():
        batch = tokenizer([text] * 3, zero["hypotheses"], return_tensors="pt", padding=True)
        entailment = nli.model(**batch).logits[:, 1].double()
    torch.testing.assert_close(torch.tensor(zero["scores"], dtype=torch.float64), entailment.softmax(0))
    assert zero["predicted_label"] == labels[int(entailment.argmax())]
    assert all(len(segments) == 2 for segments in out.info["segments"])  # text and hypothesis


def test_zero_shot_bad_input_gets_clear_errors(nli, tagger):
    with pytest.raises(
        ValueError, match=r"needs an NLI classifier with an entailment label; .* \['negative', "
    ):
        hf_model, tokenizer = tiny_classifier("bert")
        seqattr.zero_shot(seqattr.load_model(hf_model, tokenizer=tokenizer), "a", ["b"])
    with pytest.raises(ValueError, match="hypothesis_template must hold '{}'"):
        seqattr.zero_shot(nli, "the movie was good.", ["good"], hypothesis_template="This example is")
    with pytest.raises(ValueError, match="labels must be a non-empty list"):
        seqattr.zero_shot(nli, "the movie was good.", [])
    with pytest.raises(
        ValueError, match="zero_shot runs on an NLI sequence classifier; this model is a token"
    ):
        seqattr.zero_shot(tagger, "bob went to london.", ["good"])
