"""The request object and the model families of issue 10: one validated request for the API and the CLI,
and one place (the family) that knows decoder-only from encoder-decoder."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import seqattr
from seqattr.cli import build_parser, build_request
from seqattr.models.family import DECODER_ONLY, ENCODER_DECODER, family_of
from seqattr.request import AttributionRequest
from seqattr.testing import ARCHITECTURES, RECIPES, tiny_model

PACKAGE = Path(seqattr.__file__).parent
# Where reading `is_encoder_decoder` is the point: the families themselves, the loader choosing a transformers
# Auto class from a config before any model exists, the embedding-scale probe that measures the encoder
# apart, and the output's info that records the family.
MAY_READ_THE_FLAG = {"models/family.py", "models/loading.py", "models/embedding_scale.py"}


def flag_branches(path: Path) -> list[str]:
    """``if``/conditional expressions/boolean operands of ``path`` that read ``is_encoder_decoder``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        tests = []
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            tests.append(node.test)
        elif isinstance(node, ast.BoolOp):
            tests += node.values
        elif isinstance(node, ast.comprehension):
            tests += node.ifs
        for test in tests:
            for sub in ast.walk(test):
                name = sub.attr if isinstance(sub, ast.Attribute) else getattr(sub, "value", None)
                if name == "is_encoder_decoder":
                    found.append(f"{path.relative_to(PACKAGE)}:{sub.lineno}")
    return found


def test_only_the_family_branches_on_decoder_only_versus_encoder_decoder():
    branches = [
        place
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in MAY_READ_THE_FLAG
        for place in flag_branches(path)
    ]
    assert branches == [], f"ask model.family (seqattr/models/family.py) instead of branching at {branches}"


def test_the_branch_check_finds_a_branch(tmp_path):
    probe = PACKAGE / "_probe_branch_check.py"
    probe.write_text("def f(model):\n    return 1 if model.is_encoder_decoder else 2\n")
    try:
        assert flag_branches(probe) == ["_probe_branch_check.py:2"]
    finally:
        probe.unlink()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_recipe_has_the_family_its_config_says(architecture):
    model, _ = tiny_model(architecture)
    expected = ENCODER_DECODER if RECIPES[architecture].encoder_decoder else DECODER_ONLY
    assert family_of(model.config) is expected


ARGUMENTS = dict(
    input_texts=["Hello there", "The sky"],
    generated_texts=["Hello there friend", "The sky is"],
    method="integrated_gradients",
    method_options={"n_steps": 4, "internal_batch_size": 2},
    step_scores=["probability", "entropy"],
    attributed_fn="logprob",
    attr_pos_start=-1,
    batch_size=1,
    trace_top_k=3,
    fused=False,
)
FLAGS = [
    "attribute",
    "-i", "Hello there", "The sky",
    "-g", "Hello there friend", "The sky is",
    "-a", "integrated_gradients",
    "--option", "n_steps=4", "--option", "internal_batch_size=2",
    "--step-scores", "probability", "entropy",
    "--attributed-fn", "logprob",
    "--attr-pos-start", "-1",
    "--batch-size", "1",
    "--trace-top-k", "3",
    "--stepwise",
]  # fmt: skip


def comparable(request: AttributionRequest) -> dict:
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    fields["attributed"] = request.step_score_names  # bound callables compare by identity: compare names
    fields["step_functions"] = sorted(request.step_functions)
    fields["method_options"] = dict(request.method_options)
    return fields


def test_the_cli_builds_the_request_attribute_builds():
    from_flags = build_request(build_parser().parse_args(FLAGS))
    from_api = AttributionRequest(**ARGUMENTS, show_progress=True)
    assert comparable(from_flags) == comparable(from_api)
    assert from_flags.options == from_api.options


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        (
            {"method": "saliencyy"},
            "unknown attribution method 'saliencyy'; valid methods: alti_logit, attention",
        ),
        ({"method_options": {"n_step": 4}}, "n_step"),
        ({"attr_pos_start": 1.5}, "attr_pos_start must be an integer"),
        ({"generated_texts": ["only one"]}, "got 2 input_texts but 1 generated_texts"),
        ({"step_scores_args": {"top_p": 0.5}}, "step_scores_args has 'top_p'"),
        ({"contrast_targets_alignments": "auto"}, "needs contrast_targets="),
        ({"fused": "no"}, "fused must be True or False"),
    ],
)
def test_a_request_is_refused_on_creation(change, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        AttributionRequest(**{**ARGUMENTS, **change})


def test_the_request_is_frozen_and_draws_one_seed():
    request = AttributionRequest("Hello", method="lime", method_options={"n_samples": 4})
    assert isinstance(request.options.seed, int)  # drawn once, on creation
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.batch_size = 3
