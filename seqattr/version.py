"""The package version, in a module of its own so that any layer can record it without importing seqattr."""

__version__ = "0.1.0"
