"""attribute_context (PECoRe): CTI and CCI checked against direct computations on tiny models of both
families."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

import seqattr
from conftest import attribution_model
from seqattr.cli import main
from seqattr.context_attribution import ContextAttributionOutput, score_threshold, select_scores
from seqattr.testing import tiny_model

CONTEXT = "a dog ran home"
CURRENT = "the cat sat on the"
OUTPUT = "mat and the dog sat"


def _kl(with_context: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from logits, written out."""
    p, q = with_context.log_softmax(-1), without.log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def _direct_selection(scores: list[float], n_std: float) -> list[int]:
    values = torch.tensor(scores, dtype=torch.float64)
    threshold = values.mean() + n_std * values.std()
    return sorted(i for i, s in enumerate(scores) if abs(s) >= threshold)


def _decoder_only_direct_kl(architecture: str) -> tuple[list[str], list[float]]:
    """Run the HF model by hand on the prompt with and without the context, the output forced in both."""
    model, tok = tiny_model(architecture)
    with_ids = tok(f"{CONTEXT} {CURRENT} {OUTPUT}")["input_ids"]
    prompt_ids = tok(f"{CONTEXT} {CURRENT}")["input_ids"]
    assert with_ids[: len(prompt_ids)] == prompt_ids
    continuation = with_ids[len(prompt_ids) :]
    without_ids = tok(CURRENT)["input_ids"] + continuation
    with torch.no_grad():
        a = model(torch.tensor([with_ids])).logits[0, len(prompt_ids) - 1 : -1]
        b = model(torch.tensor([without_ids])).logits[0, len(without_ids) - len(continuation) - 1 : -1]
    return tok.convert_ids_to_tokens(continuation), _kl(a, b).tolist()


def _encoder_decoder_direct_kl(architecture: str) -> tuple[list[str], list[float]]:
    model, tok = tiny_model(architecture)
    labels = tok(text_target=OUTPUT)["input_ids"]
    decoder_input = [model.config.decoder_start_token_id] + labels[:-1]
    with torch.no_grad():
        a, b = (
            model(
                input_ids=torch.tensor([tok(source)["input_ids"]]),
                decoder_input_ids=torch.tensor([decoder_input]),
            ).logits[0]
            for source in (f"{CONTEXT} {CURRENT}", CURRENT)
        )
    kl = _kl(a, b).tolist()
    special = set(tok.all_special_ids)
    keep = [i for i, t in enumerate(labels) if t not in special]  # CTI scores the output's own tokens only
    return tok.convert_ids_to_tokens([labels[i] for i in keep]), [kl[i] for i in keep]


@pytest.mark.parametrize("architecture", ["gpt2", "bart", "t5"])
@pytest.mark.parametrize("n_std", [1.0, 0.0])
def test_cti_selects_exactly_the_tokens_whose_kl_passes_mean_plus_std(architecture, n_std):
    model = attribution_model(architecture)
    direct = _decoder_only_direct_kl if architecture == "gpt2" else _encoder_decoder_direct_kl
    tokens, kl = direct(architecture)
    result = seqattr.attribute_context(
        model, CURRENT, CONTEXT, output_current_text=OUTPUT, context_sensitivity_std_threshold=n_std
    )
    assert result.output_current_tokens == tokens
    assert result.cti_scores == pytest.approx(kl, rel=1e-4, abs=1e-6)
    expected = _direct_selection(kl, n_std)
    assert 0 < len(expected) < len(kl)  # the threshold splits the tokens: the check can fail
    assert sorted(t.index for t in result.sensitive_tokens) == expected
    assert [t.token for t in result.sensitive_tokens] == [
        tokens[i] for i in sorted(expected, key=lambda i: -abs(kl[i]))
    ]
    assert result.cti_threshold == pytest.approx(score_threshold(kl, n_std), rel=1e-5)


def test_cti_top_k_keeps_the_k_most_sensitive_tokens():
    model = attribution_model("gpt2")
    tokens, kl = _decoder_only_direct_kl("gpt2")
    result = seqattr.attribute_context(
        model, CURRENT, CONTEXT, OUTPUT, context_sensitivity_std_threshold=None, context_sensitivity_topk=2
    )
    assert [t.index for t in result.sensitive_tokens] == sorted(range(len(kl)), key=lambda i: -kl[i])[:2]


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_cues_equal_a_direct_contrastive_attribution_restricted_to_the_context(architecture):
    model = attribution_model(architecture)
    _, tok = tiny_model(architecture)
    result = seqattr.attribute_context(
        model, CURRENT, CONTEXT, OUTPUT, context_sensitivity_std_threshold=0.0, attribution_std_threshold=0.5
    )
    assert result.sensitive_tokens
    context_ids = [t for t in tok(CONTEXT)["input_ids"] if t not in tok.all_special_ids]
    assert result.input_context_tokens == tok.convert_ids_to_tokens(context_ids)
    prompt = f"{CONTEXT} {CURRENT}"
    for token in result.sensitive_tokens:
        if architecture == "gpt2":
            forced, start = f"{prompt} {OUTPUT}", len(tok(prompt)["input_ids"])
        else:
            forced, start = OUTPUT, 1  # after the decoder start token
        position = start + token.index
        direct = model.attribute(
            prompt,
            forced,
            attributed_fn="contrast_prob_diff",
            contrast_sources=CURRENT,
            attr_pos_start=position,
            attr_pos_end=position + 1,
            show_progress=False,
        )[0]
        assert direct.steps == [token.token]
        attributions = direct.target_attributions if architecture == "gpt2" else direct.source_attributions
        # The context opens the prompt: its tokens are the first len(context_ids) positions.
        assert direct.source_ids[: len(context_ids)] == context_ids or direct.target_ids[
            : len(context_ids)
        ] == (context_ids)
        expected = attributions[: len(context_ids), 0].tolist()
        assert token.input_context_scores == pytest.approx(expected, rel=1e-4, abs=1e-7)
        chosen, threshold = select_scores(expected, 0.5, None)
        assert [c.position for c in token.cues] == chosen
        assert [c.score for c in token.cues] == pytest.approx(
            [expected[i] for i in chosen], rel=1e-4, abs=1e-7
        )
        assert token.cue_threshold == pytest.approx(threshold, rel=1e-4)


def test_output_context_is_scored_as_cues_and_excluded_from_cti():
    model = attribution_model("bart")
    result = seqattr.attribute_context(
        model, CURRENT, CONTEXT, OUTPUT, output_context_text="le chien", context_sensitivity_std_threshold=0.0
    )
    _, tok = tiny_model("bart")
    context = tok(text_target="le chien")["input_ids"][1:-1]  # without BOS and EOS
    labels = tok(text_target=f"le chien {OUTPUT}")["input_ids"]
    assert labels[1 : 1 + len(context)] == context
    current = labels[1 + len(context) : -1]
    assert result.output_context_tokens == tok.convert_ids_to_tokens(context)
    assert result.output_current_tokens == tok.convert_ids_to_tokens(current)
    assert result.sensitive_tokens
    for token in result.sensitive_tokens:
        position = 2 + len(context) + token.index  # decoder start, BOS, the output context, then the current
        direct = model.attribute(
            f"{CONTEXT} {CURRENT}",
            f"le chien {OUTPUT}",
            attributed_fn="contrast_prob_diff",
            contrast_sources=CURRENT,
            contrast_targets=OUTPUT,
            contrast_targets_alignments="auto",
            attribute_target=True,
            attr_pos_start=position,
            attr_pos_end=position + 1,
            show_progress=False,
        )[0]
        assert direct.steps == [token.token]
        expected = direct.target_attributions[2 : 2 + len(context), 0].tolist()
        assert token.output_context_scores == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert {c.side for c in token.cues} <= {"input", "output"}


@pytest.mark.parametrize("architecture", ["gpt2", "t5"])
def test_generated_output_and_json_round_trip(architecture, tmp_path):
    model = attribution_model(architecture)
    _, tok = tiny_model(architecture)
    result = seqattr.attribute_context(model, CURRENT, CONTEXT, generation_args={"max_new_tokens": 5})
    # The generated tokens without the special ones (an encoder-decoder's start and end tokens).
    generated = model.attribute(
        f"{CONTEXT} {CURRENT}", generation_args={"max_new_tokens": 5}, show_progress=False
    )
    seq = generated[0]
    ids = seq.target_ids[seq.attr_pos_start : seq.attr_pos_end]
    steps = [t for t, i in zip(seq.steps, ids, strict=True) if i not in tok.all_special_ids]
    assert result.output_current_tokens == steps and len(result.cti_scores) == len(steps) > 0
    path = tmp_path / "pecore.json"
    result.save(path)
    again = ContextAttributionOutput.load(path)
    assert again == result
    assert json.loads(path.read_text())["format"] == "seqattr-context-attribution"
    buffer = io.StringIO()
    again.show(Console(file=buffer, width=120))
    assert result.cti_metric in buffer.getvalue()
    html = result.to_html()
    assert html.startswith("<!DOCTYPE html>") and "Context reliance" in html
    result.save_html(tmp_path / "pecore.html")
    assert (tmp_path / "pecore.html").read_text(encoding="utf-8") == html


def test_a_file_that_is_not_a_result_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "seqattr"}))
    with pytest.raises(ValueError, match="not a saved attribute_context result"):
        ContextAttributionOutput.load(path)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"input_context_text": ""}, "input_context_text must be a non-empty string"),
        ({"input_context_text": None}, "needs a context"),
        ({"input_template": "{current}"}, r"no \{context\} placeholder"),
        ({"input_template": "{context}"}, r"no \{current\} placeholder"),
        ({"input_template": "{context} {question}"}, r"\['question'\]"),
        ({"contextless_input_current_text": "{context} {current}"}, "no context was given"),
        ({"output_context_text": "le"}, "needs the output_current_text"),
        ({"context_sensitivity_metric": "probability"}, "does not compare"),
        ({"context_sensitivity_topk": 0}, "context_sensitivity_topk must be a positive integer"),
        ({"output_current_text": "mat", "output_template": "{current} ."}, "must end with {current}"),
    ],
)
def test_bad_input_gets_a_clear_error(arguments, message):
    model = attribution_model("gpt2")
    call = {"input_context_text": CONTEXT, "generation_args": {"max_new_tokens": 2}, **arguments}
    with pytest.raises(ValueError, match=message):
        seqattr.attribute_context(model, CURRENT, **call)


def test_a_forced_output_that_does_not_fit_the_prompt_is_refused():
    """With no separator, "n" glues onto the prompt's last token "Ġo" ("Ġon"): the prompt's tokens change."""
    model = attribution_model("gpt2")
    with pytest.raises(ValueError, match="output_current_text='n the mat' does not fit after the prompt"):
        seqattr.attribute_context(
            model,
            "the cat sat o",
            CONTEXT,
            output_current_text="n the mat",
            decoder_input_output_separator="",
        )


def test_the_command_line_saves_json_and_html(tmp_path, capsys):
    model, tok = tiny_model("gpt2")
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    json_path, html_path = tmp_path / "out.json", tmp_path / "out.html"
    flags = [
        "-i",
        CURRENT,
        "-c",
        CONTEXT,
        "--output-current-text",
        OUTPUT,
        "--context-sensitivity-std-threshold",
    ]
    code = main(
        ["attribute-context", "-m", str(folder), *flags, "0", "-o", str(json_path), "--html", str(html_path)]
    )
    assert code == 0
    saved = ContextAttributionOutput.load(json_path)
    direct = seqattr.attribute_context(
        attribution_model("gpt2"), CURRENT, CONTEXT, OUTPUT, context_sensitivity_std_threshold=0.0
    )
    assert saved.cti_scores == pytest.approx(direct.cti_scores, rel=1e-5)
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "Context sensitivity" in capsys.readouterr().out
    assert main(["attribute-context", "-m", str(folder), "-i", CURRENT, "-c", ""]) == 2
    assert "input_context_text must be a non-empty string" in capsys.readouterr().err
