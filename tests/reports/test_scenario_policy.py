"""Reports keep an adaptive or oracle MEM apart from the fixed MEM at its starting exit."""

from __future__ import annotations

from typing import Any

from reports import load_results
from reports.loader import scenario_key
from tests.reports.conftest import Writer, results_doc, run, summary


def _doc(policy: str | None, temperatures: dict[str, float] | None = None) -> dict[str, Any]:
    doc = results_doc("mem", 5, 0.3, [run(0, summary(40, 60, 0.9, 0.8, 0.84, 10.0, 30.0, 22.0))])
    if policy is not None:  # (a file written before exit policies existed has no request's policy)
        doc["config"]["request"] = {"model": "mem", "exit": 5, "threshold": 0.3, "exit_policy": policy}
    if temperatures is not None:
        doc["config"]["calibration"] = {"file": "cal.json", "sha256": "1" * 64, "temperatures": temperatures}
    return doc


def test_an_adaptive_or_oracle_mem_is_a_scenario_apart_from_the_fixed_mem_at_its_exit(write: Writer) -> None:
    # (loaded together: before, "both hold MEM@5 at T=0.3 under the same configuration")
    fixed, adaptive, oracle = load_results(
        [
            write("fixed.json", _doc("fixed")),
            write("adaptive.json", _doc("adaptive")),
            write("oracle.json", _doc("oracle")),
        ]
    )
    assert len({scenario_key(r) for r in (fixed, adaptive, oracle)}) == 3
    (old,) = load_results([write("old/old.json", _doc(None))])
    assert scenario_key(old) == scenario_key(fixed)


def test_temperature_scaled_thresholds_are_a_scenario_of_their_own(write: Writer) -> None:
    plain, scaled = load_results(
        [write("plain.json", _doc("fixed")), write("scaled.json", _doc("fixed", {"5": 1.7}))]
    )
    (unscaled,) = load_results([write("unscaled/unscaled.json", _doc("fixed", {"5": 1.0}))])
    assert scenario_key(plain) == scenario_key(unscaled) != scenario_key(scaled)
