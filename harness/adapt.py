"""``python -m harness adapt``: does a MEM that picks its exit at run time beat fixed exits when the link
changes? (docs/adapt.md)

Under one link schedule, every fixed SEM-k, the MEM at every fixed exit, the adaptive MEM and the oracle
MEM run in ``--repeat`` blocks, each block every configuration once in a seeded random order
(:func:`harness.study.block_order`); each run is one ordinary harness run (:func:`run_experiment`: its
own testbed and nodes, the schedule's time 0 at its test node's start). The study is written as
``adapt.json`` (:mod:`reports.adapt`), with ``adapt.md`` (table, verdicts) and ``adapt.png`` (latency
and chosen exit over time against the link's rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from contract.atomic import write_atomic
from contract.cli import Parser
from contract.errors import LocalExitError
from contract.names import DEFAULT_DATASET
from contract.results import Run
from nodes.records import EXIT_DECISIONS

from .config import RunConfig
from .errors import ConfigError
from .parsers import exit_list
from .study import block_order

log = logging.getLogger(__name__)

PROG = "python -m harness adapt"

#: The default schedule: the shipped step trace's two rates (netem/traces/step.mahimahi: 12 and 1.2
#: Mbit/s) alternating every half second, with a longer delay on the slow phase. The shipped trace
#: itself steps every 5 s, longer than a run of a few thousand samples lasts at its fast rate, so a
#: run would see one phase only; pass it with --link-schedule netem/traces/step.toml for long runs.
DEFAULT_SCHEDULE = ",".join(
    f"{0.5 * i:g}s:" + ("12mbit/5ms" if i % 2 == 0 else "1200kbit/20ms") for i in range(120)
)
DEFAULT_SAMPLES = 1024
DEFAULT_REPEAT = 3


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--link-schedule",
        default=DEFAULT_SCHEDULE,
        metavar="SPEC_OR_FILE",
        help="the edge–cloud link over time (as for run; default: 12mbit/5ms and 1200kbit/20ms "
        "alternating every 0.5 s)",
    )
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help=f"samples per run ({DEFAULT_SAMPLES})"
    )
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help=f"blocks ({DEFAULT_REPEAT})")
    p.add_argument("--threshold", type=float, default=0.3, help="normalized-entropy threshold T (0.3)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (32)")
    p.add_argument(
        "--exits",
        type=exit_list,
        default=(1, 2, 3, 4, 5, 6, 7, 8),
        metavar="K-K|K,K",
        help="exits of the fixed configurations (1-8)",
    )
    p.add_argument("--no-sem", action="store_true", help="leave out the fixed SEM-k configurations")
    p.add_argument("--latency-slo", type=float, default=None, metavar="MS", help="for adaptive and oracle")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="per-exit costs for the adaptive and oracle MEM (default: measured first, as `harness profile` "
        "does, into the output folder's profile.json)",
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset ({DEFAULT_DATASET})")
    p.add_argument("--data-dir", type=Path, default=None, help="the dataset's directory")
    p.add_argument("--isolation", default="auto", help="node isolation, as for run (auto)")
    p.add_argument("--seed", type=int, default=0, help="order of the blocks and the samples (0)")
    p.add_argument("--out-dir", type=Path, default=Path("results/adapt"), help="where the study goes")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")
    return p


def study_points(base: RunConfig, exits: Sequence[int], *, sem: bool = True) -> list[RunConfig]:
    """Every configuration of the study on ``base`` (its schedule, samples, threshold...): SEM-k and
    MEM at k for each of ``exits``, the adaptive MEM and the oracle MEM."""
    points = [base.replace(model="sem", exit=k) for k in exits] if sem else []
    points += [base.replace(model="mem", exit=k) for k in exits]
    first = exits[len(exits) // 2]  # (the exit the node starts with; the policy chooses from the first batch)
    points.append(base.replace(model="mem", exit=first, exit_policy="adaptive"))
    points.append(base.replace(model="mem", exit=first, exit_policy="oracle"))
    return points


def point_label(cfg: RunConfig) -> str:
    from reports.adapt import ADAPTIVE, ORACLE, mem_label, sem_label

    if cfg.exit_policy == "adaptive":
        return ADAPTIVE
    if cfg.exit_policy == "oracle":
        return ORACLE
    assert cfg.exit is not None
    return sem_label(cfg.exit) if cfg.model == "sem" else mem_label(cfg.exit)


def adapt_run(label: str, block: int, run: Run) -> object:
    """The figures of ``run`` the study compares (a :class:`reports.adapt.AdaptRun`)."""
    import numpy as np

    from reports.adapt import AdaptRun

    s = run.summary
    if run.samples is not None:
        lat = np.asarray(run.samples.latency_ms, dtype=float)
        mean_ms, p95_ms = float(lat.mean()), float(np.percentile(lat, 95, method="inverted_cdf"))
    else:  # (per-sample latencies are moved to an archive when written: rebuild from the summary)
        mean_ms = (
            s.local_exits * (s.edge_latency_ms or 0.0) + s.cloud_exits * (s.cloud_latency_ms or 0.0)
        ) / s.samples
        batches = run.per_batch_ms.get("latency", ())
        p95_ms = float(np.percentile(batches, 95, method="inverted_cdf")) if batches else mean_ms
    sched = run.link_schedule
    return AdaptRun(
        label=label,
        block=block,
        mean_ms=mean_ms,
        p95_ms=p95_ms,
        overall_ms=s.overall_latency_ms,
        accuracy=s.overall_accuracy,
        local_exits=s.local_exits,
        samples=s.samples,
        busy=run.busy,
        schedule_from_s=None if sched is None else sched.measured_from_s,
        batch_latency_ms=tuple(run.per_batch_ms.get("latency", ())),
        batch_ids=tuple((run.per_batch_ids or {}).get("latency", ())),
        decisions=tuple(run.extra.get(EXIT_DECISIONS) or ()),
    )


def schedule_steps(text: str) -> tuple[tuple[float, float | None, float], ...]:
    """The schedule's link steps as ``(at_s, rate_bps, delay_ms)`` (``ConfigError`` when it is bad)."""
    from netem.schedule import from_text

    try:
        schedule = from_text(text)
    except (ValueError, LocalExitError) as exc:
        raise ConfigError(f"bad --link-schedule: {exc}") from exc
    return tuple((s.at_s, s.spec.rate_bps, s.spec.delay_s * 1e3) for s in schedule.steps)


def run_study(
    args: argparse.Namespace,
    run_point: Callable[[RunConfig], Run] | None = None,
    on_run: Callable[[object], None] | None = None,
) -> object:
    """Run the study the options ask for and return it (a :class:`reports.adapt.AdaptStudy`);
    ``run_point`` runs one configuration (default: one harness run), for tests."""
    from reports.adapt import AdaptRun, AdaptStudy

    try:
        base = RunConfig(
            model="mem",
            exit=5,
            threshold=args.threshold,
            batch_size=args.batch_size,
            samples=args.samples,
            dataset=args.dataset,
            data_dir=args.data_dir,
            link_schedule=args.link_schedule,
            isolation=args.isolation,
            seed=args.seed,
            calibrate=False,
            # A busy shared host would re-run most runs: every run is kept, marked busy in the study.
            busy_retries=0,
        )
        exits = tuple(sorted(set(args.exits)))
        if not exits:
            raise ValueError("--exits names no exit")
        points = study_points(base, exits, sem=not args.no_sem)
        if args.latency_slo is not None or args.profile is not None:
            points = [
                p.replace(latency_slo_ms=args.latency_slo, profile=args.profile)
                if p.exit_policy != "fixed"
                else p
                for p in points
            ]
        slots = block_order(points, args.repeat, args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    steps = schedule_steps(args.link_schedule)
    run_point = run_point or _harness_run
    runs: list[AdaptRun] = []
    for i, slot in enumerate(slots):
        label = point_label(slot.point)
        log.info("run %d/%d: block %d, %s", i + 1, len(slots), slot.block, label)
        run = run_point(slot.point)
        done = adapt_run(
            label, slot.block, dataclasses.replace(run, block=slot.block, position=slot.position)
        )
        assert isinstance(done, AdaptRun)
        runs.append(done)
        if on_run is not None:
            on_run(done)
    settings = {
        "samples": args.samples,
        "repeat": args.repeat,
        "threshold": args.threshold,
        "batch_size": args.batch_size,
        "exits": list(exits),
        "sem": not args.no_sem,
        "latency_slo_ms": args.latency_slo,
        "profile": None if args.profile is None else str(args.profile),
        "dataset": args.dataset,
        "seed": args.seed,
        "order": [point_label(s.point) for s in slots],
    }
    return AdaptStudy(schedule=args.link_schedule, steps=steps, runs=tuple(runs), settings=settings)


def _measure_profile(args: argparse.Namespace, path: Path) -> Path:
    """One profile for the adaptive and the oracle MEM of the whole study, so that both decide from the
    same costs (one measured on each run's first batch would differ from run to run)."""
    from nodes.policy import Profile, write_profile

    from . import profile

    argv = ["--threshold", repr(args.threshold), "--batch-size", str(args.batch_size)]
    argv += ["--dataset", args.dataset, "--out", str(path)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    measured = profile.profile_checkpoint(profile.build_parser().parse_args(argv))
    assert isinstance(measured, Profile)
    write_profile(measured, path)
    return path


def _harness_run(cfg: RunConfig) -> Run:
    from .runner import run_experiment

    results = run_experiment(cfg, notify=lambda text: log.info("%s", text))
    return results.runs[0]


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    from reports.adapt import AdaptStudy, figure, per_run_rows, report_markdown

    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.samples < 1 or args.repeat < 1:
        print("error: --samples and --repeat must be ≥ 1", file=sys.stderr)
        return 2

    def progress(run: object) -> None:
        print(*per_run_rows([run]), file=sys.stderr)  # type: ignore[list-item]

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.profile is None:
        args.profile = _measure_profile(args, out / "profile.json")
    study = run_study(args, on_run=progress)
    assert isinstance(study, AdaptStudy)
    study.write(out / "adapt.json")
    fig = figure(study, out / "adapt.png")
    text = report_markdown(study, fig.name if fig is not None else None)
    write_atomic(out / "adapt.md", text)
    print(text)
    print(f"study written to {out}/adapt.json, adapt.md" + (", adapt.png" if fig else ""))
    return 0
