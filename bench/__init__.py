"""Benchmarks of the project's own speed and accuracy (not collected by pytest; targets and results in BENCHMARKS.md)."""

# First, before any benchmark imports torch: keep a user's OpenMP pinning settings away from this process
# (see harness/_pins.py; the harness benchmark starts node processes, which would inherit a pinned CPU).
import harness._pins  # noqa: F401
