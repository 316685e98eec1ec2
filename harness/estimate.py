"""What a study would run and about how long it would take (``sweep --dry-run``, ``reproduce --dry-run``).

The estimate comes from the study's own finished runs when its output folder has some (a resumed study:
the mean time of a finished run, times the runs left); otherwise from a cost model of a study -- the
nodes started once per link and block, then a fixed cost and a time per sample for each run -- whose
figures the output names as its basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from .config import RunConfig
from .study import recorded_runs
from .sweep import SweepSpec, point_path

#: Cost model of a study when none of its runs has been measured, from bench/bench_study.py on the
#: 2-core reference machine (unshaped link, the shipped models): bringing up a link's testbed and its
#: three nodes costs about BED_START_S, once per link and block; each run then costs RUN_FIXED_S
#: (reconfiguring the nodes, warm-up batches, records) plus SAMPLE_S a sample; each block starts with a
#: calibration of CALIBRATION_S. A rough guide: a shaped link, another machine or a busy one change it,
#: which the output says.
BED_START_S = 5.8
RUN_FIXED_S = 0.09
SAMPLE_S = 0.00023
CALIBRATION_S = 0.34


@dataclass(frozen=True)
class SweepPreview:
    """The points of a study, how many of each one's runs are done, and the estimated time of the rest."""

    points: tuple[RunConfig, ...]
    runs_done: tuple[int, ...]  # per point, of ``blocks``
    blocks: int
    samples: int  # per run
    seconds_per_run: float
    overhead_s: float  # start-ups of the nodes and calibrations the rest needs
    basis: str  # where seconds_per_run comes from, for the user

    @property
    def done(self) -> tuple[bool, ...]:
        return tuple(n >= self.blocks for n in self.runs_done)

    @property
    def todo(self) -> int:
        """Points with a run left."""
        return sum(1 for d in self.done if not d)

    @property
    def runs_todo(self) -> int:
        return sum(self.blocks - n for n in self.runs_done)

    @property
    def seconds_per_point(self) -> float:
        return self.blocks * self.seconds_per_run

    @property
    def seconds(self) -> float:
        return self.runs_todo * self.seconds_per_run + self.overhead_s


def preview(spec: SweepSpec, out_dir: Path, dataset_size: int | None = None) -> SweepPreview:
    """The preview of ``spec`` run into ``out_dir``; ``dataset_size`` defaults to the test split's size
    (read from the dataset, which must then be there)."""
    points = tuple(spec.points())
    recorded = [recorded_runs(point_path(out_dir, cfg), cfg, spec) for cfg in points]
    blocks = spec.base.repeat
    runs_done = tuple(min(len(r.blocks), blocks) for r in recorded)
    base = spec.base
    if base.samples is not None:
        samples = base.samples
    else:
        if dataset_size is None:
            import models

            dataset_size = len(models.load_dataset(base.dataset, "test", base.data_dir))
        samples = dataset_size
    measured = [run.duration_s for r in recorded for run in r.runs if run.duration_s is not None]
    runs_todo = sum(blocks - n for n in runs_done)
    blocks_left = len({b for r in recorded for b in range(blocks) if b not in r.blocks})
    if measured:
        per_run = sum(measured) / len(measured)
        basis = f"the mean time of the {len(measured)} run(s) already measured in {out_dir}"
        overhead = 0.0
    else:
        per_run = RUN_FIXED_S + samples * SAMPLE_S
        links = len({(cfg.edge_cloud, cfg.test_edge) for cfg in points})
        calibration = CALIBRATION_S if base.calibrate else 0.0
        overhead = blocks_left * (links * BED_START_S + calibration) if runs_todo else 0.0
        shaped = any(link.requested() for link in spec.links) or base.test_edge is not None
        basis = (
            f"~{BED_START_S:g} s to start a link's nodes once a block, then ~{RUN_FIXED_S:g} s a run plus "
            f"~{SAMPLE_S * 1000:g} ms a sample, as on the 2-core reference machine; none of these runs "
            "measured yet" + ("; a shaped link adds its transfer time" if shaped else "")
        )
    return SweepPreview(points, runs_done, blocks, samples, per_run, overhead, basis)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def format_preview(p: SweepPreview, out_dir: Path) -> str:
    """The table of points (model, exit, T, link, status, results file) and the estimate."""

    def status(n: int) -> str:
        return "done" if n >= p.blocks else "to run" if n == 0 else f"{n}/{p.blocks} runs done"

    rows = [
        [i, cfg.name, cfg.exit if cfg.exit is not None else "–", f"{cfg.threshold:g}", cfg.edge_cloud.label(),
         status(n), point_path(out_dir, cfg).name]
        for i, (cfg, n) in enumerate(zip(p.points, p.runs_done, strict=True), start=1)
    ]  # fmt: skip
    lines = [
        f"dry run: nothing is run. {len(p.points)} point(s) into {out_dir}, in {p.blocks} block(s) (each "
        f"point once a block, in a random order), each run of {p.samples} samples",
        tabulate(rows, headers=["#", "model", "exit", "T", "link", "status", "results file"]),
        "",
        f"{len(p.points) - p.todo} done already, {p.todo} to run: about {_duration(p.seconds)} "
        f"({_duration(p.seconds_per_point)} a point)",
        f"{p.runs_todo} run(s) to go, about {p.seconds_per_run:.1f} s each; estimated from {p.basis}",
    ]
    return "\n".join(lines)
