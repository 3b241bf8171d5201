"""Classifiers, finished (issue 14): RoBERTa's position offset in the length check, multi-label classifiers,
the entity-span view, taggers and readers on more architectures, and the CLI for pairs and QA."""

from __future__ import annotations

import warnings

import pytest
import transformers

import seqattr
from seqattr.testing import CLASSIFIER_RECIPES, tiny_classifier

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
