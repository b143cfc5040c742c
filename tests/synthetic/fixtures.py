"""Fixtures (filled in by its issue)."""
