"""The two ways an expression request fails: it cannot be built, or one of its commands cannot run."""

from __future__ import annotations


class BuildError(Exception):
    """The pipeline cannot be built; the client sees 500 "Query data error", the message goes to the log."""


class ExecutionError(Exception):
    """One command failed; its refId carries the message."""
