"""Sweeps: the grid of models × exits × thresholds × links (:class:`SweepSpec`), one results file per point.

``python -m harness sweep`` and ``reproduce`` run a grid as a study (``harness.study``: blocks in a
random order, nodes reconfigured between runs, resumable); this module holds what a study and the
estimate of a dry run (``harness.estimate``) share: the grid, where each point's results file goes,
the manifest's name and the lock on the output folder.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from contract.names import LOCAL_EXIT_KINDS, LOCAL_EXITS, MODEL_KINDS, STUDY_MANIFEST_NAME
from contract.rules import check_model_exit

from .config import LinkOptions, RunConfig
from .errors import ConfigError

MANIFEST_NAME = STUDY_MANIFEST_NAME
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
        for model in self.models:
            if model not in MODEL_KINDS or model in LOCAL_EXIT_KINDS:  # (standard: the exits do not apply)
                for exit_ in self.exits or (None,):
                    check_model_exit(model, exit_)

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
            LOCAL_EXIT_KINDS,
            LOCAL_EXITS,
            PAPER_THRESHOLDS,
            tuple(links or (base.edge_cloud,)),
            order_seed,
        )


def point_path(out_dir: Path, cfg: RunConfig) -> Path:
    return out_dir / "points" / f"{cfg.label()}.json"


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
