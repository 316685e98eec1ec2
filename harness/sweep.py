"""Sweeps: the grid of models × exits × thresholds × links (:class:`SweepSpec`), one results file per point.

``python -m harness sweep`` and ``reproduce`` run a grid as a study (``harness.study``: blocks in a
random order, nodes reconfigured between runs). :func:`run_sweep` runs each point through a callable of
its own instead -- every point once, in the grid's order, as sweeps ran before studies -- and is
resumable the same way: a point whose results file exists, validates and was measured with the same
request is skipped. Its manifest, ``sweep.json`` (``localexit-sweep/1``), lists every point with its
status and is rewritten atomically after each point.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from contract.atomic import write_json_atomic
from contract.errors import LocalExitError
from contract.names import LOCAL_EXITS, SWEEP_MANIFEST_SCHEMA

from .config import LinkOptions, RunConfig, config_from_dict, config_to_dict
from .errors import ConfigError, NodeFailure, ResultsError
from .results import load_results, write_results

logger = logging.getLogger(__name__)

MANIFEST_NAME = "sweep.json"
PAPER_THRESHOLDS = (0.1, 0.3, 0.5, 0.8)


@dataclass(frozen=True)
class SweepSpec:
    """The grid. ``base`` carries every option that does not vary (data, samples, limits...); its
    ``repeat`` is the number of blocks a study runs the grid in, and ``order_seed`` seeds their order
    (``harness.study``)."""

    base: RunConfig
    models: tuple[str, ...]
    exits: tuple[int, ...]
    thresholds: tuple[float, ...]
    links: tuple[LinkOptions, ...]
    order_seed: int = 0

    def __post_init__(self) -> None:
        if not self.models or not self.thresholds or not self.links:
            raise ValueError("a sweep needs at least one model, threshold and link")
        if any(m in ("sem", "mem") for m in self.models) and not self.exits:
            raise ValueError("sem and mem need at least one exit (--exits)")
        bad = [k for k in self.exits if k not in LOCAL_EXITS]
        if bad:
            raise ValueError(f"exits {bad} are out of range 1..{LOCAL_EXITS[-1]}")

    def points(self) -> list[RunConfig]:
        """Every point as a full ``RunConfig``; ``standard`` has no exit and one point per link."""
        out: list[RunConfig] = []
        for link in self.links:
            for model in self.models:
                if model == "standard":
                    out.append(self.base.replace(model=model, exit=None, edge_cloud=link))
                    continue
                for exit_ in self.exits:
                    for threshold in self.thresholds:
                        out.append(
                            self.base.replace(model=model, exit=exit_, threshold=threshold, edge_cloud=link)
                        )
        return out

    @classmethod
    def paper(
        cls, base: RunConfig, links: Sequence[LinkOptions] | None = None, order_seed: int = 0
    ) -> SweepSpec:
        """The paper's grid: SEM-1…8 and MEM at exits 1…8, T ∈ {0.1, 0.3, 0.5, 0.8}."""
        return cls(
            base,
            ("sem", "mem"),
            LOCAL_EXITS,
            PAPER_THRESHOLDS,
            tuple(links or (base.edge_cloud,)),
            order_seed,
        )


def point_path(out_dir: Path, cfg: RunConfig) -> Path:
    return out_dir / "points" / f"{cfg.label()}.json"


def is_done(path: Path, cfg: RunConfig) -> bool:
    """True when ``path`` holds complete, valid results for exactly this request."""
    if not path.is_file():
        return False
    try:
        data = load_results(path)
    except ResultsError as exc:
        logger.warning("re-running %s: %s", path.name, exc)
        return False
    request = data["config"].get("request")
    try:  # (read back through RunConfig, so that an option added since takes its default)
        stored = config_to_dict(config_from_dict(request)) if isinstance(request, dict) else None
    except ValueError:
        return False
    return stored == config_to_dict(cfg)


@dataclass
class SweepOutcome:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


RunPoint = Callable[[RunConfig], dict[str, Any]]
Check = Callable[[RunConfig], object]


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    run_point: RunPoint,
    *,
    preflight: Check | None = None,
    progress: bool = True,
    keep_going: bool = True,
) -> SweepOutcome:
    """Run every point not yet done; write one results file per point and the manifest after each."""
    points = spec.points()
    labels = [p.label() for p in points]
    if len(set(labels)) != len(labels):
        raise ConfigError("two sweep points would share a results file; check for duplicate values")
    if preflight is not None:
        # Catch a missing checkpoint or dataset before hours of running, not at point 37.
        for cfg in points:
            preflight(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir):
        return _run_points(points, labels, out_dir, run_point, progress=progress, keep_going=keep_going)


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold a lock on ``out_dir`` so that two sweeps never run the same points into it at once."""
    lock = (out_dir / ".lock").open("a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"another sweep is writing into {out_dir} right now; wait for it, or choose another --out-dir"
            ) from exc
        yield
    finally:
        lock.close()  # closing the file releases the lock


def _run_points(
    points: list[RunConfig],
    labels: list[str],
    out_dir: Path,
    run_point: RunPoint,
    *,
    progress: bool,
    keep_going: bool,
) -> SweepOutcome:
    status = {label: "pending" for label in labels}
    errors: dict[str, str] = {}
    for cfg in points:
        if is_done(point_path(out_dir, cfg), cfg):
            status[cfg.label()] = "done"

    def save_manifest() -> None:
        write_json_atomic(
            out_dir / MANIFEST_NAME,
            {
                "schema": SWEEP_MANIFEST_SCHEMA,
                "points": [
                    {
                        "label": label,
                        "file": str(point_path(out_dir, cfg).relative_to(out_dir)),
                        "status": status[label],
                        "error": errors.get(label),
                        "request": config_to_dict(cfg),
                    }
                    for label, cfg in zip(labels, points, strict=True)
                ],
            },
        )

    outcome = SweepOutcome(skipped=sum(1 for s in status.values() if s == "done"))
    save_manifest()
    started = time.monotonic()
    todo = [cfg for cfg in points if status[cfg.label()] != "done"]
    bar = tqdm(
        total=len(points),
        initial=outcome.skipped,
        unit="point",
        desc="sweep",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for cfg in todo:
            label = cfg.label()
            bar.set_postfix_str(label)
            try:
                results = run_point(cfg)
                write_results(point_path(out_dir, cfg), results)
                status[label] = "done"
                outcome.done += 1
            except NodeFailure as exc:  # (a ComponentFailure too: a delay line or relay that died)
                # a runtime failure of this point alone: record it, and the other points still run
                status[label] = "failed"
                errors[label] = str(exc)
                outcome.failed += 1
                bar.write(f"point {label} failed: {exc}")
                if not keep_going:
                    raise
            except LocalExitError:
                status[label] = "failed"
                raise
            finally:
                save_manifest()
            bar.update(1)
    finally:
        bar.close()
        outcome.seconds = time.monotonic() - started
    return outcome
