"""The command line, run in-process (``seqattr.cli.main``) on tiny models saved with ``save_pretrained``."""

from __future__ import annotations

import pytest

import seqattr
from exact import assert_sequences_close
from seqattr.cli import main
from seqattr.testing import tiny_model

PROMPT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """Each tiny model saved as a user would have it on disk (weights, config, tokenizer)."""
    saved = {}
    for architecture in ("gpt2", "bart"):
        folder = tmp_path_factory.mktemp(architecture)
        model, tokenizer = tiny_model(architecture)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        saved[architecture] = str(folder)
    return saved


def test_attribute_saves_an_output_that_loads(folders, tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(
        [
            "attribute",
            "-m",
            folders["gpt2"],
            "-a",
            "saliency",
            "-i",
            PROMPT,
            "-o",
            str(path),
            "--max-new-tokens",
            "3",
            "--step-scores",
            "probability",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "saliency" in printed.out  # the heatmap
    assert f"saved to {path}" in printed.err
    loaded = seqattr.load(path)
    seq = loaded.sequence_attributions[0]
    assert seq.num_steps == 3 and seq.source_attributions is None
    assert loaded.info["method"] == "saliency" and loaded.info["engine"] == "fused"
    assert loaded.info["model"] == folders["gpt2"]
    # The same explanation as the Python API gives for the model in memory.
    model, tokenizer = tiny_model("gpt2")
    expected = seqattr.load_model(model, "saliency", tokenizer=tokenizer).attribute(
        PROMPT, generation_args={"max_new_tokens": 3}, step_scores=["probability"], show_progress=False
    )
    assert_sequences_close(seq, expected[0])


def test_attribute_with_forced_targets_options_and_the_stepwise_engine(folders, tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(
        [
            "attribute",
            "-m",
            folders["bart"],
            "-a",
            "input_x_gradient",
            "-i",
            PROMPT,
            "Why",
            "-g",
            "Die Katze sitzt.",
            "Warum",
            "--attribute-target",
            "--option",
            "hidden_reduction=l2",
            "--stepwise",
            "--attr-pos-start",
            "2",
            "--no-show",
            "-o",
            str(path),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == ""  # --no-show
    loaded = seqattr.load(path)
    assert len(loaded) == 2
    assert loaded.info["engine"] == "stepwise"
    assert loaded.info["method_options"]["hidden_reduction"] == "l2"
    for seq in loaded:
        assert seq.attr_pos_start == 2
        assert seq.target_attributions is not None and seq.source_attributions is not None
        assert (seq.source_attributions >= 0).all()  # an l2 norm


def test_methods_and_step_functions_are_listed(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name, description in seqattr.list_methods().items():
        assert name in listed and description in listed
    assert "saliency" in listed and "input_x_gradient" in listed
    assert main(["step-functions"]) == 0
    assert "probability" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-a", "salency"], "unknown attribution method 'salency'; valid methods:"),
        (["--option", "n_steps=3"], "saliency got unknown option"),
        (["--option", "abs"], "--option takes NAME=VALUE"),
        (["--attr-pos-start", "0"], "need 1 <= start < end"),
    ],
)
def test_user_errors_exit_with_code_2_and_a_message(folders, capsys, arguments, message):
    assert main(["attribute", "-m", folders["gpt2"], "-i", PROMPT, "--no-show", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_model_folder_is_a_user_error(tmp_path, capsys):
    assert main(["attribute", "-m", str(tmp_path / "nothing"), "-i", PROMPT]) == 2
    assert "no model folder or file" in capsys.readouterr().err


def test_arguments_are_required(capsys):
    # -i is required unless --question/--context give the inputs: refused with both ways named.
    assert main(["attribute", "-m", "x"]) == 2  # no -i
    assert "needs -i/--input-texts (or, for an extractive QA model, --question" in capsys.readouterr().err
