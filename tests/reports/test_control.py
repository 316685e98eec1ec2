"""The A/A noise control (SEM-k vs MEM at k, procedure (2)) and the warning at the top of the report."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from reports import control
from reports.cli import main
from tests.reports.conftest import Study, write_all

EIGHT = tuple(range(1, 9))


def _control(study: Study) -> control.Control:
    return control.scenario_control(study.scenario())


def test_a_quiet_machine_passes() -> None:
    ctl = _control(Study(exits=EIGHT, thresholds=(0.3, 0.5)))
    assert [p.status for p in ctl.pairs] == [control.OK] * 16
    assert ctl.pooled_status == control.OK and not ctl.off
    off, text = control.headline([ctl])
    assert not off
    assert text.startswith("Noise control on: at 16 of 16 SEM-k / MEM-at-k pairs")


def test_identical_computations_that_differ_turn_it_off() -> None:
    ctl = _control(Study(aa_bias=1.3))
    assert [p.status for p in ctl.pairs] == [control.OFF_WIDE] * 3
    assert ctl.pooled_status == control.OFF_BIASED
    assert all(p.estimate is not None and abs(p.estimate.value - 1.3) < 0.03 for p in ctl.pairs)
    off, text = control.headline([ctl])
    assert off
    assert text.startswith("Noise control off — latency comparisons in this report are not trustworthy.")
    assert "at 3 of 3 such pairs its 95 % interval reaches beyond 1.0 ± 5 %" in text


def test_a_small_systematic_difference_shows_over_all_pairs() -> None:
    # 2 % slower in every pair: each interval stays within 1.0 ± 5 %, but together they exclude 1.0.
    ctl = _control(Study(exits=EIGHT, aa_bias=1.02, proc2_noise=0.005))
    assert all(p.status == control.OK for p in ctl.pairs)
    assert ctl.pooled is not None and ctl.pooled.value == pytest.approx(1.02, abs=0.005)
    assert ctl.pooled_status == control.OFF_BIASED
    off, text = control.headline([ctl])
    assert off and "over all pairs together it is 1.02" in text and "systematic difference" in text


def test_a_noisy_machine_turns_it_off() -> None:
    ctl = _control(Study(proc2_noise=0.15))
    assert any(p.status == control.OFF_WIDE for p in ctl.pairs)
    assert control.headline([ctl])[0]


def test_an_unbiased_machine_rarely_trips_it() -> None:
    # Eight pairs each: asking all eight to contain 1.0 would fail a third of these studies by chance.
    offs = [_control(Study(exits=(1, 2, 3, 4), thresholds=(0.3, 0.5), seed=s)).off for s in range(40)]
    assert sum(offs) <= 6


def test_too_few_blocks_says_it_is_not_available() -> None:
    ctl = _control(Study(blocks=3))
    assert {p.status for p in ctl.pairs} == {control.NOT_TESTED}
    off, text = control.headline([ctl])
    assert not off
    assert text.startswith("Noise control not available") and "5 blocks a control needs" in text
    assert control.headline([])[1].endswith(
        "there is no SEM-k and MEM pair at the same exit. The latency comparisons below are unchecked "
        "against the machine's noise."
    )


def test_runs_without_blocks_are_compared_unpaired() -> None:
    ctl = _control(Study(with_blocks=False))
    assert ctl.pooled is None and ctl.pooled_status == control.NOT_TESTED
    table = control.control_table(Study(with_blocks=False).scenario())
    assert table.column("runs")[:3] == ["unpaired"] * 3
    # Run one after another, each point's runs met different load: the control cannot pass.
    assert ctl.off


def test_the_report_opens_with_the_warning(tmp_path: Path) -> None:
    results = write_all(tmp_path, Study(aa_bias=1.3).docs())
    out = tmp_path / "report"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(results), "--out", str(out)]) == 0
    md = (out / "report.md").read_text().splitlines()
    assert md[0].startswith("# ")
    assert md[2].startswith("**Noise control off — latency comparisons in this report are not trustworthy.")
    assert '<p class="warning"><strong>Noise control off' in (out / "report.html").read_text()
    assert buf.getvalue().startswith("Noise control off")  # the terminal says it before the claims
    table = (out / "tables" / "control.md").read_text()
    assert "| all    | all |" in table and "off: excludes 1.0" in table
