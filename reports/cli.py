"""``python -m reports RESULTS... --out DIR``: build the Markdown/HTML report from results files;
``python -m reports export RESULTS... --out FILE.csv``: every run and batch of them as one tidy CSV."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.cli import Parser
from contract.errors import LocalExitError
from reports import claims, tables
from reports.export import export_csv
from reports.loader import load_results
from reports.tables import TABLE_FORMATS

logger = logging.getLogger(__name__)

#: The modules the `report` extra brings.
REPORT_EXTRA = ("matplotlib",)


def _results_argument(p: argparse.ArgumentParser) -> None:
    """The positional RESULTS of both commands."""
    p.add_argument(
        "results",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="results files (schema localexit/1 or /2) or folders of them",
    )


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m reports",
        description="Turn localexit results files (and training logs) into tables, figures and a "
        "Markdown + self-contained HTML report. `python -m reports export --help`: every run as one CSV.",
    )
    _results_argument(p)
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)"
    )
    p.add_argument(
        "--train-logs",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="training logs (schema localexit-trainlog/1) or folders of them",
    )
    p.add_argument(
        "--format",
        dest="formats",
        nargs="+",
        choices=TABLE_FORMATS,
        default=list(TABLE_FORMATS),
        help="table formats written under DIR/tables (default: all)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="threshold of the per-exit figures (default: 0.3 when present)",
    )
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the claims table")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m reports export",
        description="Write every run of localexit results files as one tidy (long-format) CSV: one row per "
        "run and figure, and one per batch and per-batch figure. In Python: pandas.read_csv(FILE).",
    )
    _results_argument(p)
    p.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="the CSV file (written atomically)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def export_main(argv: Sequence[str]) -> int:
    """``python -m reports export``; returns 0 on success, 2 on bad input (one line on stderr)."""
    args = _export_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        done = export_csv(args.results, args.out)
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"csv: {done.path} ({done.rows} rows: {done.runs} run(s) of {done.files} file(s))")
    if done.unaligned_batch_rows:
        print(
            f"note: {done.unaligned_batch_rows} of {done.batch_rows} batch rows have no batch index "
            "(aligned=false): their files predate per_batch_ids, and procedures that only some batches "
            "had cannot be lined up"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on bad input (message on stderr, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:  # a results file named "export" is passed as ./export
        return export_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        # Here, not at the top: matplotlib (figures) comes with the `report` extra, and --help must work
        # without it.
        from reports.report import build_report, noise_headline
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in REPORT_EXTRA:
            raise
        print(
            f"error: the report's figures need {exc.name}: pip install 'localexit[report]'",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        md = build_report(
            args.results,
            args.out,
            train_logs=args.train_logs,
            title=args.title,
            threshold=args.threshold,
            table_formats=args.formats,
        )
        if not args.quiet:
            scenarios = tables.group_scenarios(load_results(args.results))
            print(noise_headline(scenarios)[1])
            print()
            for scn in scenarios:
                t = scn.primary_threshold() if args.threshold is None else args.threshold
                table = claims.claims_table(scn, t)
                print(table.title)
                print(tables.render(table, "terminal"))
                print()
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {md}")
    print(f"html:   {md.with_suffix('.html')}")
    return 0
