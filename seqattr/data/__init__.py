"""Output classes of an attribution run and their serialisation."""

from seqattr.data.attribution import AttributionOutput, SequenceAttribution
from seqattr.data.io import load

__all__ = ["AttributionOutput", "SequenceAttribution", "load"]
