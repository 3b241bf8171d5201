"""Attribution methods. Importing this package registers every built-in method: each module of the package
defines its method class, whose ``name`` joins the registry when the class is created."""

import importlib
import pkgutil

from seqattr.methods.base import AttributionMethod, MethodInputs, MethodOutput, get_method_class, list_methods

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AttributionMethod", "MethodInputs", "MethodOutput", "get_method_class", "list_methods"]
