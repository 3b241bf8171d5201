"""Sequence classifiers as one-step models (issue 14): the label set is the step's vocabulary, the text the
attributed source. Tiny classifiers of the zoo (seqattr.testing.tiny_classifier) are trained on a toy
sentiment task, so their predictions follow the words, not chance."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForMultipleChoice, LlamaForSequenceClassification

import seqattr
from seqattr.models.family import SequenceClassifier
from seqattr.testing import CLASSIFIERS, MAX_POSITIONS, tiny_classifier, tiny_model

TEXTS = ["the movie was wonderful.", "my day was sad and the music was boring."]


def classifier(architecture: str, method: str = "integrated_gradients", **options):
    model, tokenizer = tiny_classifier(architecture)
    return seqattr.load_model(model, method, tokenizer=tokenizer, **options)


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_a_classifier_explains_its_predicted_label_in_one_step(architecture):
    model = classifier(architecture, n_steps=8)
    assert isinstance(model.family, SequenceClassifier)
    out = model.attribute(TEXTS, show_progress=False, step_scores=["probability"])
    assert out.predicted_labels == ["positive", "negative"]
    assert out.info["task"] == "sequence-classification"
    for seq, label in zip(out, ["positive", "negative"], strict=True):
        assert seq.steps == [label] and seq.target == ["<label>", label]
        assert seq.target_attributions is None
        # A bidirectional encoder's one step sees every token: no NaN anywhere.
        assert seq.source_attributions.shape == (len(seq.source_ids), 1)
        assert not seq.source_attributions.isnan().any()
        assert seq.trace.top_tokens[0][0] == label and float(seq.step_scores["probability"][0]) > 0.5


@pytest.mark.parametrize("architecture", CLASSIFIERS)
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_fused_equals_stepwise_and_batched_equals_single(architecture, method):
    """Right padding (encoders) and left padding (a decoder-based head reads its last token) must not move
    a text's scores: two texts of different lengths in one batch equal each alone."""
    options = {"n_steps": 8} if method == "integrated_gradients" else {}
    model = classifier(architecture, method, **options)
    batched = model.attribute(TEXTS, show_progress=False)
    stepwise = model.attribute(TEXTS, show_progress=False, fused=False)
    for i, text in enumerate(TEXTS):
        single = model.attribute(text, show_progress=False)
        torch.testing.assert_close(
            batched[i].source_attributions, single[0].source_attributions, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            batched[i].source_attributions, stepwise[i].source_attributions, atol=1e-5, rtol=1e-4
        )


def test_the_target_names_the_explained_label_by_name_or_index_one_per_text():
    model = classifier("distilbert", "saliency")
    out = model.attribute(TEXTS, target=["negative", 1], show_progress=False, step_scores=["probability"])
    assert [seq.steps for seq in out] == [["negative"], ["positive"]]
    assert out.predicted_labels == ["positive", "negative"]  # the prediction stays what the model says
    assert all(float(seq.step_scores["probability"][0]) < 0.5 for seq in out)  # the labels it did not pick


def test_contrast_targets_explain_why_one_label_and_not_another():
    model = classifier("bert", "saliency")
    out = model.attribute(
        TEXTS[0],
        "positive",
        contrast_targets="negative",
        attributed_fn="contrast_prob_diff",
        step_scores=["contrast_prob_diff", "probability"],
        show_progress=False,
    )
    hf_model, tokenizer = tiny_classifier("bert")
    with torch.no_grad():
        probs = hf_model(**tokenizer(TEXTS[0], return_tensors="pt")).logits.softmax(-1)[0]
    torch.testing.assert_close(out[0].step_scores["contrast_prob_diff"][0], probs[1] - probs[0])


def test_word_attributions_are_transformers_interprets_pairs_and_the_page_names_the_labels(tmp_path):
    model = classifier("bert", "input_x_gradient")
    out = model.attribute(TEXTS[0], "negative", show_progress=False)
    pairs = out.word_attributions()
    assert [token for token, _ in pairs] == ["[CLS]", "the", "movie", "was", "wonderful", ".", "[SEP]"]
    scores = torch.tensor([score for _, score in pairs])
    raw = out[0].source_attributions[:, 0].double()
    torch.testing.assert_close(scores, raw / raw.norm(), check_dtype=False)
    assert out.word_attributions(normalize=False) == [
        (t, float(v)) for t, v in zip(out[0].source, raw, strict=True)
    ]
    assert len(model.attribute(TEXTS, show_progress=False).word_attributions()) == 2  # one list per text
    out.save_html(tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    assert "predicted label: positive" in page and "explained: negative" in page


@pytest.mark.parametrize("architecture", ["distilbert", "bert"])
def test_equal_to_transformers_interpret(architecture):
    """transformers-interpret's SequenceClassificationExplainer is layer integrated gradients on the word
    embeddings from a [CLS] [PAD]... [SEP] reference, 50 Gauss-Legendre points, summed over the hidden size
    and divided by the L2 norm: integrated_gradients with that baseline and hidden_reduction="sum".

    For BERT, transformers-interpret gives the final [SEP] token type 1 (``i <= sep_idx`` counts it in the
    first segment's end), so the model it explains sees other inputs than the tokenizer makes; its token
    types are switched off here so that both explain the same forward pass."""
    transformers_interpret = pytest.importorskip("transformers_interpret")
    hf_model, tokenizer = tiny_classifier(architecture)
    text = "the movie was wonderful but my day was sad"
    explainer = transformers_interpret.SequenceClassificationExplainer(hf_model, tokenizer)
    explainer.accepts_token_type_ids = False
    model = classifier(architecture, hidden_reduction="sum")
    baseline = model.special_token_baseline(text)
    for label in (None, "negative"):
        expected = explainer(text, class_name=label)
        out = model.attribute(text, label, baseline=baseline, show_progress=False)
        ours = out.word_attributions()
        assert [word for word, _ in ours] == [word for word, _ in expected]
        difference = max(abs(a - b) for (_, a), (_, b) in zip(ours, expected, strict=True))
        assert difference < 1e-4, difference
        assert out.predicted_label == explainer.predicted_class_name


KNOWN = "cat"


def hand_built_classifier():
    """A one-layer Llama classifier whose positive logit is a linear function of one token's presence.

    Every weight is zero except: the embedding's dimension 0, which is 4 for the known token and 0 for every
    other; uniform attention (zero queries and keys) whose value and output projections copy dimension 0 to
    the last position; a score head reading dimension 0 (+ for positive, - for negative). Norms with a huge
    epsilon divide by a constant, so the logit is exactly linear in the known token's dimension 0 and other
    tokens reach it only through that dimension, where they hold 0."""
    base, tokenizer = tiny_classifier("llama")
    config = copy.deepcopy(base.config)
    config.num_hidden_layers, config.rms_norm_eps = 1, 1e4
    model = LlamaForSequenceClassification(config)
    known = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + KNOWN))
    assert len(known) == 1, "the known word must be one token"
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embed = model.model.embed_tokens.weight
        embed.copy_(torch.randn(embed.shape, generator=generator))
        embed[:, 0] = 0.0
        embed[known[0], 0] = 4.0
        layer = model.model.layers[0]
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        layer.self_attn.v_proj.weight[0, 0] = 1.0
        layer.self_attn.o_proj.weight[0, 0] = 1.0
        model.score.weight[1, 0], model.score.weight[0, 0] = 1e4, -1e4
    return model.eval(), tokenizer


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "input_x_gradient", "occlusion", "feature_ablation"]
)
def test_a_classifier_reading_one_token_ranks_it_first(method):
    hf_model, tokenizer = hand_built_classifier()
    model = seqattr.load_model(hf_model, method, tokenizer=tokenizer)
    text = f"the movie was {KNOWN} and the music was cold"
    out = model.attribute(text, "positive", show_progress=False, attributed_fn="logit")
    seq = out[0]
    scores = seq.source_attributions[:, 0]
    assert seq.source[int(scores.abs().argmax())] == "▁" + KNOWN
    others = torch.cat([scores[: seq.source.index("▁" + KNOWN)], scores[seq.source.index("▁" + KNOWN) + 1 :]])
    assert float(others.abs().max()) < 1e-3 * float(scores.abs().max())


def test_bad_input_gets_clear_errors():
    model = classifier("bert", "saliency")
    with pytest.raises(
        ValueError,
        match=r"'neutral' is not a label of this classifier; its labels: 0='negative', 1='positive'",
    ):
        model.attribute(TEXTS[0], "neutral", show_progress=False)
    with pytest.raises(ValueError, match=r"target\[0\] 7 is not a label"):
        model.attribute(TEXTS[0], 7, show_progress=False)
    long_text = " ".join(["wonderful"] * (MAX_POSITIONS + 10))
    with pytest.raises(
        ValueError,
        match=rf"input_texts\[0\] is \d+ tokens long, longer than the model's context of {MAX_POSITIONS}",
    ):
        model.attribute(long_text, show_progress=False)
    with pytest.raises(ValueError, match="a classifier's target is its label"):
        model.attribute(TEXTS[0], attribute_target=True, show_progress=False)
    chooser = BertForMultipleChoice(
        BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(TypeError, match=r"classifiers with these heads: \*ForSequenceClassification"):
        seqattr.load_model(chooser, tokenizer=tiny_classifier("bert")[1])
    gpt2, gpt2_tokenizer = tiny_model("gpt2")
    generative = seqattr.load_model(gpt2, tokenizer=gpt2_tokenizer)
    with pytest.raises(ValueError, match="predicted labels belong to classifiers"):
        _ = generative.attribute(
            "Hello", generation_args={"max_new_tokens": 1}, show_progress=False
        ).predicted_label
