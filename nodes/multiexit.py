"""An edge that can cut each batch at any of a multi-exit model's exits, without restarting.

:class:`ExitSet` holds one checkpoint split at every exit the edge may use (``partition(model, k)`` for
each k, through :class:`~nodes.compute.PartsCache`): the parts share the loaded model's parameters, so
the edge holds the layers up to the deepest exit and the heads of every exit once, whatever the number
of exits. :func:`measure_profile` times each exit on a few batches to give an exit policy its
:class:`~nodes.policy.Profile`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from nodes.compute import ModelParts, PartsCache, run_cloud, run_edge
from nodes.policy import (
    DEFAULT_MARGIN,
    DEFAULT_PATIENCE,
    AdaptivePolicy,
    ExitPolicy,
    ExitProfile,
    LinkEstimate,
    LinkTruth,
    OraclePolicy,
    Profile,
)
from nodes.thresholds import ExitThresholds

#: The link a start-up profile assumes until the edge has seen its own traffic: fast enough that no
#: exit is ruled out before the first observation replaces it (LinkEstimator takes the first whole).
PRIOR_LINK = LinkEstimate(rate_bps=1e9, rtt_ms=0.1)


@dataclass(frozen=True, eq=False)
class ExitSet:
    """The parts of one checkpoint at each exit in ``parts`` (the edge runs ``at(k)`` for a batch cut
    at k); ``default`` is the exit the node was configured with."""

    parts: Mapping[int, ModelParts]
    default: int

    def __post_init__(self) -> None:
        if self.default not in self.parts:
            raise ValueError(f"the default exit {self.default} is not among the exits {sorted(self.parts)}")
        shas = {p.meta.sha256 for p in self.parts.values()}
        if len(shas) != 1:
            raise ValueError("the parts of an exit set come from one checkpoint")

    @classmethod
    def load(cls, cache: PartsCache, checkpoint: str | Path, exits: Sequence[int], default: int) -> ExitSet:
        """``checkpoint`` split at each of ``exits`` and at ``default`` (models.ModelError for an exit
        the model lacks)."""
        wanted = sorted({*exits, default})
        return cls({k: cache.get(checkpoint, k) for k in wanted}, default)

    @property
    def exits(self) -> tuple[int, ...]:
        return tuple(sorted(self.parts))

    @property
    def first(self) -> ModelParts:
        return self.parts[self.default]

    def at(self, exit: int) -> ModelParts:
        return self.parts[exit]


def feature_bytes(parts: ModelParts) -> int:
    """Bytes of one sample's features on the wire (float32; features of any shape the model makes)."""
    return 4 * math.prod(parts.feature_shape)


def measure_profile(
    exits: ExitSet,
    images: np.ndarray,
    threshold: float | ExitThresholds,
    *,
    batch_size: int,
    labels: np.ndarray | None = None,
    repeats: int = 3,
    link: LinkEstimate = PRIOR_LINK,
) -> Profile:
    """Each exit timed on ``images`` in batches of ``batch_size``: the median edge time per batch, the
    fraction of samples that exit locally (at each exit's own threshold and temperature, for a
    calibration's :class:`ExitThresholds`), and the median time of the cloud's part on a batch's unsure
    samples, computed here (a stand-in for the cloud node, which runs the same part); with ``labels``,
    the accuracy of the split at that exit. Each batch runs ``repeats`` times, the first as warm-up.

    The exits take turns batch by batch (not one exit after the other), so that a burst of other load
    on the machine lands on every exit alike instead of making one of them look slow."""
    if repeats < 2:
        raise ValueError("repeats must be ≥ 2: the first run of each batch is a warm-up")
    cuts = threshold if isinstance(threshold, ExitThresholds) else ExitThresholds.of(threshold)
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    edge_ms: dict[int, list[float]] = {k: [] for k in exits.exits}
    cloud_ms: dict[int, list[float]] = {k: [] for k in exits.exits}
    local = dict.fromkeys(exits.exits, 0)
    correct = dict.fromkeys(exits.exits, 0)
    for r in range(repeats):
        for b, batch in enumerate(batches):
            for k in exits.exits:
                parts = exits.at(k)
                t0 = time.perf_counter()
                res = run_edge(parts, batch, cuts.threshold(k), cuts.temperature(k))
                t1 = time.perf_counter()
                unsure = ~res.local
                preds = res.preds.copy()
                if unsure.any():
                    preds[unsure], _ = run_cloud(parts, np.ascontiguousarray(res.features[unsure]))
                t2 = time.perf_counter()
                if r == 0:  # (warm-up: its outcome is counted once, its times not at all)
                    local[k] += int(res.local.sum())
                    if labels is not None:
                        lab = labels[b * batch_size : b * batch_size + len(batch)]
                        correct[k] += int((preds == lab).sum())
                    continue
                edge_ms[k].append((t1 - t0) * 1e3)
                if unsure.any():
                    cloud_ms[k].append((t2 - t1) * 1e3)
    out = [
        ExitProfile(
            exit=k,
            edge_ms=statistics.median(edge_ms[k]),
            feature_bytes=feature_bytes(exits.at(k)),
            local_rate=local[k] / len(images),
            cloud_ms=statistics.median(cloud_ms[k]) if cloud_ms[k] else 0.0,
            accuracy=None if labels is None else correct[k] / len(images),
            threshold=None if cuts.uniform is not None else cuts.threshold(k),
            temperature=cuts.temperature(k),
        )
        for k in exits.exits
    ]
    first = exits.first
    return Profile(
        batch_size=batch_size,
        threshold=cuts.threshold(exits.default),
        exits=tuple(out),
        link=link,
        model=first.kind,
        sha256=first.meta.sha256,
    )


class PolicyMaker(Protocol):
    """What an edge with an exit policy is given: the exits it may cut at, and a fresh policy for each
    run (``images``: the run's first batch, to measure a profile on where none was given, at
    ``thresholds``; ``t0_ns``: the run's start on this node's monotonic clock)."""

    @property
    def name(self) -> str: ...

    @property
    def exits(self) -> ExitSet: ...

    def make(self, images: np.ndarray, thresholds: ExitThresholds, t0_ns: int) -> ExitPolicy: ...


@dataclass(frozen=True, eq=False)
class PolicySetup:
    """The adaptive or oracle policy over ``exits``: with ``profile`` (e.g. from ``harness profile``),
    or one measured on each run's first batch; ``slo_ms`` the latency objective; ``truth`` the link as
    scheduled (the oracle's knowledge)."""

    name: str
    exits: ExitSet
    profile: Profile | None = None
    slo_ms: float | None = None
    truth: LinkTruth | None = None
    margin: float = DEFAULT_MARGIN
    patience: int = DEFAULT_PATIENCE

    def __post_init__(self) -> None:
        if self.name not in ("adaptive", "oracle"):
            raise ValueError(f"a policy setup is for the adaptive or the oracle policy, not {self.name!r}")
        if self.name == "oracle" and self.truth is None:
            raise ValueError("the oracle policy needs the link schedule (--link-schedule)")
        if self.profile is not None:
            missing = [k for k in self.exits.exits if k not in self.profile.exit_numbers]
            if missing:
                raise ValueError(f"the profile has no entry for exit(s) {', '.join(map(str, missing))}")
        if self.slo_ms is not None and (
            self.profile is None or any(self.profile.at(k).accuracy is None for k in self.exits.exits)
        ):
            raise ValueError(
                "--latency-slo needs each exit's accuracy: give a --profile written by `harness profile`"
            )

    def make(self, images: np.ndarray, thresholds: ExitThresholds, t0_ns: int) -> ExitPolicy:
        profile = self.profile
        if profile is None:
            profile = measure_profile(self.exits, images, thresholds, batch_size=len(images), repeats=2)
        profile = dataclasses.replace(
            profile, exits=tuple(profile.at(k) for k in self.exits.exits)
        )  # (only the exits this edge may use)
        if self.name == "oracle":
            assert self.truth is not None
            return OraclePolicy(profile, self.truth, t0_ns, slo_ms=self.slo_ms)
        return AdaptivePolicy(profile, slo_ms=self.slo_ms, margin=self.margin, patience=self.patience)
