"""The public namespace is small and stable; importing seqattr does nothing visible."""

import subprocess
import sys

import seqattr


def test_public_names_are_pinned():
    assert sorted(seqattr.__all__) == sorted(
        [
            "AttributionModel",
            "AttributionOutput",
            "ContextAttributionOutput",
            "ConvergenceWarning",
            "EvaluationResult",
            "SequenceAttribution",
            "StepFunctionArgs",
            "__version__",
            "attribute_context",
            "list_methods",
            "list_step_functions",
            "load",
            "load_dataset_output",
            "load_model",
            "register_step_function",
            "zero_shot",
        ]
    )
    for name in seqattr.__all__:
        assert hasattr(seqattr, name), name


def test_analysis_names_are_pinned():
    import seqattr.analysis

    assert sorted(seqattr.analysis.__all__) == [
        "DatasetSummary",
        "report_html",
        "step_table",
        "summarize",
        "write_report",
    ]
    for name in seqattr.analysis.__all__:
        assert hasattr(seqattr.analysis, name), name


def test_import_prints_nothing_and_loads_no_views():
    # seqattr.viz itself only registers the views by name; their modules (rich tables, matplotlib,
    # treescope) load when a view is first used.
    code = "import sys, seqattr; print(sorted(m for m in sys.modules if m.startswith('seqattr.viz')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['seqattr.viz']"
    assert result.stderr == ""


def test_every_method_and_step_function_has_a_description():
    assert seqattr.list_methods()
    assert all(description for description in seqattr.list_methods().values())
    assert all(description for description in seqattr.list_step_functions().values())
