"""``python -m harness`` / ``localexit``: run an experiment, sweep, check for regressions, clean up.

Subcommands (no subcommand means ``run``): ``sweep``, ``check``, ``record-baseline``, ``clean``,
``train`` (delegates to ``models.train``) and ``reproduce`` (the paper's grid, then the report).
Every ``LocalExitError`` becomes one ``error: …`` line on stderr and exit code 2; a node that fails
during a run gives exit code 1 with the tail of its log; Ctrl-C tears everything down and exits 130.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.errors import LocalExitError

from .config import DEFAULT_DATASET, ISOLATIONS, MODEL_KINDS, LinkOptions, RunConfig, config_from_dict
from .errors import ConfigError, NodeFailure, ResultsError

logger = logging.getLogger(__name__)

SUBCOMMANDS = ("run", "sweep", "check", "record-baseline", "clean", "train", "reproduce")
#: When --exit is left out: the README's experiment uses MEM at exit 5.
DEFAULT_MEM_EXIT = 5
UNSHAPED_WORDS = ("none", "unshaped", "off")


def _ports(text: str) -> tuple[int, int]:
    try:
        cloud, edge = (int(p) for p in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--ports needs CLOUD,EDGE (two port numbers), got {text!r}"
        ) from exc
    return cloud, edge


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of one experiment (shared by run, sweep, record-baseline and reproduce)."""
    g = parser.add_argument_group("experiment")
    g.add_argument("--model", choices=MODEL_KINDS, default="mem", help="model family (default mem)")
    g.add_argument(
        "--exit",
        type=int,
        default=None,
        help=f"local exit k in 1..8 (sem, mem; default {DEFAULT_MEM_EXIT} for mem); none for standard",
    )
    g.add_argument(
        "--threshold", type=float, default=0.3, help="normalized-entropy threshold T (default 0.3)"
    )
    g.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    g.add_argument(
        "--samples", type=int, default=None, help="test images to measure (default: the whole test set)"
    )
    g.add_argument("--repeat", type=int, default=1, help="independent runs with fresh processes (default 1)")
    g.add_argument(
        "--warmup", type=int, default=2, help="warm-up batches, excluded from the figures (default 2)"
    )
    g.add_argument("--inflight", type=int, default=1, help="batches in flight at once (default 1)")
    g.add_argument("--dataset", default=DEFAULT_DATASET, help="fashion-mnist (default), cifar10 or synthetic")
    g.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist)",
    )
    g.add_argument(
        "--checkpoint", type=Path, default=None, help="model checkpoint (default: the shipped one)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    link = parser.add_argument_group("edge–cloud link (tc units: 10mbit, 20ms, 0.5%%)")
    link.add_argument("--bw", default=None, help="rate, e.g. 10mbit (default: unshaped)")
    link.add_argument("--delay", default=None, help="one-way delay, e.g. 20ms")
    link.add_argument("--jitter", default=None, help="delay jitter, e.g. 2ms")
    link.add_argument("--loss", default=None, help="packet loss, e.g. 0.5%%")
    tlink = parser.add_argument_group("test–edge link (optional)")
    tlink.add_argument("--test-bw", default=None)
    tlink.add_argument("--test-delay", default=None)
    tlink.add_argument("--test-jitter", default=None)
    tlink.add_argument("--test-loss", default=None)
    env = parser.add_argument_group("testbed")
    env.add_argument("--edge-cpus", default=None, help="edge CPU quota in cores, e.g. 0.5")
    env.add_argument("--edge-cpuset", default=None, help="edge CPU set, e.g. 0")
    env.add_argument("--edge-mem", default=None, help="edge memory limit, e.g. 256m")
    env.add_argument(
        "--cloud-cpuset",
        default=None,
        help="CPUs the cloud node runs on, e.g. 2-3 (keep it off the edge's; default: any)",
    )
    env.add_argument(
        "--tcp-cc",
        default=None,
        metavar="NAME",
        help="TCP congestion control of the nodes' connections, e.g. cubic or bbr, set in their "
        "namespaces (root; default: the kernel's, recorded either way)",
    )
    env.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="auto",
        help="netns (root), loopback, or auto (netns when root) (default auto)",
    )
    env.add_argument(
        "--allow-unshaped",
        action="store_true",
        help="run even when a requested link or edge setting cannot be applied (not root)",
    )
    env.add_argument(
        "--ports", type=_ports, default=None, help="CLOUD,EDGE listening ports (default: chosen)"
    )
    env.add_argument("--ready-timeout", type=float, default=60.0, help="seconds a node gets to be ready")
    env.add_argument("--run-timeout", type=float, default=3600.0, help="seconds a run may take")
    env.add_argument("--no-calibration", action="store_true", help="skip the CPU calibration workload")


def run_config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Build and validate the ``RunConfig``; invalid values become ``ConfigError``."""
    exit_ = args.exit
    if exit_ is None and args.model == "mem":
        exit_ = DEFAULT_MEM_EXIT
    bw = None if args.bw is not None and args.bw.lower() in UNSHAPED_WORDS else args.bw
    test_link = LinkOptions(args.test_bw, args.test_delay, args.test_jitter, args.test_loss)
    try:
        values: dict[str, Any] = {
            "model": args.model,
            "exit": exit_,
            "threshold": args.threshold,
            "batch_size": args.batch_size,
            "samples": args.samples,
            "warmup_batches": args.warmup,
            "inflight": args.inflight,
            "repeat": args.repeat,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "checkpoint": args.checkpoint,
            "edge_cloud": LinkOptions(bw, args.delay, args.jitter, args.loss),
            "test_edge": test_link if test_link.requested() else None,
            "edge_cpus": args.edge_cpus,
            "edge_cpuset": args.edge_cpuset,
            "edge_mem": args.edge_mem,
            "cloud_cpuset": args.cloud_cpuset,
            "tcp_cc": args.tcp_cc,
            "seed": args.seed,
            "isolation": args.isolation,
            "allow_unshaped": args.allow_unshaped,
            "ports": args.ports,
            "ready_timeout_s": args.ready_timeout,
            "run_timeout_s": args.run_timeout,
            "calibrate": not args.no_calibration,
        }
        values.update(overrides)
        return RunConfig(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _run(cfg: RunConfig) -> dict[str, Any]:
    from .runner import run_experiment

    def progress(run: dict[str, Any]) -> None:
        if cfg.repeat > 1:
            print(f"run {run['index'] + 1}/{cfg.repeat} done in {run['duration_s']:.1f} s", file=sys.stderr)

    return run_experiment(cfg, notify=_notice, on_run=progress)


def default_out(cfg: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{cfg.label()}-{stamp}.json"


def cmd_run(argv: Sequence[str], prog: str = "python -m harness") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run one local-exit experiment and print its summary.",
        epilog="other commands: sweep, check, record-baseline, clean, train, reproduce "
        "(python -m harness COMMAND --help)",
    )
    add_run_options(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default: results/<point>-<time>.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    cfg = run_config_from_args(args)
    return _run_and_write(cfg, args.out or default_out(cfg))


def _run_and_write(cfg: RunConfig, out: Path) -> int:
    from .display import format_summary
    from .results import write_results

    results = _run(cfg)
    write_results(out, results)
    print(format_summary(results))
    print(f"\nresults written to {out}")
    return 0


def cmd_record_baseline(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness record-baseline",
        description="Run an experiment and keep its results as the baseline of `python -m harness check`.",
    )
    add_run_options(parser)
    parser.add_argument(
        "--out", type=Path, default=Path("baseline.json"), help="baseline file (default baseline.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    cfg = run_config_from_args(args)
    code = _run_and_write(cfg, args.out)
    print(f"check later runs against it with: python -m harness check --baseline {args.out}")
    return code


def cmd_check(argv: Sequence[str]) -> int:
    from . import check
    from .results import load_results, write_results

    parser = argparse.ArgumentParser(
        prog="python -m harness check",
        description="Compare latencies against a baseline. Exit code 0: no regression (pass, improvement or "
        "inconclusive); 1: regression; 2: unusable input.",
    )
    parser.add_argument("--baseline", type=Path, required=True, help="baseline results file")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="compare this results file (default: run the baseline's configuration now)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=check.DEFAULT_TOLERANCE,
        help="relative slow-down tolerated (default 0.10 = 10%%)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=check.DEFAULT_ALPHA,
        help="significance level of the Mann–Whitney U test (default 0.01)",
    )
    parser.add_argument(
        "--min-samples",
        type=int,
        default=check.DEFAULT_MIN_SAMPLES,
        help="fewer batches than this on a side give 'inconclusive' (default 8)",
    )
    parser.add_argument(
        "--min-delta-ms",
        type=float,
        default=check.DEFAULT_MIN_DELTA_MS,
        help="a change of the median must also exceed this many ms to count (default 0.5)",
    )
    parser.add_argument("--no-calibration", action="store_true", help="compare raw latencies")
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=check.DEFAULT_BUSY_LIMIT,
        help="CPU %% used by other programs (100 = one core) above which a run's machine "
        "counts as busy and its regressions as inconclusive (default 50)",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=1,
        metavar="N",
        help="when the check runs the configuration itself, re-run it up to N more times; a regression "
        "(or improvement) stands only if every re-run shows it too (default 1; 0 = no re-run)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the fresh run's results here (the first run's)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if (
        args.tolerance < 0
        or not 0 < args.alpha < 1
        or args.min_samples < 1
        or args.min_delta_ms < 0
        or args.confirm < 0
    ):
        raise ConfigError(
            "--tolerance, --min-delta-ms and --confirm must be ≥ 0, --alpha in (0, 1) and --min-samples ≥ 1"
        )
    baseline = load_results(args.baseline)

    def compare(current: dict[str, Any]) -> check.CheckReport:
        return check.compare(
            baseline,
            current,
            tolerance=args.tolerance,
            alpha=args.alpha,
            min_samples=args.min_samples,
            use_calibration=not args.no_calibration,
            busy_limit=args.busy_limit,
            min_delta_ms=args.min_delta_ms,
        )

    if args.results is not None:
        report = compare(load_results(args.results))
    else:
        request = baseline["config"].get("request")
        if not isinstance(request, dict):
            raise ResultsError(f"{args.baseline} does not record the run's request; pass --results FILE")
        try:
            cfg = config_from_dict(request)
        except ValueError as exc:
            raise ResultsError(f"{args.baseline}: its recorded request is not usable: {exc}") from exc
        current = _run(cfg)
        if args.out is not None:
            write_results(args.out, current)
        report = compare(current)
        for i in range(args.confirm):
            if not report.changes:
                break
            found = ", ".join(c.metric for c in report.changes)
            print(
                f"re-running the configuration to confirm ({i + 1}/{args.confirm}): {found}", file=sys.stderr
            )
            report = check.confirmed(report, compare(_run(cfg)))
    print(check.format_report(report))
    return report.exit_code


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    """``1-8`` or ``1,3,5``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected exits like 1-8 or 1,3,5, got {text!r}") from exc
    return tuple(out)


def _sweep_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_run_options(parser)
    parser.add_argument("--out-dir", type=Path, default=Path("results/sweep"), help="where results go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _sweep_links(bws: str | None, args: argparse.Namespace) -> tuple[LinkOptions, ...]:
    rates = (bws or "none").split(",")
    return tuple(
        LinkOptions(None if r.lower() in UNSHAPED_WORDS else r, args.delay, args.jitter, args.loss)
        for r in rates
    )


def cmd_sweep(argv: Sequence[str]) -> int:
    from .sweep import SweepSpec

    parser = _sweep_parser(
        "python -m harness sweep",
        "Run models × exits × thresholds × links, one results file per point; re-running resumes.",
    )
    parser.add_argument(
        "--grid",
        choices=("paper",),
        default=None,
        help="paper: SEM-1…8 and MEM at exits 1…8, T in {0.1, 0.3, 0.5, 0.8}",
    )
    parser.add_argument("--models", default="sem,mem", help="comma-separated (default sem,mem)")
    parser.add_argument("--exits", type=_ints, default=(1, 2, 3, 4, 5, 6, 7, 8), help="e.g. 1-8 (default)")
    parser.add_argument("--thresholds", type=_floats, default=(0.1, 0.3, 0.5, 0.8), help="e.g. 0.1,0.3")
    args = parser.parse_args(argv)
    args.model = "standard"  # the per-point model comes from --models; this only satisfies validation
    _setup_logging(args.verbose)
    spec_base = run_config_from_args(args, exit=None)
    links = _sweep_links(args.bw, args)
    models_ = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models_ if m not in MODEL_KINDS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODEL_KINDS)}")
    try:
        spec = (
            SweepSpec.paper(spec_base, links)
            if args.grid == "paper"
            else SweepSpec(spec_base, models_, args.exits, args.thresholds, links)
        )
        spec.points()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return _do_sweep(spec, args.out_dir, progress=not args.no_progress)


def _do_sweep(spec: Any, out_dir: Path, *, progress: bool) -> int:
    from .runner import prepare, run_experiment
    from .sweep import run_sweep

    outcome = run_sweep(
        spec,
        out_dir,
        lambda cfg: run_experiment(cfg, notify=_notice),
        preflight=prepare,
        progress=progress,
    )
    print(
        f"sweep: {outcome.done} point(s) run, {outcome.skipped} already done, {outcome.failed} failed, "
        f"in {outcome.seconds:.0f} s; results in {out_dir}"
    )
    return outcome.exit_code


def cmd_reproduce(argv: Sequence[str]) -> int:
    from .sweep import SweepSpec

    parser = _sweep_parser("python -m harness reproduce", "Run the paper's grid and build the report.")
    parser.set_defaults(out_dir=None)
    parser.add_argument(
        "--quick", action="store_true", help="320 samples per point instead of the whole test set"
    )
    parser.add_argument("--report-dir", type=Path, default=None, help="default: <out-dir>/report")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.out_dir is None:
        args.out_dir = Path("results/reproduce-quick" if args.quick else "results/reproduce")
    args.model = "standard"
    base = run_config_from_args(args, exit=None, **({"samples": args.samples or 320} if args.quick else {}))
    spec = SweepSpec.paper(base, _sweep_links(args.bw, args))
    code = _do_sweep(spec, args.out_dir, progress=not args.no_progress)
    import reports
    from models import ZOO_DIR

    # The shipped checkpoints come with their training logs (the paper's Fig. 9/10).
    zoo_logs = sorted((ZOO_DIR / base.dataset).glob("*.train.json")) if base.checkpoint is None else []
    report = reports.build_report(
        [args.out_dir / "points"], args.report_dir or args.out_dir / "report", train_logs=zoo_logs or None
    )
    print(f"report written to {report}")
    return code


def cmd_clean(argv: Sequence[str]) -> int:
    import netem

    parser = argparse.ArgumentParser(
        prog="python -m harness clean",
        description="Remove namespaces, links, qdiscs and cgroups left by killed runs (by the run prefix).",
    )
    parser.add_argument("--prefix", default="lx", help="prefix of the run objects to remove (default lx)")
    parser.add_argument(
        "--force", action="store_true", help="also remove runs whose owning process is still alive"
    )
    args = parser.parse_args(argv)
    _setup_logging(False)
    removed = netem.clean(args.prefix, force=args.force)
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} leftover object(s) removed")
    return 0


def cmd_train(argv: Sequence[str]) -> int:
    from models import train

    return int(train.main(list(argv), prog="python -m harness train"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def dispatch(argv: Sequence[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        name, rest = argv[0], list(argv[1:])
    else:
        name, rest = "run", list(argv)
    commands = {
        "run": cmd_run,
        "sweep": cmd_sweep,
        "check": cmd_check,
        "record-baseline": cmd_record_baseline,
        "clean": cmd_clean,
        "train": cmd_train,
        "reproduce": cmd_reproduce,
    }
    return commands[name](rest)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a CI job's timeout) unwinds like Ctrl-C, so every ``finally`` tears down."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m harness`` and the ``localexit`` console script."""
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        print("interrupted: nodes and testbed torn down; no results file written", file=sys.stderr)
        return 130
    except NodeFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): nothing more to say
        return 1
    except OSError as exc:  # the system refused something (permissions, disk full): no traceback
        name = f" {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{name}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
