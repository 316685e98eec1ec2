"""Studies: every point of a sweep once per block, each block in a seeded random order, on nodes that
stay up between runs.

Running every SEM point and then every MEM point turns the machine's drift over the minutes in between
into a difference between SEM and MEM. A study runs ``RunConfig.repeat`` blocks instead; each block
runs every point once, in its own random order (:func:`block_order`), so two points are compared within
a block -- the run is the unit of replication, and ``reports`` pairs points by block. Every run is kept:
a point's results file holds all its runs, each with its ``block`` and its ``position`` in the block.

The nodes of a link are started once (``harness.bed``) and reconfigured for each run; a node that dies
fails that run only: the run is recorded as failed, the nodes are started again, and the study goes on.
Each run is measured as ``run`` measures one: run again while other programs used the CPU
(``harness.busy``: the discarded attempts in the file's ``discarded_runs``, the kept one marked
``busy`` when still over the limit), its clocks checked (``--strict-clocks`` fails it), its samples in
the point's archive (``harness.samples``).

Files (in the output folder, as a sweep's): ``points/<label>.json``, each point's results file,
rewritten atomically after each of its runs with every run so far, and beside it
``points/<label>.samples.npz``, the per-sample archive of every run and attempt so far (those of an
earlier invocation read back and written again with the new one's); and ``sweep.json``, the manifest
(schema ``localexit-sweep/2``): the order seed, the order itself (block, position, point) with each
run's status, and each point's status, rewritten after each run. Run again, the same study resumes: the
runs not in a results file yet run, in the recorded order.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from contract.atomic import write_json_atomic
from contract.names import STUDY_SCHEMA
from contract.results import Run

from . import busy
from .config import RunConfig, config_from_dict, config_to_dict
from .errors import ConfigError, NodeFailure, ResultsError
from .results import build_results, build_run, load_results, write_results
from .samples import SampleTable, earlier_rows, without_samples
from .sweep import MANIFEST_NAME, SweepSpec, exclusive, point_path

if TYPE_CHECKING:
    from .bed import StudyBed, StudyCommands
    from .runner import Plan, TestbedFactory

logger = logging.getLogger(__name__)

#: How :func:`block_order` orders a block, in words, for the manifest and the results files.
ORDER_METHOD = (
    "each block a permutation drawn by random.Random(f'{order_seed}:{block}'): its links in a random "
    "order, and each link's points in a random order"
)


@dataclass(frozen=True)
class Slot:
    """One run of a study: the ``point`` run in ``block`` at ``position`` (0-based) of that block."""

    block: int
    position: int
    point: RunConfig

    @property
    def label(self) -> str:
        return self.point.label()


def block_order(points: Sequence[RunConfig], repeat: int, seed: int) -> list[Slot]:
    """``repeat`` blocks, each every point once in a random order; deterministic in ``seed``.

    Each block draws its order from its own ``random.Random(f"{seed}:{block}")``, so a block's order
    does not depend on the others'. The points of one link stay together within a block (its links in a
    random order, each link's points in a random order), so that a study with several links brings up
    each link's nodes once per block rather than at every other run.
    """
    if repeat < 1:
        raise ValueError(f"a study needs at least one block, got {repeat}")
    groups: dict[Any, list[int]] = {}
    for i, cfg in enumerate(points):
        groups.setdefault((cfg.edge_cloud, cfg.test_edge), []).append(i)
    slots: list[Slot] = []
    for block in range(repeat):
        rng = random.Random(f"{seed}:{block}")
        links = [list(members) for members in groups.values()]
        rng.shuffle(links)
        for members in links:
            rng.shuffle(members)
        order = [i for members in links for i in members]
        slots += [Slot(block, position, points[i]) for position, i in enumerate(order)]
    return slots


def study_config(spec: SweepSpec) -> dict[str, Any]:
    """What identifies a study besides its points: recorded in the manifest and in every results file."""
    return {"blocks": spec.base.repeat, "order_seed": spec.order_seed, "order": ORDER_METHOD}


def _same_study(recorded: object, spec: SweepSpec) -> bool:
    if not isinstance(recorded, dict):
        return False
    return (recorded.get("blocks"), recorded.get("order_seed")) == (spec.base.repeat, spec.order_seed)


@dataclass(frozen=True)
class Recorded:
    """What a point's results file already holds for a study: its runs, the attempts of those runs
    discarded as measured on a busy host (``harness.busy``), and the blocks the runs ran in."""

    runs: tuple[Run, ...] = ()
    blocks: frozenset[int] = frozenset()
    discarded: tuple[Run, ...] = ()


def recorded_runs(path: Path, cfg: RunConfig, spec: SweepSpec) -> Recorded:
    """The runs of ``path`` that count for the point ``cfg`` of the study ``spec``.

    They count when the file validates, holds exactly this request and was written by the same study
    (blocks and order seed): each run then stands for its block. A file that a sweep wrote before
    studies existed (no ``study`` in its config, no block on its runs) with this very request holds
    the point's runs already: it counts as complete, without blocks. Anything else counts for nothing
    (and is overwritten once the point's first run is done).
    """
    if not path.is_file():
        return Recorded()
    try:
        data = load_results(path)
    except ResultsError as exc:
        logger.warning("%s does not count: %s", path.name, exc)
        return Recorded()
    request = data.config.request
    try:  # (read back through RunConfig, so that an option added since takes its default)
        stored = config_to_dict(config_from_dict(request)) if isinstance(request, dict) else None
    except ValueError:
        return Recorded()
    if stored != config_to_dict(cfg):
        return Recorded()
    runs, discarded, study = data.runs, data.discarded_runs, data.config.study
    if study is None and not data.blocked:
        return Recorded(runs, frozenset(range(spec.base.repeat)), discarded)
    if not _same_study(study, spec):
        return Recorded()
    kept = tuple(run for run in runs if run.block is not None and run.block < cfg.repeat)
    indices = {run.index for run in kept}
    thrown = tuple(run for run in discarded if run.index in indices)
    return Recorded(kept, frozenset(run.block for run in kept if run.block is not None), thrown)


@dataclass
class StudyState:
    """The order of a study's runs, what each point's file holds, and each run's status."""

    spec: SweepSpec
    out_dir: Path
    order: list[Slot]
    recorded: dict[str, Recorded]
    status: dict[tuple[int, str], str] = field(default_factory=dict)  # (block, label) -> status
    errors: dict[tuple[int, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: SweepSpec, out_dir: Path) -> StudyState:
        """The study as found in ``out_dir``: its recorded order when the manifest there is this
        study's, else a fresh one; and the runs each point's results file holds."""
        points = spec.points()
        by_label = {cfg.label(): cfg for cfg in points}
        order = _recorded_order(out_dir / MANIFEST_NAME, spec, by_label)
        if order is None:
            order = block_order(points, spec.base.repeat, spec.order_seed)
        recorded = {
            label: recorded_runs(point_path(out_dir, cfg), cfg, spec) for label, cfg in by_label.items()
        }
        state = cls(spec, out_dir, order, recorded)
        for slot in order:
            done = slot.block in recorded[slot.label].blocks
            state.status[(slot.block, slot.label)] = "done" if done else "pending"
        return state

    def pending(self) -> list[Slot]:
        return [s for s in self.order if self.status[(s.block, s.label)] != "done"]

    def mark(self, slot: Slot, status: str, error: str | None = None) -> None:
        self.status[(slot.block, slot.label)] = status
        if error is not None:
            self.errors[(slot.block, slot.label)] = error

    def point_status(self, label: str) -> str:
        statuses = [self.status[(block, label)] for block in range(self.spec.base.repeat)]
        if "failed" in statuses:
            return "failed"
        return "done" if all(s == "done" for s in statuses) else "pending"

    def manifest(self) -> dict[str, Any]:
        blocks = self.spec.base.repeat
        points = []
        for cfg in self.spec.points():
            label = cfg.label()
            point_errors = [self.errors[(b, label)] for b in range(blocks) if (b, label) in self.errors]
            points.append(
                {
                    "label": label,
                    "file": str(point_path(self.out_dir, cfg).relative_to(self.out_dir)),
                    "status": self.point_status(label),
                    "runs_done": sum(1 for b in range(blocks) if self.status[(b, label)] == "done"),
                    "error": point_errors[-1] if point_errors else None,
                    "request": config_to_dict(cfg),
                }
            )
        runs = [
            {
                "block": s.block,
                "position": s.position,
                "label": s.label,
                "status": self.status[(s.block, s.label)],
                "error": self.errors.get((s.block, s.label)),
            }
            for s in self.order
        ]
        return {"schema": STUDY_SCHEMA, "study": study_config(self.spec), "points": points, "runs": runs}

    def save(self) -> None:
        write_json_atomic(self.out_dir / MANIFEST_NAME, self.manifest())


def _recorded_order(path: Path, spec: SweepSpec, by_label: dict[str, RunConfig]) -> list[Slot] | None:
    """The order the manifest at ``path`` recorded, if it is this study's (same blocks, order seed and
    points, each with the same request); None otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("schema") != STUDY_SCHEMA
        or not _same_study(data.get("study"), spec)
    ):
        return None
    try:
        requests = {p["label"]: p["request"] for p in data["points"]}
        if requests != {label: config_to_dict(cfg) for label, cfg in by_label.items()}:
            return None
        order = [Slot(int(r["block"]), int(r["position"]), by_label[r["label"]]) for r in data["runs"]]
    except (KeyError, TypeError, ValueError):
        return None
    expected = {(b, label) for b in range(spec.base.repeat) for label in by_label}
    if len(order) != len(expected) or {(s.block, s.label) for s in order} != expected:
        return None
    return order


@dataclass
class StudyOutcome:
    """Counts of runs: ``done`` in this invocation, ``skipped`` (done before), ``failed``."""

    runs: int = 0
    points: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def describe(self) -> str:
        blocks = self.runs // self.points if self.points else 0
        return (
            f"{self.points} point(s) × {blocks} block(s): {self.done} run(s) done, {self.skipped} done "
            f"already, {self.failed} failed, in {self.seconds:.0f} s"
        )


#: Called after each run with its slot and its ``runs[]`` entry (progress, tests).
OnRun = Callable[[Slot, Run], None]


def run_study(
    spec: SweepSpec,
    out_dir: Path,
    *,
    factory: TestbedFactory | None = None,
    commands: StudyCommands | None = None,
    notify: Callable[[str], None] | None = None,
    progress: bool = True,
    keep_going: bool = True,
    on_run: OnRun | None = None,
) -> StudyOutcome:
    """Run the study's runs not yet done, in its order; write each point's results file after each of
    its runs and the manifest after every run. Every point is checked before anything starts."""
    from .runner import prepare  # (torch: only once a study is run, not for a dry run)

    points = spec.points()
    labels = [cfg.label() for cfg in points]
    if len(set(labels)) != len(labels):
        raise ConfigError("two sweep points would share a results file; check for duplicate values")
    # Catch a missing checkpoint or dataset before hours of running, not at run 37.
    plans = {cfg.label(): prepare(cfg) for cfg in points}
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):
        state = StudyState.load(spec, out_dir)
        state.save()
        return _run(state, plans, factory, commands, notify, progress, keep_going, on_run)


def _run(
    state: StudyState,
    plans: dict[str, Plan],
    factory: TestbedFactory | None,
    commands: StudyCommands | None,
    notify: Callable[[str], None] | None,
    progress: bool,
    keep_going: bool,
    on_run: OnRun | None,
) -> StudyOutcome:
    from netem._proc import signals_deferred
    from netem.cleanup import make_log_dir

    from .calibration import calibrate
    from .environment import collect_environment
    from .runner import results_config

    todo = state.pending()
    outcome = StudyOutcome(len(state.order), len(plans), skipped=len(state.order) - len(todo))
    if not todo:
        return outcome
    environment = collect_environment()
    runs = {label: list(rec.runs) for label, rec in state.recorded.items()}
    discarded = {label: list(rec.discarded) for label, rec in state.recorded.items()}
    study = study_config(state.spec)
    bar = tqdm(total=len(state.order), initial=outcome.skipped, unit="run", desc="study", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip

    def tell(text: str) -> None:
        if notify is not None:
            with tqdm.external_write_mode():  # (the notice on a line of its own, not across the bar)
                notify(text)

    started = time.monotonic()
    calibration: float | None = None
    block: int | None = None
    with signals_deferred():  # (never a log folder without the `finally` that removes it)
        workdir = make_log_dir()
    beds = _Beds(workdir, factory, commands, notify)
    try:
        for slot in todo:
            plan, cfg = plans[slot.label], slot.point
            bar.set_postfix_str(f"block {slot.block}: {slot.label}")
            if slot.block != block:
                # Once a block, not around every run as `run` does: a calibration costs 0.3 s, as much
                # as the rest of a study's fixed cost per run; a block's runs are minutes apart at most.
                block = slot.block
                calibration = calibrate() if plan.config.calibrate else None
            try:
                point_runs, point_discarded = runs[slot.label], discarded[slot.label]
                index = len(point_runs)
                # (re-run on a busy host as `run` does: every attempt kept, the last one marked busy)
                run, thrown = busy.rerun_while_busy(
                    functools.partial(_measure, beds, plan, slot, index, calibration),
                    limit=cfg.max_other_cpu,
                    retries=cfg.busy_retries,
                    where=f"block {slot.block}: {slot.label}",
                    notify=tell,
                )
                path = point_path(state.out_dir, slot.point)
                bed = beds.current
                assert bed is not None  # (the bed of the run just measured)
                config = {**results_config(plan, bed.testbed, [*point_runs, run]), "study": study}
                results = build_results(config, environment, [*point_runs, run], [*point_discarded, *thrown])
                earlier = _earlier_samples(path, point_runs, point_discarded)
                write_results(path, results, earlier_samples=earlier)
                # (the per-sample columns are in the archive now: a study's memory holds none of them)
                point_runs.append(without_samples(run))
                point_discarded += [without_samples(attempt) for attempt in thrown]
                state.mark(slot, "done")
                outcome.done += 1
                if on_run is not None:
                    on_run(slot, point_runs[-1])
            except NodeFailure as exc:  # (a ComponentFailure too: a delay line that died)
                # That run alone failed: the study goes on with the next, as past a failed point.
                state.mark(slot, "failed", str(exc))
                outcome.failed += 1
                bar.write(f"run of {slot.label} in block {slot.block} failed: {exc}")
                if not keep_going:
                    raise
            finally:
                state.save()
            bar.update(1)
    finally:
        bar.close()
        beds.close()
        outcome.seconds = time.monotonic() - started
        if outcome.failed:
            logger.warning("node logs of the failed runs kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def _measure(
    beds: _Beds, plan: Plan, slot: Slot, index: int, calibration_ms: float | None, attempt: int
) -> Run:
    """Attempt ``attempt`` of ``slot``'s run, on the bed of its link: its ``runs[]`` entry with the
    samples' columns, its clocks checked as ``run`` checks them (``--strict-clocks`` fails the run)."""
    from .runner import check_run_clocks

    bed = beds.bed_for(plan)
    retry = f"-retry-{attempt}" if attempt else ""
    records_path = bed.workdir / f"records-b{slot.block}-p{slot.position}{retry}.json"
    try:
        measured = bed.run(plan, records_path)
    except NodeFailure:
        beds.close()  # (a bed a run failed on is not reused: the next run starts its nodes again)
        raise
    run = build_run(
        index,
        measured.records,
        cpu_percent=measured.cpu_percent,
        rss_mib=measured.rss_mib,
        duration_s=measured.duration_s,
        calibration_ms=calibration_ms,
        host_other_percent=measured.host_other_percent,
        in_window=measured.in_window,
        block=slot.block,
        position=slot.position,
    )
    check_run_clocks(run, records_path, strict=plan.config.strict_clocks)  # (its records kept if it fails)
    records_path.unlink()  # (a records file is MiBs; the run holds what it needs of it)
    return run


def _earlier_samples(path: Path, runs: Sequence[Run], discarded: Sequence[Run]) -> SampleTable | None:
    """The archive rows of ``runs`` and ``discarded`` (a point's results so far, as its file holds them),
    to be written again with a new run's; a point's file whose archive is gone or not its own keeps
    its runs, and its archive holds the new runs only from then on."""
    try:
        return earlier_rows(path, runs, discarded)
    except ResultsError as exc:
        logger.warning("%s: the per-sample records of its earlier runs are lost: %s", path.name, exc)
        return None


class _Beds:
    """At most one :class:`~harness.bed.StudyBed` up at a time: the one of the link being run."""

    def __init__(
        self,
        workdir: Path,
        factory: TestbedFactory | None,
        commands: StudyCommands | None,
        notify: Callable[[str], None] | None,
    ) -> None:
        self.workdir = workdir
        self.factory = factory
        self.commands = commands
        self.notify = notify
        self.current: StudyBed | None = None
        self.started = 0

    def bed_for(self, plan: Plan) -> StudyBed:
        from .bed import StudyBed

        if self.current is not None and self.current.plan.edge_cloud == plan.edge_cloud:
            return self.current
        self.close()
        bed = StudyBed(
            plan,
            self.workdir / f"bed-{self.started}",
            factory=self.factory,
            commands=self.commands,
            notify=self.notify,
        )
        self.started += 1
        self.current = bed.__enter__()
        return bed

    def close(self) -> None:
        if self.current is not None:
            bed, self.current = self.current, None
            bed.__exit__(None, None, None)
