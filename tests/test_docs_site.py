"""The documentation site builds with ``mkdocs build --strict`` (a broken link or reference fails), its
reference pages are generated from the code (every public name, method, step function and CLI subcommand
appears, and a newly registered method joins them), and the HTML view keeps its layout at common window sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import seqattr
from browser import browser_page, chromium_or_skip
from seqattr.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "docs" / "hooks" / "reference.py"
IMAGES = ROOT / "docs" / "images"


def load_hook():
    spec = importlib.util.spec_from_file_location("seqattr_docs_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once, strictly, into a temporary folder."""
    for tool in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(tool.split(".")[0]) is None:
            pytest.fail(
                f"{tool} is not installed: the documentation tools are dev dependencies "
                "(pip install -e '.[dev]')"
            )
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def text_of(html: str) -> str:
    """The page's text without tags (entities of quotes and angle brackets decoded)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_api_reference_documents_every_public_name(site):
    anchors = set(re.findall(r'id="([^"]+)"', page(site, "reference/api") + page(site, "reference/outputs")))
    missing = [name for name in seqattr.__all__ if f"seqattr.{name}" not in anchors]
    assert missing == []
    # Members are documented too, e.g. the method that does the work.
    assert "seqattr.AttributionModel.attribute" in anchors and "seqattr.AttributionOutput.show" in anchors
    assert "seqattr.trace.GenerationTrace" in anchors
    from seqattr import analysis

    assert all(f"seqattr.analysis.{name}" in anchors for name in analysis.__all__)
    # The docstrings' "Example:" doctests render as code (docs/hooks/griffe_examples.py), not as ">>>" block
    # quotes with their "#0 saliency" output turned into a heading.
    api = page(site, "reference/api")
    assert "<blockquote>" not in api and not any("--0-" in anchor for anchor in anchors)
    assert ">>> out.show()" in text_of(api)


def test_methods_reference_lists_every_method_with_its_options(site):
    html = page(site, "reference/methods")
    text = text_of(html)
    for name in seqattr.list_methods():
        assert f'id="{name}"' in html, name
    # Option tables come from the Options dataclasses, with the fields' docstrings.
    section = text[text.index("integrated_gradients¶") :]
    assert "n_steps" in section and "Integration points per path." in section
    # A method without options says so (attention_rollout has none).
    rollout = text[text.index("attention_rollout¶") :]
    assert rollout.index("This method has no options.") < rollout.index("deeplift¶")


def test_step_function_and_cli_references(site):
    text = text_of(page(site, "reference/step_functions"))
    for name, description in seqattr.list_step_functions().items():
        assert name in text and " ".join(description.split()) in text, name
    assert "top_k=0" in text  # kl_divergence's options, read from its signature

    cli = text_of(page(site, "reference/cli"))
    subcommands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in subcommands.choices.items():
        assert f"usage: seqattr {name}" in cli, name
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in cli, (name, flag)


def test_tutorials_and_guides_are_in_the_site(site):
    for name in ("translation_analysis", "generation_debugging", "chat_over_documents"):
        text = text_of(page(site, f"tutorials/{name}"))
        assert "import seqattr" in text
        assert (site / "tutorials" / f"{name}.ipynb").is_file()  # linked for download
    assert (site / "images" / "html_1400x900.png").is_file()
    # Material's built-in search: the index holds the generated pages too.
    index = (site / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "reference/methods/#sequential_integrated_gradients" in index


def test_a_new_method_appears_in_the_reference():
    """The methods page is generated from the registry: a method registered now is listed with its options."""
    from seqattr.methods.base import _METHODS, AttributionMethod

    @dataclasses.dataclass
    class ProbeOptions:
        width: int = 3
        """How wide the probe looks."""

    class Probe(AttributionMethod):
        """A probe method for the documentation test."""

        name = "docs_probe"
        Options = ProbeOptions

    try:
        text = load_hook().methods_page()
    finally:
        del _METHODS["docs_probe"]
    assert "## `docs_probe` {#docs_probe}" in text and "A probe method for the documentation test." in text
    assert "| `width` | `int` | `3` | How wide the probe looks. |" in text


# --- The HTML view at common window sizes -------------------------------------------------------------------

SIZES = [(1400, 900), (800, 600)]

LAYOUT = r"""(() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  const cells = Array.from(document.querySelectorAll('#example-0 table.matrix tr')).map(
    (row) => Array.from(row.cells).map(box));
  const scrollers = Array.from(document.querySelectorAll('#example-0 .scroll')).map((e) => ({
    client: e.clientWidth, scroll: e.scrollWidth, box: box(e)}));
  return {
    viewport: document.documentElement.clientWidth,
    pageWidth: document.documentElement.scrollWidth,
    title: box(document.querySelector('h1')),
    legend: box(document.querySelector('#example-0 .legend')),
    ramp: box(document.querySelector('#example-0 .legend .ramp')),
    main: box(document.querySelector('#example-0 .main')),
    details: box(document.querySelector('#example-0 .details')),
    strips: Array.from(document.querySelectorAll('#example-0 .strips .tok')).map(box),
    cells, scrollers,
  };
})()"""


PROMPT = "The capital of France is a city that many people from all over the world visit every year".split()
GENERATED = "Paris , the city of light , famous for its museums , its food and the Eiffel Tower".split()


def long_example() -> seqattr.AttributionOutput:
    """A realistic page, the same at every run: an 18-word prompt and 18 generated steps with a trace and a
    step score (its heatmap is wider than 800 px). Scores are seeded random numbers: the test is about
    layout, and real words make the screenshots in the docs readable."""
    import torch

    from seqattr.trace import GenerationTrace

    tokens = [("" if i == 0 else "Ġ") + w for i, w in enumerate(PROMPT + GENERATED)]
    start, steps = len(PROMPT), len(GENERATED)
    generator = torch.Generator().manual_seed(0)
    values = (
        torch.randn(len(tokens), steps, generator=generator) * torch.linspace(0.2, 1.0, len(tokens))[:, None]
    )
    visible = torch.arange(len(tokens))[:, None] < start + torch.arange(steps)[None, :]
    probabilities = torch.rand(steps, generator=generator) * 0.8 + 0.1
    ranks = torch.zeros(steps, dtype=torch.long)
    ranks[3] = 2  # one step off the greedy path, shown bold in the trace table
    alternatives = ["Ġthe", "Ġa", "Ġknown", "Ġand", ","]
    trace = GenerationTrace(
        token_ids=torch.arange(start, start + steps),
        tokens=tokens[start:],
        probabilities=probabilities,
        ranks=ranks,
        entropy=torch.rand(steps, generator=generator) * 3,
        top_ids=torch.zeros(steps, 5, dtype=torch.long),
        top_tokens=[[tokens[start + s], *alternatives[:4]] for s in range(steps)],
        top_probabilities=torch.stack([probabilities, *(probabilities / k for k in (3, 5, 8, 12))], 1),
    )
    seq = seqattr.SequenceAttribution(
        source=[],
        target=tokens,
        source_ids=[],
        target_ids=list(range(len(tokens))),
        source_attributions=None,
        target_attributions=values.masked_fill(~visible, float("nan")),
        step_scores={"probability": probabilities},
        attr_pos_start=start,
        attr_pos_end=start + steps,
        trace=trace,
    )
    return seqattr.AttributionOutput([seq], {"method": "input_x_gradient", "model": "LlamaForCausalLM"})


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def overlaps(a: dict, b: dict) -> bool:
    tolerance = 0.5  # shared borders (border-collapse) touch, they do not overlap
    return (
        a["left"] < b["right"] - tolerance
        and b["left"] < a["right"] - tolerance
        and a["top"] < b["bottom"] - tolerance
        and b["top"] < a["bottom"] - tolerance
    )


@pytest.mark.parametrize("width,height", SIZES)
def test_html_page_layout_at_window_size(width, height, tmp_path):
    """No horizontal overflow of the page (the matrix scrolls inside its own container), title and legend
    in view, tokens and table cells not overlapping, details panel beside or below the main column. The
    screenshot is written to tmp (and to docs/images with SEQATTR_UPDATE_SCREENSHOTS=1)."""
    executable = chromium_or_skip()
    path = tmp_path / "page.html"
    long_example().save_html(path, title="seqattr · input x gradient")
    with browser_page(executable) as tab:
        tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        tab.open(path)
        assert tab.errors() == []
        layout = tab.evaluate(LAYOUT)
        shot = tmp_path / f"html_{width}x{height}.png"
        tab.screenshot(shot)
    assert png_size(shot) == (width, height)
    if os.environ.get("SEQATTR_UPDATE_SCREENSHOTS"):
        IMAGES.mkdir(exist_ok=True)
        (IMAGES / shot.name).write_bytes(shot.read_bytes())

    viewport = layout["viewport"]
    assert layout["pageWidth"] <= viewport, "the page scrolls sideways: something is wider than the window"
    for name in ("title", "legend", "ramp"):
        element = layout[name]
        assert element["width"] > 0 and element["height"] > 0, name
        assert 0 <= element["left"] and element["right"] <= viewport and element["bottom"] <= height, name
    for name in ("main", "details"):
        assert layout[name]["right"] <= viewport + 0.5, name
    # The details panel sits beside the main column or wholly below it, never over it.
    assert not overlaps(layout["main"], layout["details"])
    # The matrix is wider than 800 px: it scrolls in its own container, which stays inside the window.
    for scroller in layout["scrollers"]:
        assert scroller["box"]["right"] <= viewport + 0.5
    if width == 800:
        assert layout["scrollers"][0]["scroll"] > layout["scrollers"][0]["client"]
    tokens = layout["strips"]
    assert all(t["width"] > 0 for t in tokens)
    assert not any(overlaps(a, b) for i, a in enumerate(tokens) for b in tokens[i + 1 :])
    for row in layout["cells"]:
        assert all(cell["width"] > 0 for cell in row)
        assert not any(overlaps(a, b) for a, b in zip(row, row[1:], strict=False))
    rows = [row[0] for row in layout["cells"] if row]
    assert not any(overlaps(a, b) for a, b in zip(rows, rows[1:], strict=False))


@pytest.mark.parametrize("width,height", SIZES)
def test_screenshots_in_docs_are_current_sizes(width, height):
    """The views page shows the committed screenshots; regenerate them with
    ``SEQATTR_UPDATE_SCREENSHOTS=1 python3 -m pytest tests/test_docs_site.py -k layout``."""
    name = f"html_{width}x{height}.png"
    assert png_size(IMAGES / name) == (width, height)
    assert f"images/{name}" in (ROOT / "docs" / "views_and_aggregation.md").read_text(encoding="utf-8")
