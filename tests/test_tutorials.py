"""The tutorial notebooks in docs/tutorials/ run from top to bottom (executed by nbclient in a fresh kernel,
the hub unreachable: hub models fall back to the offline ones with a visible note), print what their text
promises, and show the rich notebook views: the interactive page of an `AttributionOutput` and of a
`SequenceAttribution`, and treescope's heatmap of a raw attribution tensor, as ``text/html`` outputs.
"""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"
ROOT = TUTORIALS.parent.parent


def execute(name: str, tmp_path, monkeypatch):
    """The notebook executed in a fresh kernel (in ``tmp_path``, this checkout's seqattr, the hub offline).
    A cell that raises fails the test with its traceback."""
    try:
        import nbclient
        import nbformat
    except ImportError as error:
        pytest.fail(
            f"{error.name} is missing: the notebook runners are dev dependencies, pip install -e '.[dev]'"
        )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once instead of retrying the unreachable hub
    # One torch thread in the kernel, as in the test process (tests/conftest.py): with other processes on
    # two cores, torch's default threads spin against each other (the SmolLM2 tutorial took 110 s, not 20).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return notebook


def outputs(notebook, source_start: str) -> list[dict]:
    """The outputs of the code cell whose source starts with ``source_start``."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, f"no single cell starts with {source_start!r}"
    return cells[0].outputs


def printed(notebook) -> str:
    return "".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )


def html_of(cell_outputs: list[dict]) -> str:
    found = [o["data"]["text/html"] for o in cell_outputs if "text/html" in o.get("data", {})]
    assert found, f"no text/html output among {[o.get('output_type') for o in cell_outputs]}"
    return "".join(found)


@pytest.mark.parametrize("name", sorted(p.name for p in TUTORIALS.glob("*.ipynb")))
def test_notebooks_are_stored_without_outputs(name):
    """Outputs would go stale (and bloat diffs): the site renders the code, the tests run it."""
    import json

    notebook = json.loads((TUTORIALS / name).read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_translation_tutorial(tmp_path, monkeypatch):
    notebook = execute("translation_analysis.ipynb", tmp_path, monkeypatch)
    text = printed(notebook)
    # The hub model is unreachable here: the tutorial says so and runs on the tiny local Marian.
    assert "NOTE: Helsinki-NLP/opus-mt-en-fr could not be loaded" in text
    assert "mean source share:" in text and text.count("target prefix") >= 3
    assert text.count(" <- ") >= 2  # one alignment per target word
    assert text.count("mean Spearman rho") == 3  # three pairs of methods

    # The rich views: the interactive page inside an iframe, for the output and for one example, with the
    # example's tokens in its data.
    pages = {}
    for cell in ("out  #", "seq  #"):
        page = html_of(outputs(notebook, cell))
        assert page.startswith("<iframe srcdoc=")
        pages[cell] = html_lib.unescape(page)
        assert '<script type="application/json" id="seqattr-data">' in pages[cell]
        assert '"▁cat"' in pages[cell] and '"▁mat"' in pages[cell]
    assert "<b>method</b>: integrated_gradients" in pages["out  #"]  # the output's info line
    # The raw [source, steps, hidden] tensor as treescope's labelled heatmap.
    raw = html_of(outputs(notebook, "import treescope"))
    assert "treescope" in raw and "<script" in raw
    assert "raw saliency: (9," in text and ", 64) = [source tokens, steps, hidden]" in text


@pytest.mark.slow
def test_generation_debugging_tutorial(tmp_path, monkeypatch):
    notebook = execute("generation_debugging.ipynb", tmp_path, monkeypatch)
    text = printed(notebook)
    assert "off the greedy path: []" in text  # greedy generation never leaves it
    assert "step 0: forced 'ĠBerlin'" in text and "the model preferred 'ĠParis'" in text
    assert "contrast: 'The capital of France is Paris'" in text
    assert "(towards 'ĠParis')" in text
    assert html_of(outputs(notebook, "seq.show()"))  # rich's console output renders as HTML in notebooks


@pytest.mark.slow
def test_chat_over_documents_tutorial(tmp_path, monkeypatch):
    notebook = execute("chat_over_documents.ipynb", tmp_path, monkeypatch)
    text = printed(notebook)
    assert "<|im_start|>user\nIn which city does Anna Keller work?<|im_end|>" in text  # the chat template
    assert "answer: 'Anna Keller works as a baker in Paris" in text
    # The spans found from the offset mapping hold the documents' whole texts.
    assert "Document 1 tokens" in text and "'Document 1: Anna Keller works as a baker in Paris." in text
    assert "['mask_special', 'aggregate(spans)', 'normalize']" in text
    # The answer's city cites the document that holds it: as written, with the documents swapped, with
    # another method, and for the contrastive question (its document order is the original one).
    citations = re.findall(r"^'Paris' \(step \d+\) relies most on (Document \d)", text, flags=re.MULTILINE)
    assert citations == ["Document 1", "Document 2", "Document 1", "Document 1"]
    assert "the citation follows the content: True" in text
    assert "input x gradient agrees with saliency: True" in text
    # Four citation tables: the answer, swapped, input x gradient, the contrast.
    assert text.count("Document 1  Document 2    question   other  cites") == 4
    # With p'(Berlin) near 0, p(Paris) - p'(Berlin) is attributed like p(Paris) itself.
    shares = re.search(r"share (\d+)% \(plain saliency of p\(Paris\): (\d+)%\)", text)
    contrast, plain = map(int, shares.groups())
    assert abs(contrast - plain) <= 1
    assert "top tokens: 'ĠParis' in Document 1" in text  # the word the answer copies

    # The aggregated output as the interactive page: one merged row per document.
    page = html_of(outputs(notebook, "cited  #"))
    assert page.startswith("<iframe srcdoc=")
    page = html_lib.unescape(page)
    assert '<script type="application/json" id="seqattr-data">' in page
    assert "DocumentĠ1:ĠAnnaĠKeller" in page and '"ĠParis"' in page
