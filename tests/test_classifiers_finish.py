"""Classifiers, finished (issue 14): RoBERTa's position offset in the length check, multi-label classifiers,
the entity-span view, taggers and readers on more architectures, and the CLI for pairs and QA."""

from __future__ import annotations

import copy
import functools
import inspect
import io
import json
import math
import re
import warnings

import pytest
import torch
import transformers
from rich.console import Console

import seqattr
from seqattr.cli import main
from seqattr.data.tokens import token_labels
from seqattr.testing import CLASSIFIER_RECIPES, MULTI_LABELS, tiny_classifier, tiny_task_model
from seqattr.viz.console import format_score

pytestmark = pytest.mark.filterwarnings("ignore::seqattr.ConvergenceWarning")  # few IG points on purpose

# --- the length check counts RoBERTa's skipped positions ----------------------------------------------


def test_a_roberta_of_few_positions_refuses_a_text_its_positions_do_not_cover():
    """RoBERTa's positions start after its padding index (2 of max_position_embeddings unused): a text of
    max_position_embeddings - 1 tokens passed the old check and then crashed inside torch."""
    model, tok = tiny_classifier("roberta")
    config = CLASSIFIER_RECIPES["roberta"].config(tok)
    config.max_position_embeddings = 12  # 10 tokens
    small = transformers.RobertaForSequenceClassification(config).eval()
    with warnings.catch_warnings():  # its embeddings are measured without the pad id (RoBERTa's positions)
        warnings.simplefilter("error")
        explainer = seqattr.load_model(small, "saliency", tokenizer=tok)
    assert explainer.max_positions == 10
    ids = tok("a b c d e f g h")["input_ids"]
    fits = tok.decode(ids[1:-1])  # a text of exactly 10 tokens runs
    assert len(ids) == 10
    explainer.attribute(fits, show_progress=False)
    longer = "a b c d e f g h a"
    assert len(tok(longer)["input_ids"]) == 11
    with pytest.raises(
        ValueError, match=r"input_texts\[0\] is 11 tokens long, longer than the model's context of 10"
    ):
        explainer.attribute(longer, show_progress=False)


# --- the command line: pairs and question answering ---------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    """The tiny sentiment classifier, reader and tagger saved as a user would have them on disk."""
    folders = {}
    for name, (model, tok) in {
        "classifier": tiny_classifier("bert"),
        "reader": tiny_task_model("question-answering"),
        "tagger": tiny_task_model("token-classification"),
    }.items():
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def test_the_cli_explains_a_pair_as_the_python_api_does(saved, tmp_path):
    path = tmp_path / "pair.json"
    code = main(
        ["attribute", "-m", saved["classifier"], "-a", "saliency", "-i", "the movie", "--text-pair",
         "was good.", "-o", str(path), "--no-show"]
    )  # fmt: skip
    assert code == 0
    loaded = seqattr.load(path)
    model, tok = tiny_classifier("bert")
    expected = seqattr.load_model(model, "saliency", tokenizer=tok).attribute(
        ("the movie", "was good."), show_progress=False
    )
    assert loaded.info["segments"] == expected.info["segments"]
    assert loaded.predicted_label == expected.predicted_label
    torch.testing.assert_close(loaded[0].source_attributions, expected[0].source_attributions)


def test_the_cli_explains_a_question_as_the_python_api_does(saved, tmp_path):
    path = tmp_path / "qa.json"
    question, context = "where does bob live?", "bob lives in london."
    code = main(
        ["attribute", "-m", saved["reader"], "-a", "saliency", "--question", question, "--context", context,
         "-o", str(path), "--no-show"]
    )  # fmt: skip
    assert code == 0
    loaded = seqattr.load(path)
    model, tok = tiny_task_model("question-answering")
    expected = seqattr.load_model(model, "saliency", tokenizer=tok).attribute(
        question=question, context=context, show_progress=False
    )
    assert loaded[0].steps == expected[0].steps and loaded[0].steps[0].startswith("london")
    torch.testing.assert_close(loaded[0].source_attributions, expected[0].source_attributions)


def test_the_cli_explains_given_labels_of_a_multi_label_classifier(tmp_path):
    model, tok = tiny_task_model("multi-label-classification")
    folder = tmp_path / "multi"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    path = tmp_path / "multi.json"
    flags = ["attribute", "-m", str(folder), "-a", "saliency", "-i", "the movie was bad.", "--no-show"]
    assert main([*flags, "-g", "positive weather", "-o", str(path)]) == 0
    loaded = seqattr.load(path)
    assert loaded[0].steps == ["positive", "weather"] and loaded.predicted_labels == [["negative"]]
    assert main([*flags, "-g", "positive rainy"]) == 2  # refused, listing the labels


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        ("tagger", ["-i", "bob went to paris.", "--text-pair", "x"], r"--text-pair: .* reads one text; drop"),
        ("classifier", ["--question", "who?", "--context", "bob sat."], r"--question/--context are for"),
        ("reader", ["-i", "bob lives in paris."], r"-i: .* give --question and --context instead of -i"),
        ("reader", ["--question", "who?"], r"--question needs --context"),
        ("reader", ["--context", "bob sat."], r"--context needs --question"),
        ("classifier", ["-i", "a", "b", "--text-pair", "c"], r"2 -i text\(s\) but 1 --text-pair"),
        ("reader", ["-i", "a", "--question", "who?", "--context", "c"], r"give the inputs once"),
        ("classifier", [], r"needs -i/--input-texts \(or, for an extractive QA model, --question"),
    ],
)
def test_the_cli_refuses_inputs_a_model_does_not_read_naming_the_flags(saved, capsys, model, flags, message):
    code = main(["attribute", "-m", saved[model], "-a", "saliency", "--no-show", *flags])
    assert code != 0
    assert re.search(message, capsys.readouterr().err)


# --- multi-label classifiers: each label an independent sigmoid ---------------------------------------

MULTI_TEXTS = ["the weather was nice.", "the movie was bad."]


@pytest.fixture(scope="module")
def multi():
    model, tokenizer = tiny_task_model("multi-label-classification")
    return seqattr.load_model(model, "saliency", tokenizer=tokenizer)


def sigmoid_logits(text: str) -> torch.Tensor:
    hf_model, tokenizer = tiny_task_model("multi-label-classification")
    with torch.no_grad():
        return hf_model(**tokenizer(text, return_tensors="pt")).logits[0]


def test_a_multi_label_classifier_explains_each_label_whose_sigmoid_passes_one_half(multi):
    assert multi.family.multi_label and str(multi.family) == "sequence-classifier (multi-label)"
    out = multi.attribute(
        MULTI_TEXTS, show_progress=False, step_scores=["probability", "logprob", "logit", "entropy"]
    )
    assert out.info["multi_label"] is True
    names = MULTI_LABELS
    for seq, text in zip(out, MULTI_TEXTS, strict=True):
        logits = sigmoid_logits(text)
        probs = torch.sigmoid(logits)
        above = [i for i in range(len(names)) if probs[i] > 0.5]
        assert seq.steps == [names[i] for i in above]  # in label order
        # The step functions read sigmoid(logit), not a softmax over the labels.
        torch.testing.assert_close(seq.step_scores["probability"], probs[above])
        torch.testing.assert_close(seq.step_scores["logprob"], torch.nn.functional.logsigmoid(logits[above]))
        torch.testing.assert_close(seq.step_scores["logit"], logits[above])
        bernoulli = -(probs * probs.log() + (1 - probs) * (1 - probs).log()).sum()
        torch.testing.assert_close(seq.step_scores["entropy"], bernoulli.expand(len(above)))
        # The prediction table holds every label with its sigmoid probability, most probable first.
        order = probs.argsort(descending=True)
        assert seq.trace.top_tokens[0] == [names[int(i)] for i in order]
        torch.testing.assert_close(seq.trace.top_probabilities[0], probs[order])
    # The toy task's truth: nice weather is positive and about the weather; a bad movie is negative.
    assert out.predicted_labels == [["positive", "weather"], ["negative"]]
    assert [seq.steps for seq in out] == [["positive", "weather"], ["negative"]]


def test_multi_label_gradients_equal_autograd_of_the_sigmoid(multi):
    from test_classifiers_more import embeddings_gradient_x_input

    hf_model, tokenizer = tiny_task_model("multi-label-classification")
    out = multi.attribute(
        MULTI_TEXTS[0], method="input_x_gradient", hidden_reduction="sum", show_progress=False
    )
    encoding = tokenizer(MULTI_TEXTS[0], return_tensors="pt")
    for step, label in enumerate(out[0].steps):
        index = hf_model.config.label2id[label]
        expected = embeddings_gradient_x_input(
            hf_model, encoding, lambda output, index=index: torch.sigmoid(output.logits[0, index])
        )
        torch.testing.assert_close(out[0].source_attributions[:, step], expected, atol=1e-6, rtol=1e-4)


def test_given_labels_of_a_multi_label_classifier_by_name_index_or_list(multi):
    def steps(target):
        return [seq.steps for seq in multi.attribute(
            MULTI_TEXTS[: len(target) if isinstance(target, list) and isinstance(target[0], list) else 1],
            target=target,
            show_progress=False,
        )]  # fmt: skip

    assert steps("weather") == [["weather"]]
    assert steps(2) == [["weather"]]
    assert steps(["negative", 2]) == [["negative", "weather"]]  # one text's labels
    assert steps([["weather"], ["positive", "negative"]]) == [["weather"], ["positive", "negative"]]
    out = multi.attribute(MULTI_TEXTS[1], target="weather", show_progress=False, step_scores=["probability"])
    torch.testing.assert_close(
        out[0].step_scores["probability"], torch.sigmoid(sigmoid_logits(MULTI_TEXTS[1])[2:3])
    )
    assert out.predicted_labels == [["negative"]]  # the prediction stays the model's
    with pytest.raises(ValueError, match=r"target\[0\] 'rainy' is not a label .* 2='weather'"):
        multi.attribute(MULTI_TEXTS[0], target=["positive", "rainy"], show_progress=False)
    with pytest.raises(
        ValueError, match=r"one text's labels .* there are 2 texts; give one list of labels per"
    ):
        multi.attribute(MULTI_TEXTS, target=["positive", "negative"], show_progress=False)
    with pytest.raises(ValueError, match=r"target\[1\] names no label"):
        multi.attribute(MULTI_TEXTS, target=[["positive"], []], show_progress=False)


def test_a_text_with_no_label_above_one_half_explains_its_most_probable_label():
    hf_model, tokenizer = tiny_task_model("multi-label-classification")
    doubtful = copy.deepcopy(hf_model)
    with torch.no_grad():
        doubtful.classifier.bias -= 50.0  # every sigmoid far below 0.5
    out = seqattr.load_model(doubtful, "saliency", tokenizer=tokenizer).attribute(
        MULTI_TEXTS[0], show_progress=False, step_scores=["probability"]
    )
    assert out.predicted_labels == [[]]
    assert out[0].steps == ["positive"]  # the most probable
    assert float(out[0].step_scores["probability"][0]) < 0.5


def test_contrastive_and_distribution_step_functions_on_independent_labels(multi):
    logits = sigmoid_logits(MULTI_TEXTS[0])
    probs = torch.sigmoid(logits)
    out = multi.attribute(
        MULTI_TEXTS[0],
        target="positive",
        contrast_targets="weather",
        attributed_fn="contrast_prob_diff",
        step_scores=["contrast_prob_diff", "contrast_prob"],
        show_progress=False,
    )
    torch.testing.assert_close(out[0].step_scores["contrast_prob_diff"][0], probs[1] - probs[2])
    torch.testing.assert_close(out[0].step_scores["contrast_prob"][0], probs[2])
    # The input changes: KL sums each label's yes/no divergence.
    other = sigmoid_logits(MULTI_TEXTS[1])
    out = multi.attribute(
        MULTI_TEXTS[0],
        target="positive",
        contrast_sources=MULTI_TEXTS[1],
        step_scores=["kl_divergence"],
        show_progress=False,
    )
    q = torch.sigmoid(other)
    kl = (probs * (probs / q).log() + (1 - probs) * ((1 - probs) / (1 - q)).log()).sum()
    torch.testing.assert_close(out[0].step_scores["kl_divergence"][0], kl)
    with pytest.raises(ValueError, match="labels are independent yes/no decisions"):
        multi.attribute(MULTI_TEXTS[0], step_scores=["top_p_size"], show_progress=False)


def test_the_page_of_a_multi_label_classifier_names_every_predicted_label(multi, tmp_path):
    out = multi.attribute(MULTI_TEXTS[0], show_progress=False)
    probs = torch.sigmoid(sigmoid_logits(MULTI_TEXTS[0]))
    page = out.to_html()
    assert f"predicted labels: positive ({probs[1]:.2f}), weather ({probs[2]:.2f})" in page
    assert "explained: positive, weather" in page


# --- taggers and readers on more architectures --------------------------------------------------------

# BERT's are tests/test_classifiers_more.py's; fused == stepwise and batched == single of these are rows of
# tests/test_invariants.py (its CLASSIFIER_FAMILIES).
MORE_ARCHITECTURES = ("distilbert", "roberta", "qwen2")
TAGGED = ["bob went to london.", "alice lives in new york."]
QUESTIONS = ["where does bob live?", "who is in paris?"]
CONTEXTS = ["bob went to london.", "alice lives in paris."]
TASK_CASES = [
    pytest.param(task, architecture, id=f"{task}-{architecture}")
    for task in ("token-classification", "question-answering")
    for architecture in MORE_ARCHITECTURES
]


@functools.cache
def task_explainer(task: str, architecture: str, method: str = "saliency", **options):
    model, tokenizer = tiny_task_model(task, architecture)
    return seqattr.load_model(model, method, tokenizer=tokenizer, **options)


def task_inputs(task: str, i: int | None = None) -> dict:
    if task == "token-classification":
        return {"input_texts": TAGGED if i is None else TAGGED[i]}
    if i is None:
        return {"question": QUESTIONS, "context": CONTEXTS}
    return {"question": QUESTIONS[i], "context": CONTEXTS[i]}


def gradient_x_input(hf_model, encoding, score) -> torch.Tensor:
    """Input x gradient of ``score(output)`` on the word embeddings, summed over the hidden size, by autograd
    (the inputs the model's forward takes: DistilBERT has no token types)."""
    from test_classifiers_more import embeddings_gradient_x_input

    accepted = inspect.signature(hf_model.forward).parameters
    return embeddings_gradient_x_input(hf_model, {k: v for k, v in encoding.items() if k in accepted}, score)


@pytest.mark.parametrize(("task", "architecture"), TASK_CASES)
def test_more_architectures_follow_their_toy_task(task, architecture):
    explainer = task_explainer(task, architecture)
    assert explainer.family.task == task
    out = explainer.attribute(**task_inputs(task), show_progress=False)
    if task == "token-classification":
        found = [[(e.label, e.text) for e in entities] for entities in out.entities()]
        assert found == [[("PER", "bob"), ("LOC", "london")], [("PER", "alice"), ("LOC", "new york")]]
    else:
        tokenizer = explainer.tokenizer
        answers = []
        for seq in out:
            start, end = (int(s.rsplit("@", 1)[1]) for s in seq.steps)
            answers.append(tokenizer.decode(seq.source_ids[start : end + 1]).strip())
        assert answers == ["london", "alice"]


@pytest.mark.parametrize(("task", "architecture"), TASK_CASES)
def test_more_architectures_equal_a_direct_autograd_computation(task, architecture):
    hf_model, tokenizer = tiny_task_model(task, architecture)
    explainer = task_explainer(task, architecture, "input_x_gradient", hidden_reduction="sum")
    out = explainer.attribute(**task_inputs(task, 1), show_progress=False)
    seq = out[0]
    if task == "token-classification":
        encoding = tokenizer(TAGGED[1], return_tensors="pt")
        heads = [
            lambda output, j=j, tag=hf_model.config.label2id[tag]: output.logits.softmax(-1)[0, j, tag]
            for j, tag in enumerate(seq.steps)
        ]
    else:
        encoding = tokenizer(QUESTIONS[1], CONTEXTS[1], return_tensors="pt")
        positions = [int(s.rsplit("@", 1)[1]) for s in seq.steps]
        heads = [
            lambda output, name=name, p=p: getattr(output, name).softmax(-1)[0, p]
            for name, p in zip(("start_logits", "end_logits"), positions, strict=True)
        ]
    assert len(seq.source_ids) == encoding["input_ids"].shape[1]
    for step, score in enumerate(heads):
        expected = gradient_x_input(hf_model, encoding, score)
        ours = seq.source_attributions[:, step]
        seen = ~ours.isnan()
        torch.testing.assert_close(ours[seen], expected[seen], atol=1e-6, rtol=1e-4)
        assert bool((expected[~seen] == 0).all())  # what a step does not see has no gradient either


@pytest.mark.parametrize("method", ["input_x_gradient", "occlusion"])
def test_a_causal_taggers_step_does_not_see_the_tokens_after_its_own(method):
    """Qwen2ForTokenClassification tags token j from tokens 0..j: the later ones are NaN in step j's
    column, for gradient and perturbation methods alike; a reader's steps see every token (each is a
    softmax over all positions)."""
    tagger = task_explainer("token-classification", "qwen2", method)
    assert str(tagger.family) == "token-classifier (decoder-based)"
    seq = tagger.attribute(TAGGED[1], show_progress=False)[0]
    n = len(seq.source_ids)
    later = torch.arange(n)[:, None] > torch.arange(n)[None, :]  # token p after step j's token
    assert torch.equal(seq.source_attributions.isnan(), later)
    assert len(seq.word_attributions(step=2)) == 3  # the tokens the step saw
    place = seq.entities()[1]
    assert place.label == "LOC" and place.attributions[: place.end].isfinite().all()
    assert place.attributions[place.end :].isnan().all()  # after the entity: seen by none of its steps
    reader = task_explainer("question-answering", "qwen2", method)
    assert (
        not reader.attribute(**task_inputs("question-answering", 0), show_progress=False)[0]
        .source_attributions.isnan()
        .any()
    )


def test_a_deberta_v2_classifier_equals_a_direct_autograd_computation():
    hf_model, tokenizer = tiny_classifier("deberta-v2")
    explainer = seqattr.load_model(hf_model, "input_x_gradient", tokenizer=tokenizer, hidden_reduction="sum")
    text = "the music was boring."
    out = explainer.attribute(text, show_progress=False)
    assert out.predicted_label == "negative"
    expected = gradient_x_input(
        hf_model, tokenizer(text, return_tensors="pt"), lambda output: output.logits.softmax(-1)[0, 0]
    )
    torch.testing.assert_close(out[0].source_attributions[:, 0], expected, atol=1e-6, rtol=1e-4)


# --- the entity-span view -----------------------------------------------------------------------------


def tagged_output(architecture: str):
    return task_explainer("token-classification", architecture, "input_x_gradient").attribute(
        TAGGED, show_progress=False
    )


def printed(view) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    view(console)
    return console.file.getvalue()


@pytest.mark.parametrize("architecture", ["bert", "qwen2"])
def test_the_terminal_entity_view_marks_the_spans_and_shows_their_attributions(architecture):
    out = tagged_output(architecture)
    text = printed(lambda console: out.show_entities(console=console))
    assert "[bob](PER) went to [london](LOC)" in text
    assert "[alice](PER) lives in [new york](LOC)" in text
    assert text.index("#0") < text.index("[bob](PER)") < text.index("#1") < text.index("[alice](PER)")
    # One column per entity, holding its attribution (the mean of its steps) for every input token.
    seq = out[1]
    one = printed(lambda console: seq.show_entities(entity="new york", console=console))
    assert "LOC new york" in one and "PER alice" not in one
    place = seq.entities()[1]
    labels = token_labels(seq.source)
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in one.splitlines()
        if line.count("│") == 3
    }
    assert list(rows) == labels
    for position, label in enumerate(labels):
        value = float(place.attributions[position])
        own = "*" if place.start <= position < place.end else ""
        assert rows[label] == ("" if math.isnan(value) else format_score(value) + own)
    if architecture == "qwen2":  # the causal tagger's steps do not see the tokens after the entity
        assert rows[labels[-1]] == ""


def test_the_entity_view_refuses_an_unknown_entity_and_other_tasks():
    out = tagged_output("bert")
    with pytest.raises(ValueError, match=r"entity='paris' is not an entity .* 0=PER:'bob', 1=LOC:'london'"):
        out[0].show_entities(entity="paris", console=Console(file=io.StringIO()))
    sentiment = seqattr.load_model(
        *tiny_classifier("bert")[:1], "saliency", tokenizer=tiny_classifier("bert")[1]
    )
    with pytest.raises(ValueError, match="reads a token classifier's output; this one explains sequence"):
        sentiment.attribute("the movie was good.", show_progress=False).show_entities()


def test_the_page_of_a_tagger_marks_its_entities_and_carries_their_attributions():
    out = tagged_output("qwen2")
    page = out.to_html()
    for i, seq in enumerate(out):
        section = page.split(f'id="example-{i}"')[1].split("</section>")[0]
        marks = re.findall(
            r'<mark class="entity" data-entity="(\d+)" data-label="(\w+)"[^>]*>([^<]*)<', section
        )
        assert [(label, text) for _, label, text in marks] == [(e.label, e.text) for e in seq.entities()]
    data = json.loads(
        re.search(r'id="seqattr-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</")
    )
    for payload, seq in zip(data["examples"], out, strict=True):
        for given, entity in zip(payload["entities"], seq.entities(), strict=True):
            expected = [None if math.isnan(v) else pytest.approx(v) for v in entity.attributions.tolist()]
            assert given["scores"] == expected and (given["start"], given["end"]) == (
                entity.start,
                entity.end,
            )
    assert 'class="entity-text"' not in tiny_sentiment_page()  # other tasks' pages have no entity block


def tiny_sentiment_page() -> str:
    model, tokenizer = tiny_classifier("bert")
    explainer = seqattr.load_model(model, "saliency", tokenizer=tokenizer)
    return explainer.attribute("the movie was good.", show_progress=False).to_html()


def test_clicking_an_entity_colours_the_input_by_its_attribution(tmp_path):
    from browser import browser_page, chromium_or_skip

    executable = chromium_or_skip()
    out = tagged_output("qwen2")
    path = tmp_path / "entities.html"
    out.save_html(path)
    with browser_page(executable) as page:
        page.open(path)
        assert page.errors() == []
        state = "document.getElementById('example-1').dataset.selectedEntity"
        assert page.evaluate(state) == "0"
        page.mouse('#example-1 mark.entity[data-entity="1"]')
        assert page.evaluate(state) == "1"
        tokens = page.evaluate(
            """Array.from(document.querySelectorAll('#example-1 .entity-scores .tok')).map(e => ({
                score: e.dataset.score, cls: e.className, background: e.style.background }))"""
        )
        entity = out[1].entities()[1]
        assert len(tokens) == len(out[1].source)
        for position, token in enumerate(tokens):
            value = float(entity.attributions[position])
            if math.isnan(value):
                assert token["score"] == "" and "unseen" in token["cls"]
            else:
                assert float(token["score"]) == pytest.approx(value, abs=1e-6)
            assert ("selected" in token["cls"]) == (entity.start <= position < entity.end)
        assert any(token["background"] for token in tokens)
        assert (
            page.evaluate("document.querySelector('#example-1 mark.entity.selected').dataset.entity") == "1"
        )
        assert page.errors() == []


def test_evaluating_a_classifier_output_gives_its_one_steps_metrics():
    # Once refused as not supported; tests/test_classifier_evaluation.py checks every value by hand.
    hf_model, tokenizer = tiny_classifier("bert")
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    out = model.attribute("a good film")
    result = model.evaluate(out, metrics=["comprehensiveness"])
    assert result.steps == [out[0].steps] and result.per_step[0]["comprehensiveness"].shape == (1,)
    assert not result.per_step[0]["comprehensiveness"].isnan().any()
