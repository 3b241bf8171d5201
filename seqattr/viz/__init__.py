"""Views of attribution outputs: terminal (rich)."""
