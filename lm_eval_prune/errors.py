"""The one exception type users see for bad input."""

from __future__ import annotations


class PruneConfigError(ValueError):
    """A setting, file or model that the engine cannot use; the message is one line."""
