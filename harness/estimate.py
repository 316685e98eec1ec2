"""What a sweep would run and about how long it would take (``sweep --dry-run``, ``reproduce --dry-run``).

The estimate comes from the sweep's own finished points when its output folder has some (a resumed
sweep: the mean time of a finished point, times the points left); otherwise from a cost model of one
run — a fixed start-up plus a time per sample — whose figures the output names as its basis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from .config import RunConfig
from .errors import ResultsError
from .results import load_results
from .sweep import SweepSpec, is_done, point_path

#: Cost model of one run when no point of the sweep has been measured: bringing up the namespaces and
#: starting three node processes (two load torch) costs about RUN_START_S, then each sample about
#: SAMPLE_S on an unshaped link. Fitted to the two timings of `reproduce` on the 2-core reference
#: machine that the README reports (64 points of 10 000 samples in 478 s, of 320 samples in 289 s). A
#: rough guide: a shaped link, another machine or a busy one change it, which the output says.
RUN_START_S = 4.4
SAMPLE_S = 0.0003


@dataclass(frozen=True)
class SweepPreview:
    """The points of a sweep, which of them are done, and the estimated time of the rest."""

    points: tuple[RunConfig, ...]
    done: tuple[bool, ...]
    samples: int  # per run of a point
    seconds_per_point: float
    basis: str  # where seconds_per_point comes from, for the user

    @property
    def todo(self) -> int:
        return sum(1 for d in self.done if not d)

    @property
    def seconds(self) -> float:
        return self.todo * self.seconds_per_point


def _measured_point_seconds(paths: Sequence[Path]) -> list[float]:
    """Total run time of each finished point (the runs' ``duration_s``; start-up between runs aside)."""
    out = []
    for path in paths:
        try:
            runs = load_results(path)["runs"]
            out.append(sum(float(r["duration_s"]) for r in runs))
        except (ResultsError, KeyError, TypeError, ValueError):
            continue
    return out


def preview(spec: SweepSpec, out_dir: Path, dataset_size: int | None = None) -> SweepPreview:
    """The preview of ``spec`` run into ``out_dir``; ``dataset_size`` defaults to the test split's size
    (read from the dataset, which must then be there)."""
    points = tuple(spec.points())
    done = tuple(is_done(point_path(out_dir, cfg), cfg) for cfg in points)
    base = spec.base
    if base.samples is not None:
        samples = base.samples
    else:
        if dataset_size is None:
            import models

            dataset_size = len(models.load_dataset(base.dataset, "test", base.data_dir))
        samples = dataset_size
    measured = _measured_point_seconds(
        [point_path(out_dir, c) for c, d in zip(points, done, strict=True) if d]
    )
    if measured:
        per_point = sum(measured) / len(measured)
        basis = f"the mean run time of the {len(measured)} point(s) already measured in {out_dir}"
    else:
        per_point = base.repeat * (RUN_START_S + samples * SAMPLE_S)
        shaped = any(link.requested() for link in spec.links) or base.test_edge is not None
        basis = (
            f"~{RUN_START_S:g} s to start each run plus ~{SAMPLE_S * 1000:g} ms a sample, as on the 2-core "
            "reference machine; none of these points measured yet"
            + ("; a shaped link adds its transfer time" if shaped else "")
        )
    return SweepPreview(points, done, samples, per_point, basis)


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
    rows = [
        [i, cfg.name, cfg.exit if cfg.exit is not None else "–", f"{cfg.threshold:g}", cfg.edge_cloud.label(),
         "done" if d else "to run", point_path(out_dir, cfg).name]
        for i, (cfg, d) in enumerate(zip(p.points, p.done, strict=True), start=1)
    ]  # fmt: skip
    repeat = p.points[0].repeat if p.points else 1
    lines = [
        f"dry run: nothing is run. {len(p.points)} point(s) into {out_dir}, each {repeat} run(s) of "
        f"{p.samples} samples",
        tabulate(rows, headers=["#", "model", "exit", "T", "link", "status", "results file"]),
        "",
        f"{len(p.points) - p.todo} done already, {p.todo} to run: about {_duration(p.seconds)} "
        f"({_duration(p.seconds_per_point)} a point)",
        f"estimated from {p.basis}",
    ]
    return "\n".join(lines)
