"""Named segments on encoder-decoder models (parts of the source) and dataset runs with conversations and
segments in columns.

An encoder-decoder's segments are pieces of its source: a perturbation method perturbs a segment's source
tokens together, so its score is that of perturbing them by hand; the output has one source row per segment.
A dataset run reads a column of conversations (and one of segments) and gives the rows that direct
``attribute(messages=..., segments=...)`` calls give.
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch

import seqattr
from exact import assert_close, exact_model, float64_model, probability64
from seqattr.testing import tiny_model

DOC = "the cat sat on the mat."
QUESTION = " where is the cat?"
PIECES = [("doc", DOC), ("question", QUESTION)]
REPLY = " on the mat"


def decoder_probabilities(hf_model, source: list[int], target: list[int]) -> torch.Tensor:
    """p(target[t + 1] | source, target[: t + 1]) for every t (float64)."""
    with torch.no_grad():
        logits = hf_model(
            input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target[:-1]])
        ).logits
    probabilities = torch.softmax(logits[0].double(), -1)
    return probabilities.gather(-1, torch.tensor(target[1:])[:, None])[:, 0]


@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
@pytest.mark.parametrize("architecture", ["bart", "t5"])
def test_encoder_decoder_segment_score_equals_perturbing_the_segment_by_hand(architecture, method):
    hf_model, tokenizer = float64_model(architecture)
    baseline = tokenizer.pad_token_id
    model = exact_model(architecture, method, baseline=baseline)
    out = model.attribute(
        segments=PIECES,
        generated_texts=REPLY,
        granularity="segment",
        attributed_fn=probability64,
        show_progress=False,
    )
    seq = out[0]
    source = tokenizer(DOC + QUESTION)["input_ids"]
    shown = [t for i, t in enumerate(seq.source) if i not in seq.masked_source]
    assert shown == ["doc", "question"]  # the source's special tokens are masked rows of their own
    segments = out.info["prompts"][0]["segments"]
    for segment, (_, text) in zip(segments, PIECES, strict=True):
        assert tokenizer.decode(source[segment["start"] : segment["end"]]).strip() == text.strip()
    clean = decoder_probabilities(hf_model, source, seq.target_ids)[seq.attr_pos_start - 1 :]
    for segment in segments:
        edited = list(source)
        edited[segment["start"] : segment["end"]] = [baseline] * (segment["end"] - segment["start"])
        perturbed = decoder_probabilities(hf_model, edited, seq.target_ids)[seq.attr_pos_start - 1 :]
        expected = clean - perturbed
        row = seq.source.index(segment["name"])
        assert_close(seq.source_attributions[row], expected, scale=float(expected.abs().max()))
        assert float(expected.abs().max()) > 1e-6


def test_encoder_decoder_gradient_scores_add_up_per_segment():
    model = exact_model("bart", "input_x_gradient")
    tokens = model.attribute(DOC + QUESTION, REPLY, show_progress=False)[0]
    parts = model.attribute(
        segments=PIECES, generated_texts=REPLY, granularity="segment", show_progress=False
    )
    spans = parts.info["prompts"][0]["segments"]
    seq = parts[0]
    for span in spans:
        expected = tokens.source_attributions[span["start"] : span["end"]].sum(0)
        assert_close(seq.source_attributions[seq.source.index(span["name"])], expected)
    # The text's own tokens merged, the special tokens (masked) kept: <s>, doc, question, </s>.
    assert seq.source == ["<s>", "doc", "question", "</s>"] and list(seq.masked_source) == [0, 3]


def test_parts_that_cannot_apply_are_refused():
    t5 = exact_model("t5")
    with pytest.raises(ValueError, match="messages= are for decoder-only chat models"):
        t5.attribute(messages=[{"role": "user", "content": "hi"}], show_progress=False)
    with pytest.raises(ValueError, match="segment 'doc' .* is not in the prompt"):
        t5.attribute("a dog", segments=[("doc", "the cat")], show_progress=False)
    hf_marian, marian_tokenizer = tiny_model("marian")  # Marian has no fast tokenizer
    marian = seqattr.load_model(hf_marian, "saliency", tokenizer=marian_tokenizer)
    with pytest.raises(ValueError, match="need a fast tokenizer"):
        marian.attribute(segments=PIECES, generated_texts=REPLY, show_progress=False)


# --- dataset runs ---------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": DOC + QUESTION}],
    [{"role": "user", "content": "a dog runs home. who runs?"}],
    [{"role": "system", "content": "Answer."}, {"role": "user", "content": "the sky is blue. what is blue?"}],
]
REPLIES = [REPLY, " the dog", " the sky"]
SEGMENTS = [PIECES, [("doc", "a dog runs home."), ("question", " who runs?")],
            [("doc", "the sky is blue."), ("question", " what is blue?")]]  # fmt: skip


def chat_model(method: str = "occlusion") -> seqattr.AttributionModel:
    model, tokenizer = float64_model("qwen2")  # the zoo's tiny Qwen2 ships a ChatML template
    return seqattr.load_model(model, method, tokenizer=tokenizer)


def test_dataset_run_of_conversations_equals_direct_calls(tmp_path):
    model = chat_model()
    data = datasets.Dataset.from_dict(
        {"chat": CONVERSATIONS, "reply": REPLIES, "parts": [[list(p) for p in s] for s in SEGMENTS]}
    )
    arguments = {"granularity": "segment", "context_parts": "doc"}
    run = model.attribute_dataset(
        data,
        output_dir=tmp_path / "run",
        messages_column="chat",
        segments_column="parts",
        target_column="reply",
        batch_size=2,
        show_progress=False,
        **arguments,
    )
    assert len(run) == 3 and not run.errors
    for row, seq in run:
        direct = model.attribute(
            messages=CONVERSATIONS[row],
            segments=SEGMENTS[row],
            generated_texts=REPLIES[row],
            show_progress=False,
            **arguments,
        )[0]
        assert seq.target == direct.target and seq.target_ids == direct.target_ids
        assert seq.token_roles == direct.token_roles and seq.masked_target == direct.masked_target
        assert_close(seq.target_attributions, direct.target_attributions)
        torch.testing.assert_close(seq.trace.context_reliance, direct.trace.context_reliance)


def test_dataset_run_of_conversations_without_segments_and_generated_replies(tmp_path):
    model = chat_model("saliency")
    data = datasets.Dataset.from_dict({"chat": CONVERSATIONS})
    run = model.attribute_dataset(
        data,
        output_dir=tmp_path / "run",
        messages_column="chat",
        generation_args={"max_new_tokens": 3},
        show_progress=False,
    )
    for row, seq in run:
        direct = model.attribute(
            messages=CONVERSATIONS[row], generation_args={"max_new_tokens": 3}, show_progress=False
        )[0]
        assert seq.target_ids == direct.target_ids
        assert_close(seq.target_attributions, direct.target_attributions)


def test_dataset_run_of_segments_making_the_prompt_on_an_encoder_decoder(tmp_path):
    model = exact_model("bart", "occlusion")
    data = datasets.Dataset.from_dict({"parts": [[list(p) for p in s] for s in SEGMENTS], "target": REPLIES})
    run = model.attribute_dataset(
        data,
        output_dir=tmp_path / "run",
        input_column=None,
        segments_column="parts",
        target_column="target",
        granularity="segment",
        show_progress=False,
    )
    for row, seq in run:
        direct = model.attribute(
            segments=SEGMENTS[row], generated_texts=REPLIES[row], granularity="segment", show_progress=False
        )[0]
        assert seq.source == direct.source
        assert_close(seq.source_attributions, direct.source_attributions)


def test_dataset_run_refusals(tmp_path):
    data = datasets.Dataset.from_dict({"chat": CONVERSATIONS})
    gpt2 = exact_model("gpt2")  # no chat template
    with pytest.raises(ValueError, match="has no chat template"):
        gpt2.attribute_dataset(data, output_dir=tmp_path / "a", messages_column="chat", show_progress=False)
    with pytest.raises(ValueError, match="messages= are for decoder-only chat models"):
        exact_model("t5").attribute_dataset(
            data, output_dir=tmp_path / "b", messages_column="chat", show_progress=False
        )
    with pytest.raises(TypeError, match="differs per row in a dataset run"):
        chat_model().attribute_dataset(
            data, output_dir=tmp_path / "c", messages=CONVERSATIONS[0], show_progress=False
        )
    with pytest.raises(ValueError, match="context_parts= names parts of each row's prompt"):
        gpt2.attribute_dataset(
            datasets.Dataset.from_dict({"text": ["a"]}),
            output_dir=tmp_path / "d",
            context_parts="doc",
            show_progress=False,
        )
    with pytest.raises(ValueError, match="messages_column='talk' is not a column"):
        chat_model().attribute_dataset(
            data, output_dir=tmp_path / "e", messages_column="talk", show_progress=False
        )
    # A row whose conversation is bad is recorded with the reason, the others run.
    bad = datasets.Dataset.from_dict(
        {"chat": [CONVERSATIONS[1], [{"role": "robot", "content": "x"}]], "reply": REPLIES[:2]}
    )
    run = chat_model("saliency").attribute_dataset(
        bad, output_dir=tmp_path / "f", messages_column="chat", target_column="reply", show_progress=False
    )
    assert [row for row, _ in run] == [0]
    assert "unknown role 'robot'" in run.errors[0]["error"]


def test_cli_dataset_run_with_a_messages_column(tmp_path, capsys):
    from seqattr.cli import main

    hf_model, tokenizer = tiny_model("qwen2")
    folder = tmp_path / "model"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = tmp_path / "chats.jsonl"
    data.write_text(
        "".join(
            json.dumps({"chat": c, "reply": r}) + "\n" for c, r in zip(CONVERSATIONS, REPLIES, strict=True)
        )
    )
    arguments = ["attribute-dataset", str(data), "-m", str(folder), "-o", str(tmp_path / "run")]
    flags = ["--messages-column", "chat", "--target-column", "reply", "--context-parts", "user"]
    assert main([*arguments, *flags]) == 0
    model = seqattr.load_model(hf_model, "saliency", tokenizer=tokenizer)
    run = seqattr.load_dataset_output(tmp_path / "run")
    # Row 1 has no message but the user's: without it nothing is left to compare with (recorded, skipped).
    assert [e["row"] for e in run.errors] == [1] and "cover the whole conversation" in run.errors[0]["error"]
    assert len(run) == 2
    for row, seq in run:
        direct = model.attribute(
            messages=CONVERSATIONS[row],
            generated_texts=REPLIES[row],
            context_parts="user",
            show_progress=False,
        )[0]
        assert seq.target_ids == direct.target_ids and seq.token_roles == direct.token_roles
        torch.testing.assert_close(seq.trace.context_reliance, direct.trace.context_reliance)
    capsys.readouterr()
    assert main([*arguments[:-1], str(tmp_path / "other"), "--context-parts", "user"]) == 2
    assert "give --messages-column or --segments-column" in capsys.readouterr().err
