"""seqattr: explain generative language models token by token, all steps of a sequence in one pass.

Example:
    >>> import seqattr
    >>> model = seqattr.load_model("gpt2", "integrated_gradients")  # doctest: +SKIP
    >>> out = model.attribute("Hello everyone, today")  # doctest: +SKIP
    >>> out.show()
"""

__version__ = "0.1.0"

from seqattr import methods as _methods  # noqa: F401  (registers the built-in methods)
from seqattr.data import AttributionOutput, SequenceAttribution, load
from seqattr.methods import list_methods
from seqattr.models import AttributionModel, load_model
from seqattr.step_functions import StepFunctionArgs, list_step_functions, register_step_function

__all__ = [
    "AttributionModel",
    "AttributionOutput",
    "SequenceAttribution",
    "StepFunctionArgs",
    "__version__",
    "list_methods",
    "list_step_functions",
    "load",
    "load_model",
    "register_step_function",
]
