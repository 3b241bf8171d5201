"""Model wrappers: loading, encoding, generation and the forward passes the engine needs."""

from seqattr.models.attribution_model import AttributionModel
from seqattr.models.loading import load_model

__all__ = ["AttributionModel", "load_model"]
