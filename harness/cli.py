"""``python -m harness`` / ``localexit``: run an experiment, sweep, check for regressions, clean up.

Commands (``harness.parsers`` has the grammar; no command means ``run``): ``run``, ``sweep``, ``check``,
``record-baseline``, ``clean``, ``train`` (delegates to ``models.train``) and ``reproduce`` (the paper's
grid, then the report). Every user error — a ``LocalExitError`` or argparse's — is one ``error: …`` line
on stderr and exit code 2; a node that fails during a run gives exit code 1 with the tail of its log, as
does a results file that could not be written at the end (the results are saved elsewhere, and the error
says where); Ctrl-C tears everything down and exits 130.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.errors import LocalExitError
from contract.names import MODEL_KINDS
from contract.results import Results, Run

from .config import LinkOptions, RunConfig, check_edge_cpus, config_from_dict
from .errors import ConfigError, NodeFailure, ResultsError
from .parsers import DEFAULT_MEM_EXIT, DEFAULT_SWEEP_MODELS, PROG, parse, with_command

logger = logging.getLogger(__name__)

UNSHAPED_WORDS = ("none", "unshaped", "off")


def run_config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Build and validate the ``RunConfig``; invalid values become ``ConfigError``.

    The model, exit and threshold come from ``args`` where the command has them (``run``,
    ``record-baseline``); a sweep passes them as ``overrides``.
    """
    bw = None if args.bw is not None and args.bw.lower() in UNSHAPED_WORDS else args.bw
    test_link = LinkOptions(args.test_bw, args.test_delay, args.test_jitter, args.test_loss)
    point: dict[str, Any] = {}
    if "model" not in overrides:
        exit_ = args.exit
        if exit_ is None and args.model == "mem":
            exit_ = DEFAULT_MEM_EXIT
        calibration = getattr(args, "calibration", None)
        if calibration is not None and args.threshold is not None:
            raise ConfigError("--threshold and --calibration both set the threshold: give one of them")
        point = {"model": args.model, "exit": exit_, "calibration": calibration}
        if args.threshold is not None:
            point["threshold"] = args.threshold
    try:
        values: dict[str, Any] = {
            **point,
            "batch_size": args.batch_size,
            "samples": args.samples,
            "warmup_batches": args.warmup_batches,
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
            "placement": args.placement,
            "max_other_cpu": args.max_other_cpu,
            "busy_retries": args.busy_retries,
            "tcp_cc": args.tcp_cc,
            # (run and record-baseline take schedules; a sweep's points do not)
            "link_schedule": getattr(args, "link_schedule", None),
            "cpu_schedule": getattr(args, "cpu_schedule", None),
            "exit_policy": getattr(args, "exit_policy", "fixed"),
            "latency_slo_ms": getattr(args, "latency_slo", None),
            "profile": getattr(args, "profile", None),
            "seed": args.seed,
            "isolation": args.isolation,
            "allow_unshaped": args.allow_unshaped,
            "ports": args.ports,
            "ready_timeout_s": args.ready_timeout,
            "run_timeout_s": args.run_timeout,
            "calibrate": not args.no_calibration,
            "strict_clocks": args.strict_clocks,
            "model_spec": getattr(args, "model_spec", None),
            "edge_device": getattr(args, "edge_device", "cpu"),
            "cloud_device": getattr(args, "cloud_device", "cpu"),
        }
        values.update(overrides)
        return RunConfig(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _run(cfg: RunConfig, hosts: Path | None = None) -> Results:
    from .runner import run_experiment

    check_edge_cpus(cfg)
    factory = None
    if hosts is not None:
        from .remote_testbed import hosts_factory

        factory = hosts_factory(hosts)

    def progress(run: Run) -> None:
        if cfg.repeat > 1:
            print(f"run {run.index + 1}/{cfg.repeat} done in {run.duration_s or 0:.1f} s", file=sys.stderr)

    return run_experiment(cfg, notify=_notice, on_run=progress, testbed_factory=factory)


def default_out(cfg: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{cfg.label()}-{stamp}.json"


def _save(out: Path, results: Results) -> tuple[Path | None, ResultsError | None]:
    """Write ``results`` to ``out``; if that fails, to a fallback place. Returns (where, the failure)."""
    from .results import write_results, write_results_fallback

    try:
        write_results(out, results)
    except ResultsError as exc:
        return write_results_fallback(out, results), exc
    return out, None


def _unsaved(failure: ResultsError, saved: Path | None) -> str:
    if saved is None:
        return (
            f"{failure}, and no fallback place (here or in the temporary directory) took them: they are lost"
        )
    return f"{failure}; the results were saved to {saved} instead"


def _run_and_write(cfg: RunConfig, out: Path, hosts: Path | None = None) -> int:
    from .display import format_summary
    from .results import check_output_path

    check_output_path(out)  # before anything runs: a typo in --out must not cost the run
    results = _run(cfg, hosts)
    saved, failure = _save(out, results)
    print(format_summary(results))
    if failure is not None:
        print(f"error: {_unsaved(failure, saved)}", file=sys.stderr)
        return 1
    print(f"\nresults written to {out}")
    return 0


def _hosts_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run options of ``--hosts`` (none without it); refuses those that place nodes on this
    machine's CPUs, which are not the nodes'."""
    if getattr(args, "hosts", None) is None:
        return {}
    for option in ("cloud_cpuset", "edge_cpuset"):
        if getattr(args, option, None) is not None:
            raise ConfigError(
                f"--{option.replace('_', '-')} places a node on this machine's CPUs: not with --hosts"
            )
    if getattr(args, "placement", "auto") != "auto":
        raise ConfigError("--placement places the nodes on this machine's CPUs: not with --hosts")
    return {"placement": "shared"}


def _on_hosts(args: argparse.Namespace) -> dict[str, Path]:
    """``hosts=FILE`` for a study given ``--hosts FILE`` (nothing without it)."""
    return {"hosts": args.hosts} if args.hosts is not None else {}


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    cfg = run_config_from_args(args, **_hosts_overrides(args))
    if args.hosts is None:
        return _run_and_write(cfg, args.out or default_out(cfg))
    return _run_and_write(cfg, args.out or default_out(cfg), hosts=args.hosts)


def cmd_record_baseline(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    cfg = run_config_from_args(args)
    code = _run_and_write(cfg, args.out)
    if code == 0:
        print(f"check later runs against it with: {PROG} check --baseline {args.out}")
    return code


def cmd_check(args: argparse.Namespace) -> int:
    from . import check
    from .results import check_output_path, load_results

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

    def compare(current: Results) -> check.CheckReport:
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
        request = baseline.config.request
        if request is None:
            raise ResultsError(f"{args.baseline} does not record the run's request; pass --results FILE")
        try:
            cfg = config_from_dict(dict(request))
        except ValueError as exc:
            raise ResultsError(f"{args.baseline}: its recorded request is not usable: {exc}") from exc
        if args.out is not None:
            check_output_path(args.out)
        current = _run(cfg)
        if args.out is not None:
            saved, failure = _save(args.out, current)
            if failure is not None:  # (the verdict is still worth having: it decides the exit code)
                print(f"warning: {_unsaved(failure, saved)}", file=sys.stderr)
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


def _sweep_links(bws: str | None, args: argparse.Namespace) -> tuple[LinkOptions, ...]:
    rates = (bws or "none").split(",")
    return tuple(
        LinkOptions(None if r.lower() in UNSHAPED_WORDS else r, args.delay, args.jitter, args.loss)
        for r in rates
    )


def _refuse_given(args: argparse.Namespace, command: str, options: Mapping[str, str]) -> None:
    """Refuse options that ``command`` would otherwise ignore (``options``: name → what to use instead)."""
    for name, instead in options.items():
        if hasattr(args, name):
            raise ConfigError(f"{command} does not take --{name.replace('_', '-')}: {instead}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import PAPER_THRESHOLDS, SweepSpec

    _setup_logging(args.verbose)
    _refuse_given(
        args,
        "sweep",
        {
            "model": "give the models to sweep with --models, e.g. --models sem,mem",
            "exit": "give the exits to sweep with --exits, e.g. --exits 1-4",
            "threshold": "give the thresholds to sweep with --thresholds, e.g. --thresholds 0.3,0.5",
        },
    )
    if args.grid == "paper":
        fixed = "--grid paper fixes the models, exits and thresholds (leave --grid out to choose them)"
        _refuse_given(args, "sweep --grid paper", dict.fromkeys(("models", "exits", "thresholds"), fixed))
    spec_base = run_config_from_args(args, model="standard", exit=None, **_hosts_overrides(args))
    links = _sweep_links(args.bw, args)
    models_ = tuple(m.strip() for m in getattr(args, "models", DEFAULT_SWEEP_MODELS).split(",") if m.strip())
    unknown = [m for m in models_ if m not in MODEL_KINDS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODEL_KINDS)}")
    try:
        spec = (
            SweepSpec.paper(spec_base, links, args.order_seed)
            if args.grid == "paper"
            else SweepSpec(
                spec_base,
                models_,
                getattr(args, "exits", (1, 2, 3, 4, 5, 6, 7, 8)),
                getattr(args, "thresholds", PAPER_THRESHOLDS),
                links,
                args.order_seed,
            )
        )
        spec.points()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    out_dir = args.out_dir or Path("results/sweep")
    if args.dry_run:
        return _dry_run(spec, out_dir)
    return _do_sweep(spec, out_dir, progress=not args.no_progress, **_on_hosts(args))


def _dry_run(spec: Any, out_dir: Path) -> int:
    from .estimate import format_preview, preview

    print(format_preview(preview(spec, out_dir), out_dir))
    return 0


def _do_sweep(spec: Any, out_dir: Path, *, progress: bool, hosts: Path | None = None) -> int:
    """Run ``spec`` as a study (``harness.study``): blocks in a random order, nodes reconfigured."""
    from .results import check_output_dir
    from .study import run_study

    check_output_dir(out_dir)
    check_edge_cpus(spec.base)
    factory = None
    if hosts is not None:  # (the nodes on the machines of a hosts file: docs/hosts.md)
        from .remote_testbed import study_factory

        factory = study_factory(hosts)
    outcome = run_study(spec, out_dir, notify=_notice, progress=progress, factory=factory)
    print(f"sweep: {outcome.describe()}; results in {out_dir}")
    return outcome.exit_code


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .sweep import SweepSpec

    _setup_logging(args.verbose)
    grid = f"reproduce runs the paper's grid: to choose models, exits or thresholds use {PROG} sweep"
    _refuse_given(args, "reproduce", dict.fromkeys(("model", "exit", "threshold"), grid))
    out_dir = args.out_dir or Path("results/reproduce-quick" if args.quick else "results/reproduce")
    quick = {"samples": args.samples or 320} if args.quick else {}
    base = run_config_from_args(args, model="standard", exit=None, **quick, **_hosts_overrides(args))
    spec = SweepSpec.paper(base, _sweep_links(args.bw, args), args.order_seed)
    if args.dry_run:
        return _dry_run(spec, out_dir)
    report_dir = args.report_dir or out_dir / "report"
    code = _do_sweep(spec, out_dir, progress=not args.no_progress, **_on_hosts(args))
    import reports
    from models.checkpoint import ZOO_DIR

    # The shipped checkpoints come with their training logs (the paper's Fig. 9/10).
    zoo_logs = sorted((ZOO_DIR / base.dataset).glob("*.train.json")) if base.checkpoint is None else []
    report = reports.build_report([out_dir / "points"], report_dir, train_logs=zoo_logs or None)
    print(f"report written to {report}")
    return code


def cmd_clean(args: argparse.Namespace) -> int:
    import netem
    from netem.cleanup import FAMILY, LogDirCleanup, clean_log_dirs
    from netem.errors import NetemError

    _setup_logging(args.verbose)
    if args.hosts is not None:
        from .remote_testbed import clean_hosts

        for item in clean_hosts(args.hosts, force=args.force):
            print(f"removed {item}")
    # Node-log folders are not named by the run prefix, so only a clean of every run removes them.
    logs = clean_log_dirs(force=args.force) if args.prefix.rstrip("*") == FAMILY else LogDirCleanup()
    for path in logs.removed:
        print(f"removed log folder {path}")
    for path in logs.unowned:
        print(
            f"kept {path}: nothing in it says which run made it (an older version's, or not ours); "
            "remove it yourself once no run uses it"
        )
    if logs.failed:
        raise NetemError("clean could not remove: " + "; ".join(logs.failed))
    removed = netem.clean(args.prefix, force=args.force)
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed) + len(logs.removed)} leftover object(s) removed")
    return 0


def cmd_train(argv: Sequence[str]) -> int:
    from models import train

    return int(train.main(list(argv), prog=f"{PROG} train"))


def cmd_calibrate(argv: Sequence[str]) -> int:
    from models import calibration

    return int(calibration.main(list(argv), prog=f"{PROG} calibrate"))


def cmd_adapt_tools(command: str, argv: Sequence[str]) -> int:
    """``profile`` (per-exit costs for an exit policy) and ``adapt`` (the exit-policy study)."""
    if command == "profile":
        from . import profile

        return int(profile.main(list(argv), prog=f"{PROG} profile"))
    from . import adapt

    return int(adapt.main(list(argv), prog=f"{PROG} adapt"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def dispatch(argv: Sequence[str]) -> int:
    """Run the command ``argv`` names (``run`` when it names none); returns the exit code."""
    args_list = with_command(argv)
    if args_list[0] == "train":  # (its options are models.train's, parsed there)
        return cmd_train(args_list[1:])
    if args_list[0] == "calibrate":  # (likewise models.calibration's)
        return cmd_calibrate(args_list[1:])
    if args_list[0] in ("profile", "adapt"):  # (likewise harness.profile's and harness.adapt's)
        return cmd_adapt_tools(args_list[0], args_list[1:])
    args = parse(args_list)
    commands = {
        "run": cmd_run,
        "sweep": cmd_sweep,
        "check": cmd_check,
        "record-baseline": cmd_record_baseline,
        "clean": cmd_clean,
        "reproduce": cmd_reproduce,
    }
    return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m harness`` and the ``localexit`` console script.

    Ctrl-C and SIGTERM (``kill``, a CI job's timeout) unwind as one KeyboardInterrupt, so every
    ``finally`` tears down (``harness.interrupts``); the exit code is then 130.
    """
    from .interrupts import Interrupts, exception_notes, report_interrupted

    def notes(exc: BaseException) -> list[str]:  # (what a teardown during the error could not remove)
        return [f"error: {note}" for note in exception_notes(exc)]

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with Interrupts():
            try:
                return dispatch(args)
            except KeyboardInterrupt as exc:
                return report_interrupted(exc)
            except NodeFailure as exc:
                print(f"error: {exc}", *notes(exc), sep="\n", file=sys.stderr)
                return 1
            except LocalExitError as exc:
                print(f"error: {exc}", *notes(exc), sep="\n", file=sys.stderr)
                return 2
            except BrokenPipeError:  # stdout closed early (e.g. piped into head): nothing more to say
                return 1
            except OSError as exc:  # the system refused something (permissions, disk full): no traceback
                name = f" {exc.filename}" if exc.filename else ""
                print(f"error: {exc.strerror or exc}{name}", file=sys.stderr)
                return 1
    except KeyboardInterrupt as exc:  # (one that came just as the handlers were put back)
        return report_interrupted(exc)
