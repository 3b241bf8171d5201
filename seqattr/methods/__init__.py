"""Attribution methods. Importing this package registers every built-in method."""

from seqattr.methods import input_x_gradient, saliency  # noqa: F401  (registration)
from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, get_method_class, list_methods

__all__ = ["AttributionMethod", "MethodInputs", "MethodOutput", "get_method_class", "list_methods"]
