"""Study efficiency: the fixed cost of a point run the old way -- a fresh testbed and fresh node processes,
as a sweep ran each point -- against a study's, where the nodes stay up and are reconfigured per run.

    .venv/bin/python -m bench.bench_study [--rounds 3] [--exits 2] [--samples 64]
    .venv/bin/python -m bench.bench_study --grid [--repeat 5]    # the paper's grid itself: 15-20 minutes

**Fixed cost** of a point = its wall time less its measured phase (first batch sent to last prediction,
the run's overall latency × samples), with few samples so that compute hardly counts:

- *old*: ``run_experiment`` of the point, as ``sweep`` ran each one: namespaces up, three processes
  started (two load torch), the calibration before and after, the run, everything torn down;
- *new*: one run of a study (``harness.study``) of the same points: the time from the end of one run
  to the end of the next -- reconfiguring the nodes, the warm-up batches, the records, the point's
  results file -- plus its share, at the paper grid's scale (64 points × the blocks), of what a study
  pays once: bringing the link's nodes up (timed apart, with ``StudyBed``) and a calibration per block.

Each round runs the points the old way, then as a fresh study, each in a random order, so a machine
that slows down during the bench slows both. The table gives the median over the rounds' points and
the ratio old / new against the target (≥ 3).

It also measures the time per sample (a study's runs of ``--long-samples`` samples, less the fixed
cost) and **extrapolates** the paper's grid (64 points × 10 000 samples × ``--repeat`` blocks) from
those figures, against 20 minutes; ``--grid`` runs that grid as ``reproduce --repeat N`` would, and
reports its wall time. The figures ``harness/estimate.py`` uses for a dry run are printed last.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from contract.names import LOCAL_EXIT_KINDS, LOCAL_EXITS
from contract.results import Run
from harness.bed import StudyBed
from harness.calibration import calibrate
from harness.config import RunConfig
from harness.environment import cpu_model
from harness.interrupts import Interrupts
from harness.runner import prepare, run_experiment
from harness.study import Slot, run_study
from harness.sweep import PAPER_THRESHOLDS, SweepSpec

TARGET_RATIO = 3.0
GRID_LIMIT_S = 20 * 60
GRID_SAMPLES = 10_000


def measured_s(run: Run) -> float:
    """A run's measured phase: its overall latency (ms per sample) × its samples."""
    return run.summary.overall_latency_ms * run.summary.samples / 1000


def old_way(cfg: RunConfig) -> float:
    """Fixed cost of ``cfg`` run as a sweep ran each point: fresh testbed and processes."""
    started = time.monotonic()
    results = run_experiment(cfg)
    return time.monotonic() - started - measured_s(results.runs[0])


def study_runs(spec: SweepSpec, out_dir: Path) -> list[tuple[Slot, float, float]]:
    """(slot, seconds since the previous run ended, measured phase) of each run of ``spec`` after the
    first (which includes the study's start: checks, the nodes' start-up)."""
    ends: list[tuple[Slot, float, float]] = []
    run_study(
        spec, out_dir, progress=False, on_run=lambda s, r: ends.append((s, time.monotonic(), measured_s(r)))
    )
    return [(s, t - ends[i][1], m) for i, (s, t, m) in enumerate(ends[1:])]


def bed_start_s(cfg: RunConfig, workdir: Path) -> float:
    """Bringing one link's testbed and its three nodes up, and down again."""
    plan = prepare(cfg)
    started = time.monotonic()
    with StudyBed(plan, workdir):
        pass
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of old way, then new (default 3)")
    p.add_argument("--exits", type=int, default=2, help="exits per round: points = 2 models × exits × 2 T")
    p.add_argument("--samples", type=int, default=64, help="samples per run for the fixed cost (default 64)")
    p.add_argument("--long-samples", type=int, default=2000, help="samples per run for the time per sample")
    p.add_argument("--repeat", type=int, default=5, help="blocks of the grid (default 5)")
    p.add_argument("--isolation", default="auto", choices=("auto", "netns", "loopback"))
    p.add_argument("--grid", action="store_true", help="run the whole grid × --repeat blocks (minutes)")
    args = p.parse_args(argv)

    print(f"machine: {cpu_model()}; grid: 64 points × {GRID_SAMPLES} samples × {args.repeat} blocks")
    # (no busy re-runs: on a shared machine they would add whole runs to the old way's fixed cost; a
    # study does not re-run busy runs)
    base = RunConfig(samples=args.samples, isolation=args.isolation, busy_retries=0)
    rng = random.Random(0)

    def some_points(base: RunConfig, seed: int) -> SweepSpec:
        """A part of the paper's grid: SEM and MEM at ``--exits`` random exits and two random T."""
        exits = tuple(sorted(rng.sample(LOCAL_EXITS, args.exits)))
        thresholds = tuple(sorted(rng.sample(PAPER_THRESHOLDS, 2)))
        return SweepSpec(base, LOCAL_EXIT_KINDS, exits, thresholds, (base.edge_cloud,), seed)

    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp_name:
        tmp = Path(tmp_name)
        if args.grid:
            return run_grid(args, tmp)
        calibrations = [0.0] * 3
        for i in range(3):
            started = time.monotonic()
            calibrate()
            calibrations[i] = time.monotonic() - started
        calibration_s = statistics.median(calibrations)
        old: list[float] = []
        new: list[float] = []
        beds: list[float] = []
        for r in range(args.rounds):
            spec = some_points(base.replace(repeat=2), seed=r)
            points = spec.points()
            for cfg in rng.sample(points, len(points)):
                old.append(old_way(cfg.replace(repeat=1)))
            beds.append(bed_start_s(points[0], tmp / f"bed-{r}"))
            for slot, seconds, measured in study_runs(spec, tmp / f"study-{r}"):
                if slot.position:  # (a block's first run includes the block's calibration: counted apart)
                    new.append(seconds - measured)
            print(f"round {r + 1}/{args.rounds}: old {statistics.median(old):.2f} s, new "
                  f"{statistics.median(new):.2f} s a point so far", file=sys.stderr)  # fmt: skip
        bed = statistics.median(beds)
        runs_per_bed = 64 * args.repeat
        new_fixed = statistics.median(new) + bed / runs_per_bed + calibration_s / 64
        old_fixed = statistics.median(old)
        ratio = old_fixed / new_fixed
        rows: list[list[Any]] = [
            ["old: fresh testbed + processes per point", len(old), f"{old_fixed:.3f}",
             f"{min(old):.3f}–{max(old):.3f}"],
            ["new: study run (reconfigured nodes)", len(new), f"{statistics.median(new):.3f}",
             f"{min(new):.3f}–{max(new):.3f}"],
            [f"new: + bed start / {runs_per_bed} + calibration / 64", "", f"{new_fixed:.3f}", ""],
        ]  # fmt: skip
        print(tabulate(rows, headers=["fixed cost per point", "n", "median s", "range s"]))
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(f"\nold / new = {ratio:.1f}× ({verdict} the target ≥ {TARGET_RATIO:g}×); bed start {bed:.2f} s, "
              f"calibration {calibration_s:.2f} s")  # fmt: skip

        # Time per sample: a study of a few points at --long-samples, less the fixed cost.
        spec = some_points(base.replace(samples=args.long_samples, repeat=1), seed=99)
        per_sample = statistics.median(
            (seconds - statistics.median(new)) / args.long_samples
            for slot, seconds, _m in study_runs(spec, tmp / "long")
            if slot.position
        )
        runs = 64 * args.repeat
        grid_s = args.repeat * (bed + calibration_s) + runs * (
            statistics.median(new) + GRID_SAMPLES * per_sample
        )
        verdict = "within" if grid_s <= GRID_LIMIT_S else "OVER"
        print(
            f"time per sample {per_sample * 1000:.3f} ms; the grid × {args.repeat} blocks, extrapolated: "
            f"{grid_s / 60:.1f} min ({verdict} {GRID_LIMIT_S / 60:.0f} min; old way, fixed costs alone: "
            f"{runs * old_fixed / 60:.1f} min)"
        )
        print(
            f"\nfor harness/estimate.py: BED_START_S = {bed:.1f}, RUN_FIXED_S = {statistics.median(new):.2f}, "
            f"SAMPLE_S = {per_sample:.5f}, CALIBRATION_S = {calibration_s:.2f}"
        )
    return 0


def run_grid(args: argparse.Namespace, tmp: Path) -> int:
    spec = SweepSpec.paper(RunConfig(isolation=args.isolation, repeat=args.repeat, busy_retries=0))
    started = time.monotonic()
    outcome = run_study(spec, tmp / "grid", progress=True)
    wall = time.monotonic() - started
    verdict = "within" if wall <= GRID_LIMIT_S else "OVER"
    print(f"{outcome.describe()}")
    print(
        f"the paper's grid × {args.repeat} blocks: {wall / 60:.1f} min ({verdict} {GRID_LIMIT_S / 60:.0f} min)"
    )
    return 0 if outcome.failed == 0 else 1


if __name__ == "__main__":
    try:
        with Interrupts():  # (Ctrl-C or SIGTERM unwind as KeyboardInterrupt: every testbed is torn down)
            code = main()
    except KeyboardInterrupt:
        print("interrupted: nothing left running", file=sys.stderr)
        code = 130
    raise SystemExit(code)
