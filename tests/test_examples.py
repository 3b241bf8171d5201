"""The scripts in examples/ run as documented (the SmolLM2 ones are slow: they need the real weights)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, monkeypatch, tmp_path, *args: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_encoder_decoder_example_runs_offline(monkeypatch, tmp_path, capsys):
    run_example("encoder_decoder.py", monkeypatch, tmp_path)
    printed = capsys.readouterr().out
    assert printed.count("source attributions") == 2 and "[source_len, steps]" in printed


@pytest.mark.slow
def test_quickstart_example(monkeypatch, tmp_path, capsys):
    run_example("quickstart.py", monkeypatch, tmp_path)
    assert "generated: ['ĠParis'" in capsys.readouterr().out
    assert (tmp_path / "quickstart.json").is_file() and (tmp_path / "quickstart.html").is_file()


@pytest.mark.slow
def test_contrastive_debugging_example(monkeypatch, tmp_path, capsys):
    run_example("contrastive_debugging.py", monkeypatch, tmp_path)
    assert "step 0: forced 'ĠBerlin', model preferred 'ĠParis'" in capsys.readouterr().out
