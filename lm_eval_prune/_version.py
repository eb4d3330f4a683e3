"""The package version, importable without importing anything else (the identity and the cards read it)."""

__version__ = "0.2.0"
