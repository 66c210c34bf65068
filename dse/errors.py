"""One exception type for every user-facing input error.

The CLI prints its message on one line and exits non-zero, without a traceback, so the
message must name the file (if any), the field and what was expected.
"""

__all__ = ["DSEError"]


class DSEError(ValueError):
    """Bad input: unknown id, wrong type, impossible configuration request."""
