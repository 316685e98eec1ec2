"""The summary's latency column: each figure says what it is and its unit, since the edge and cloud
figures are per-sample means and the overall one is the run's wall time divided by its samples."""

from __future__ import annotations

import pytest

from harness.display import format_summary

from .helpers import make_results


def _latency_rows(text: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in text.splitlines():
        for name in ("edge (local exit)", "cloud", "overall"):
            if line.startswith(name):
                rows.setdefault(name, line)
    return rows


@pytest.mark.parametrize("runs", [1, 3])
def test_each_latency_has_its_definition_and_unit(runs: int) -> None:
    results = make_results(runs=runs)
    rows = _latency_rows(format_summary(results))
    summary = results.runs[0].summary if runs == 1 else None
    assert "1→2→3-1" in rows["edge (local exit)"] and "mean per sample" in rows["edge (local exit)"]
    assert "1→2→3-2→4→5" in rows["cloud"] and "mean per sample" in rows["cloud"]
    assert "(last prediction back − first batch sent) ÷ samples" in rows["overall"]
    assert " ms/sample" in rows["overall"] and " ms/sample" not in rows["edge (local exit)"]
    if summary is not None:
        assert f"{summary.edge_latency_ms:.3f} ms " in rows["edge (local exit)"]
        assert f"{summary.overall_latency_ms:.4f} ms/sample" in rows["overall"]
    assert "latency ms" not in format_summary(results)
