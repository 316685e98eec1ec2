"""Errors of ``reports/``."""

from __future__ import annotations

from contract.errors import LocalExitError


class ReportError(LocalExitError):
    """A results file or training log cannot be read, or a report cannot be built from it."""
