"""The whole report, built through the CLI from a paper-shaped grid, and the CLI's handling of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reports import build_report
from reports.cli import main
from tests.reports.conftest import paper_like_grid, paper_like_logs, results_doc, run, summary

FIGURES = (
    "exits",
    "accuracy",
    "latency",
    "threshold_sem",
    "threshold_mem",
    "procedures",
    "resources",
    "ratios",
    "training_curves",
    "training_final",
)
TABLES = (
    "control",
    "claims",
    "sem_vs_mem",
    "fidelity",
    "exits",
    "accuracy",
    "latency",
    "threshold",
    "procedures",
    "spread",
    "training",
    "mechanisms",
    "environment",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("paper")
    for name, doc in paper_like_grid().items():
        (root / "results").mkdir(exist_ok=True)
        (root / "results" / name).write_text(json.dumps(doc))
    for name, doc in paper_like_logs().items():
        (root / "logs").mkdir(exist_ok=True)
        (root / "logs" / name).write_text(json.dumps(doc))
    out = root / "report"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(root / "results"), "--out", str(out), "--train-logs", str(root / "logs"), "-q"])
    assert rc == 0
    return out, buf.getvalue()


def test_every_figure_and_table_written(built: tuple[Path, str]) -> None:
    out, stdout = built
    assert f"report: {out / 'report.md'}" in stdout
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    for name in TABLES:
        for suffix in ("txt", "md", "tex"):
            assert (out / "tables" / f"{name}.{suffix}").stat().st_size > 0, (name, suffix)


def test_markdown_embeds_figures_and_tables(built: tuple[Path, str]) -> None:
    out, _ = built
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert sorted(Path(p).stem for p in linked) == sorted(FIGURES)
    assert all((out / p).is_file() for p in linked)
    assert "| SEM exits more samples locally than MEM at every exit point" in md
    assert "tun-delay-line" in md  # the mechanism that applied the delay
    assert "fashion-mnist, rate 10mbit, delay 5ms, batch 32, T = 0.3" in md


def test_older_files_without_blocks_are_still_reported(built: tuple[Path, str]) -> None:
    """The paper-shaped grid has 3 runs per point and no block indices, as files written before blocked
    studies: every figure and table is there, and no claim pretends to a verdict."""
    out = built[0]
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].startswith(
        "Noise control not available: the A/A check (procedure (2) of SEM-k against MEM at exit k"
    )
    claims = (out / "tables" / "claims.md").read_text()
    rows = [line for line in claims.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 15
    assert all("| not tested " in row for row in rows)
    # the numbers are still there, compared unpaired (difference of medians): SEM-1 vs MEM@1 local exits
    # at T = 0.3, by construction 1000 * 0.2 * 0.9 - 1000 * (0.2 * 0.9 - 0.08) = 80 in every run; three
    # runs give an interval but not the five a verdict needs
    assert "SEM − MEM: exit 1 +80 [+80, +80] (not tested)" in claims
    assert "(runs without blocks: compared unpaired)" in claims
    spread = (out / "tables" / "spread.md").read_text()
    assert "| no " in spread and "| yes " not in spread


def test_fidelity_to_the_paper(built: tuple[Path, str]) -> None:
    md = (built[0] / "report.md").read_text()
    assert (
        "The paper trained and evaluated its models on CIFAR-10 (10 000 test images, batch 32, "
        "T ∈ {0.1, 0.3, 0.5, 0.8}, per-exit figures at T = 0.3); these runs used fashion-mnist (1000 test "
        "samples, batch 32). Absolute accuracies and times are therefore not comparable"
    ) in md
    fidelity = (built[0] / "tables" / "fidelity.md").read_text()
    # the paper's numbers from its text (§4.2) beside ours at the same points: SEM-k edge accuracy at
    # T = 0.3 is 0.80 + 0.02 k - 0.03 by construction
    row = next(line for line in fidelity.splitlines() if line.startswith("| Edge accuracy rises"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        "§4.2",
        "SEM-1 87.20 % → SEM-8 95.24 %",
        "SEM-1 79.00 % → SEM-8 93.00 %",
        "not tested",
    ]
    row = next(
        line for line in fidelity.splitlines() if line.startswith("| Worst and best overall accuracy (SEM)")
    )
    assert "worst SEM-3 86.04 %, best SEM-8 92.04 %" in row


def test_figures_show_intervals(built: tuple[Path, str]) -> None:
    figs = built[0] / "figures"
    for name in ("exits", "accuracy", "latency", "threshold_sem", "resources", "procedures"):
        assert 'id="interval' in (figs / f"{name}.svg").read_text(), name
    assert 'id="interval' not in (figs / "training_final.svg").read_text()  # one log: nothing to bound


def test_html_is_self_contained(built: tuple[Path, str]) -> None:
    html = (built[0] / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    assert html.count("<table>") == len(TABLES)


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_cli_refuses_bad_input_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "garbage.json"
    bad.write_text("not json at all")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "garbage.json: not valid JSON" in err and "Traceback" not in err
    old = _write(tmp_path / "old.json", {"schema": "localexit/0"})
    assert main([str(old), "--out", str(tmp_path / "o")]) == 2
    assert "old.json: schema 'localexit/0' is not supported" in capsys.readouterr().err


def test_threshold_absent_is_refused(tmp_path: Path) -> None:
    doc = results_doc("sem", 1, 0.5, [run(0, summary(1, 1, 1.0, 0.0, 0.5, 1.0, 2.0, 1.0))])
    path = _write(tmp_path / "a.json", doc)
    from reports import ReportError

    with pytest.raises(ReportError, match=r"no results at T = 0\.3 .* present: 0\.5"):
        build_report([path], tmp_path / "o", threshold=0.3)
