"""The names every package shares, each defined here once: the network's exits, the model kinds, the
procedures of a batch, the testbed's isolations, the datasets, and the schema id of every file the
project writes. Other packages import these; none redefines them."""

from __future__ import annotations

import re
from typing import Literal, get_args

#: The paper's network: nine convolutional blocks; a local exit may follow each of blocks 1..8, and
#: block 9 feeds the cloud (final) exit.
NUM_BLOCKS = 9
LOCAL_EXITS: tuple[int, ...] = tuple(range(1, NUM_BLOCKS))
#: The final exit's key beside the local exits' "1".."8" (training logs, checkpoints).
CLOUD = "cloud"

#: ``standard``: the cloud exit only; ``sem``: one local exit after block k; ``mem``: local exits after
#: every block 1..8, one of them active at inference (paper §3).
ModelKind = Literal["standard", "sem", "mem"]
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
#: The kinds with a local exit (the paper compares them exit by exit).
LOCAL_EXIT_KINDS: tuple[ModelKind, ...] = ("sem", "mem")

#: Where a sample exited.
ExitSource = Literal["edge", "cloud"]
EXIT_SOURCES: tuple[ExitSource, ...] = get_args(ExitSource)

#: How the testbed keeps the three nodes apart: ``auto`` chooses network namespaces when it can, never
#: containers (``docker``: asked for by name).
Isolation = Literal["auto", "netns", "loopback", "docker"]
ISOLATIONS: tuple[Isolation, ...] = get_args(Isolation)

FASHION_MNIST = "fashion-mnist"
CIFAR10 = "cifar10"
SYNTHETIC = "synthetic"
DATASETS: tuple[str, ...] = (FASHION_MNIST, CIFAR10, SYNTHETIC)
DEFAULT_DATASET = FASHION_MNIST

#: The procedures of one batch (paper Fig. 4): 1 test → edge, 2 edge compute, 3-1 edge → test (confident
#: samples), 3-2 edge → cloud (the rest), 4 cloud compute, 5 cloud → test.
PROCEDURES = ("1", "2", "3-1", "3-2", "4", "5")
#: A locally exited sample goes 1 → 2 → 3-1; a cloud-exited one 1 → 2 → 3-2 → 4 → 5.
EDGE_PATH = ("1", "2", "3-1")
CLOUD_PATH = ("1", "2", "3-2", "4", "5")


def schema_id(family: str, version: int) -> str:
    """``family/version``, the way every file of the project names its format."""
    return f"{family}/{version}"


def schema_version(schema: object, family: str) -> int | None:
    """The version of ``schema`` when it names ``family`` (``"localexit/2"`` → 2), else None."""
    if not isinstance(schema, str):
        return None
    match = re.fullmatch(rf"{re.escape(family)}/([1-9][0-9]*)", schema)
    return int(match.group(1)) if match else None


#: The results file (``contract.results``; its versions are listed there).
RESULTS_FAMILY = "localexit"
RESULTS_VERSION = 3
RESULTS_SCHEMA = schema_id(RESULTS_FAMILY, RESULTS_VERSION)
#: The test node's per-sample records of one run (``contract.records``).
RECORDS_SCHEMA = "localexit-records/1"
#: A training log (``models.train`` writes, ``reports`` reads).
TRAINLOG_SCHEMA = "localexit-trainlog/1"
#: A study's manifest, ``sweep.json`` (``harness.study``; version 1 was that of sweeps that ran every
#: point once, in grid order).
STUDY_SCHEMA = "localexit-sweep/2"
#: The manifest's file name in a study's output folder (beside ``points/``).
STUDY_MANIFEST_NAME = "sweep.json"
#: The per-sample records kept beside a results file (``harness.samples``).
SAMPLES_SCHEMA = "localexit-samples/1"
#: Exit thresholds calibrated for a target accuracy (``models.calibration``).
CALIBRATION_FAMILY = "localexit-calibration"
CALIBRATION_VERSION = 1
CALIBRATION_SCHEMA = schema_id(CALIBRATION_FAMILY, CALIBRATION_VERSION)
#: The serving test node's protocol on its standard input and output (``nodes.serve``).
SERVE_PROTOCOL = "localexit-serve/1"
#: A link schedule (``netem.schedule``).
LINK_SCHEDULE_SCHEMA = "localexit-link-schedule/1"
#: A profile of a multi-exit edge's exits (``nodes.policy``, written by ``harness profile``).
PROFILE_SCHEMA = "localexit-profile/1"
#: An exit-policy study (``reports.adapt``, written by ``harness adapt``).
ADAPT_SCHEMA = "localexit-adapt/1"
#: A model checkpoint (``models.checkpoint``).
CHECKPOINT_FORMAT = "localexit-checkpoint/1"
