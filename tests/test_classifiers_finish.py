"""Classifiers, finished (issue 14): RoBERTa's position offset in the length check, multi-label classifiers,
the entity-span view, taggers and readers on more architectures, and the CLI for pairs and QA."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import transformers

import seqattr
from seqattr.cli import main
from seqattr.testing import CLASSIFIER_RECIPES, tiny_classifier, tiny_task_model

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
