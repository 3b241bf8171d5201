"""The generation trace's context reliance column, named segments on encoder-decoder models, and
attribute_context run in batches.

``attribute(..., context_parts=[...])`` names the prompt's parts (segments, messages) that are its context;
each step then gets KL(with context || without context) of its next-token distribution, the same output
forced after the prompt without those parts. Checked against running the model by hand on both prompts
(float64), on decoder-only (plain segments and chat messages) and encoder-decoder models, through the views,
the JSON round trip and the command line; absent when no context is named.
"""

from __future__ import annotations

import json

import pytest
import torch

import seqattr
from exact import exact_model, float64_model, probability64
from seqattr.cli import main
from seqattr.testing import tiny_model

DOC = "the cat sat on the mat."
QUESTION = " where is the cat?"
PIECES = [("doc", DOC), ("question", QUESTION)]
REPLY = " on the mat"
OTHER_PIECES = [("doc", "a dog runs home now and then."), ("question", " who runs?")]
OTHER_REPLY = " the dog"


def next_token_logprobs(hf_model, ids: list[int], source: list[int] | None = None) -> torch.Tensor:
    """[len(ids), vocab] float64 log-probabilities: row p predicts token p + 1 of ``ids`` (decoder-only), or
    token p + 1 of the decoder input ``ids`` after the encoder read ``source``."""
    with torch.no_grad():
        if source is None:
            logits = hf_model(input_ids=torch.tensor([ids])).logits[0]
        else:
            logits = hf_model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([ids])).logits[
                0
            ]
    return torch.log_softmax(logits.double(), -1)


def kl_per_step(with_context: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row, float64."""
    return (with_context.exp() * (with_context - without)).sum(-1)


def decoder_only_kl(hf_model, prompt: list[int], contextless: list[int], reply: list[int]) -> torch.Tensor:
    with_context = next_token_logprobs(hf_model, prompt + reply)[len(prompt) - 1 : -1]
    without = next_token_logprobs(hf_model, contextless + reply)[len(contextless) - 1 : -1]
    return kl_per_step(with_context, without)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_decoder_only_context_reliance_is_the_kl_with_and_without_the_context(architecture):
    hf_model, tokenizer = float64_model(architecture)
    model = exact_model(architecture)
    # Two prompts of different lengths in one batch: left padding must not move the numbers.
    out = model.attribute(
        segments=[PIECES, OTHER_PIECES],
        generated_texts=[REPLY, OTHER_REPLY],
        context_parts="doc",
        show_progress=False,
    )
    for seq, pieces, reply in zip(out, [PIECES, OTHER_PIECES], [REPLY, OTHER_REPLY], strict=True):
        prompt = tokenizer(pieces[0][1] + pieces[1][1])["input_ids"]
        contextless = tokenizer(pieces[1][1])["input_ids"]  # the prompt without its "doc" segment
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        assert seq.target_ids == prompt + reply_ids
        expected = decoder_only_kl(hf_model, prompt, contextless, reply_ids)
        assert seq.trace.context_reliance.dtype == torch.float64
        torch.testing.assert_close(seq.trace.context_reliance, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(seq.step_scores["context_reliance"], expected, rtol=0, atol=1e-6)
        assert float(expected.abs().max()) > 1e-3  # the context matters: the check is not 0 == 0
    assert out.info["context_reliance"] == {"metric": "kl_divergence", "context_parts": ["doc"]}
    assert out.info["prompts"][1]["contextless_ids"] == tokenizer(OTHER_PIECES[1][1])["input_ids"]


def test_chat_context_reliance_drops_the_named_messages_and_re_renders_the_conversation():
    hf_model, tokenizer = float64_model("qwen2")
    model = exact_model("qwen2")
    conversation = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": DOC + QUESTION},
    ]
    seq = model.attribute(
        messages=conversation,
        segments=PIECES,
        generated_texts=REPLY,
        context_parts=["system", "doc"],
        show_progress=False,
    )[0]
    render = lambda c: list(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False))  # noqa: E731
    prompt = render(conversation)
    contextless = render([{"role": "user", "content": QUESTION}])  # no system message, no document
    reply = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    expected = decoder_only_kl(hf_model, prompt, contextless, reply)
    torch.testing.assert_close(seq.trace.context_reliance, expected, rtol=0, atol=1e-6)
    assert float(expected.abs().max()) > 1e-3


@pytest.mark.parametrize("architecture", ["bart", "t5"])
def test_encoder_decoder_context_reliance_is_the_kl_with_and_without_the_source_context(architecture):
    hf_model, tokenizer = float64_model(architecture)
    model = exact_model(architecture)
    out = model.attribute(
        segments=[PIECES, OTHER_PIECES],
        generated_texts=[REPLY, OTHER_REPLY],
        context_parts="doc",
        show_progress=False,
    )
    for seq, pieces in zip(out, [PIECES, OTHER_PIECES], strict=True):
        source = tokenizer(pieces[0][1] + pieces[1][1])["input_ids"]
        contextless = tokenizer(pieces[1][1])["input_ids"]
        assert seq.source_ids == source
        decoder = seq.target_ids[:-1]  # teacher forcing: the output's tokens after the decoder start
        expected = kl_per_step(
            next_token_logprobs(hf_model, decoder, source),
            next_token_logprobs(hf_model, decoder, contextless),
        )[seq.attr_pos_start - 1 :]
        torch.testing.assert_close(seq.trace.context_reliance, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(seq.step_scores["context_reliance"], expected, rtol=0, atol=1e-6)
        assert float(expected.abs().max()) > 1e-3


def test_no_context_no_column():
    model = exact_model("gpt2")
    for arguments in (
        {"segments": PIECES, "generated_texts": REPLY},
        {"input_texts": DOC + QUESTION, "generated_texts": DOC + QUESTION + REPLY},
    ):
        seq = model.attribute(**arguments, show_progress=False)[0]
        assert seq.trace.context_reliance is None
        assert "context_reliance" not in seq.step_scores
    seq2seq = exact_model("t5").attribute(DOC, REPLY, show_progress=False)
    assert seq2seq[0].trace.context_reliance is None and "context_reliance" not in seq2seq.info


def test_column_in_views_and_json_round_trip(tmp_path):
    out = exact_model("gpt2").attribute(
        segments=PIECES, generated_texts=REPLY, context_parts="doc", show_progress=False
    )
    path = tmp_path / "out.json"
    out.save(path)
    loaded = seqattr.load(path)
    assert torch.equal(loaded[0].trace.context_reliance, out[0].trace.context_reliance)
    assert torch.equal(loaded[0].step_scores["context_reliance"], out[0].step_scores["context_reliance"])
    assert loaded[0].trace.allclose(out[0].trace)
    from rich.console import Console

    from seqattr.viz.console import trace_table

    console = Console(width=200, record=True)
    console.print(trace_table(out[0]))
    text = console.export_text()
    assert "context reliance" in text
    first = f"{float(out[0].trace.context_reliance[0]):.3f}"
    assert first in text
    from seqattr.viz.html import example_payload

    payload = example_payload(out[0])["trace"]
    assert payload["context_reliance"] == pytest.approx(out[0].trace.context_reliance.tolist())
    assert "context reliance" in out.to_html()
    plain = exact_model("gpt2").attribute(DOC, DOC + REPLY, show_progress=False)
    console = Console(width=200, record=True)
    console.print(trace_table(plain[0]))
    assert "context reliance" not in console.export_text()
    assert example_payload(plain[0])["trace"]["context_reliance"] is None
    # Aggregated over the steps' tokens (words), the trace is sliced with its optional column.
    assert out.aggregate("word")[0] is not None


def test_context_reliance_with_a_method_that_keeps_its_own_logits():
    """Saliency's gradient pass gives the step scores' logits otherwise; with a context the no-grad pass
    runs, so the column is computed from logits of the same kind as the contextless pass's."""
    hf_model, tokenizer = float64_model("gpt2")
    seq = exact_model("gpt2", "saliency").attribute(
        segments=PIECES, generated_texts=REPLY, context_parts=["doc"], attributed_fn=probability64,
        show_progress=False,
    )[0]  # fmt: skip
    prompt = tokenizer(DOC + QUESTION)["input_ids"]
    reply = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    expected = decoder_only_kl(hf_model, prompt, tokenizer(QUESTION)["input_ids"], reply)
    torch.testing.assert_close(seq.trace.context_reliance, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (
            {"input_texts": DOC, "context_parts": "doc"},
            ValueError,
            "context_parts= names parts of the prompt",
        ),
        ({"segments": PIECES, "context_parts": "docs"}, ValueError, "no part named 'docs'; its parts: 'doc'"),
        ({"segments": PIECES, "context_parts": ["doc", "question"]}, ValueError, "cover the whole prompt"),
        ({"segments": PIECES, "context_parts": []}, ValueError, "must name at least one part"),
        ({"segments": PIECES, "context_parts": 3}, TypeError, "a name or a list of names"),
    ],
)
def test_bad_context_parts_are_refused(arguments, error, match):
    with pytest.raises(error, match=match):
        exact_model("gpt2").attribute(generated_texts=REPLY, show_progress=False, **arguments)


def test_cli_context_parts(tmp_path, capsys):
    model, tokenizer = tiny_model("qwen2")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    chat = tmp_path / "chat.json"
    conversation = [{"role": "system", "content": DOC}, {"role": "user", "content": QUESTION}]
    chat.write_text(json.dumps(conversation))
    saved = tmp_path / "out.json"
    arguments = ["attribute", "-m", str(folder), "--messages", str(chat), "-g", REPLY, "-o", str(saved)]
    assert main([*arguments, "--context-parts", "system"]) == 0
    printed = capsys.readouterr().out
    assert "context reliance" in printed
    seq = seqattr.load(saved)[0]
    api = seqattr.load_model(model, "saliency", tokenizer=tokenizer).attribute(
        messages=conversation, generated_texts=REPLY, context_parts="system", show_progress=False
    )[0]
    torch.testing.assert_close(seq.trace.context_reliance, api.trace.context_reliance)
    assert main([*arguments, "--context-parts", "assistant"]) == 2
    assert "no message has that name" in capsys.readouterr().err
    assert main(["attribute", "-i", "x", "--context-parts", "system"]) == 2
    assert "give it with --messages" in capsys.readouterr().err


# --- attribute_context in batches -------------------------------------------------------------------------

CURRENTS = ["the cat sat on the", "a bird", "the sky over the old town is"]
CONTEXTS = ["a dog ran home", "it was a cold and rainy day in the north", "night"]
OUTPUTS = ["mat and the dog sat", "flew over", "dark and the dog ran home"]


def assert_same_results(batched, single) -> None:
    """Same tokens, selections and cues; scores equal to float64 rounding."""
    assert batched.output_current_tokens == single.output_current_tokens
    torch.testing.assert_close(
        torch.tensor(batched.cti_scores), torch.tensor(single.cti_scores), rtol=1e-9, atol=1e-9
    )
    assert [t.index for t in batched.sensitive_tokens] == [t.index for t in single.sensitive_tokens]
    for a, b in zip(batched.sensitive_tokens, single.sensitive_tokens, strict=True):
        assert [(c.token, c.side, c.position) for c in a.cues] == [
            (c.token, c.side, c.position) for c in b.cues
        ]
        for name in ("input_context_scores", "output_context_scores"):
            mine, theirs = getattr(a, name), getattr(b, name)
            assert (mine is None) == (theirs is None)
            if mine is not None:
                torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=1e-9, atol=1e-9)
    assert batched.input_context_tokens == single.input_context_tokens
    assert batched.output_context_tokens == single.output_context_tokens
    assert batched.info == single.info


def count_calls(model, monkeypatch) -> list:
    calls = []
    original = model.attribute

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "attribute", counted)
    return calls


@pytest.mark.parametrize("architecture", ["gpt2", "bart", "t5"])
def test_attribute_context_on_a_list_equals_one_call_per_example(architecture, monkeypatch):
    model = exact_model(architecture)
    calls = count_calls(model, monkeypatch)
    batched = model.attribute_context(CURRENTS, CONTEXTS, output_current_text=OUTPUTS)
    assert len(calls) == 1 and len(calls[0]) == 3  # one batched call for the three examples
    single = [
        model.attribute_context(current, context, output_current_text=output)
        for current, context, output in zip(CURRENTS, CONTEXTS, OUTPUTS, strict=True)
    ]
    assert len(batched) == 3
    for a, b in zip(batched, single, strict=True):
        assert_same_results(a, b)


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_attribute_context_batches_with_output_contexts_and_generation(architecture):
    model = exact_model(architecture)
    # A shared input context (one text for every example), an output context each, one generated output.
    outputs = [OUTPUTS[0], None, OUTPUTS[2]]
    output_contexts = ["the end.", None, "so"]
    batched = model.attribute_context(
        CURRENTS, "a dog ran home", outputs, output_contexts, generation_args={"max_new_tokens": 3}
    )
    for k in range(3):
        single = model.attribute_context(
            CURRENTS[k],
            "a dog ran home",
            outputs[k],
            output_contexts[k],
            generation_args={"max_new_tokens": 3},
        )
        assert_same_results(batched[k], single)


def test_attribute_context_lists_are_checked():
    model = exact_model("gpt2")
    with pytest.raises(ValueError, match="different lengths"):
        model.attribute_context(CURRENTS, CONTEXTS[:2], output_current_text=OUTPUTS)
    with pytest.raises(ValueError, match="example 1: input_context_text must be a non-empty string"):
        model.attribute_context(CURRENTS, ["a", "", "b"], output_current_text=OUTPUTS)
    with pytest.raises(ValueError, match="empty list"):
        model.attribute_context([], "a dog ran home")
