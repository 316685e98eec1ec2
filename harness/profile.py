"""``python -m harness profile``: measure what each exit of a multi-exit checkpoint costs, for an edge's
exit policy (``--profile FILE``; docs/adapt.md).

Per exit, on a validation split held out of the training set (never the test set): the edge's compute
time per batch, the feature bytes per sample, the fraction of samples exiting locally at the threshold (each exit's own with ``--calibration``),
the cloud part's compute time per batch (computed here: the same part the cloud node runs) and the
accuracy of the split at that exit. The file (``localexit-profile/1``, :class:`nodes.policy.Profile`) is
written atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.cli import Parser
from contract.errors import LocalExitError
from contract.names import DEFAULT_DATASET

PROG = "python -m harness profile"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="multi-exit checkpoint (default: the zoo's mem)"
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset (default {DEFAULT_DATASET})")
    p.add_argument("--data-dir", type=Path, default=None, help="the dataset's directory")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--threshold", type=float, default=None, help="normalized-entropy threshold T (default 0.3)"
    )
    cut.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="each exit's T and temperature from `harness calibrate`'s file, as the edge given it cuts",
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--samples", type=int, default=256, help="validation samples to time (default 256)")
    p.add_argument("--exits", default=None, metavar="K,K,...", help="exits to profile (default: all local)")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of each batch, the first a warm-up (default 3)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads, as the edge runs (default 1)")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="held-out share of the train set")
    p.add_argument("--validation-seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="profile file to write")
    return p


def _exits(text: str | None, available: Sequence[int]) -> tuple[int, ...]:
    from nodes.policy import usable_exits

    if text is None:
        return usable_exits(available, None)
    try:
        wanted = [int(x) for x in text.split(",") if x]
    except ValueError as exc:
        raise ValueError(f"--exits takes exits like 2,5,8, got {text!r}") from exc
    return usable_exits(available, wanted)


def profile_checkpoint(args: argparse.Namespace) -> object:
    """The :class:`nodes.policy.Profile` the options ask for (``ValueError``/``LocalExitError`` if not)."""
    import torch

    from contract.rules import check_threshold
    from models.checkpoint import default_checkpoint
    from models.datasets import ValidationSplit, load_dataset
    from nodes.compute import PartsCache
    from nodes.multiexit import ExitSet, measure_profile
    from nodes.thresholds import ExitThresholds, read_calibration

    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.batch_size < 1 or args.samples < 1 or args.threads < 1:
        raise ValueError("--batch-size, --samples and --threads must be ≥ 1")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_checkpoint("mem", None, args.dataset)
    cache = PartsCache()
    first = cache.get(checkpoint, 0)
    exits = _exits(args.exits, first.meta.config.local_exits)
    if not exits:
        raise ValueError(f"{checkpoint} has no local exit to profile")
    exit_set = ExitSet.load(cache, checkpoint, exits, exits[0])
    if args.calibration is not None:
        cuts = read_calibration(args.calibration, first.meta.sha256)
        cuts.check(exits)
    else:
        cuts = ExitThresholds.of(0.3 if args.threshold is None else args.threshold)
    train = load_dataset(args.dataset, "train", args.data_dir)
    _, validation = ValidationSplit(args.validation_fraction, args.validation_seed).split(train)
    n = min(args.samples, len(validation))
    return measure_profile(
        exit_set,
        validation.images[:n],
        cuts,
        batch_size=args.batch_size,
        labels=validation.labels[:n],
        repeats=args.repeats,
    )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    from nodes.policy import Profile, write_profile

    args = build_parser(prog).parse_args(argv)
    try:
        profile = profile_checkpoint(args)
        assert isinstance(profile, Profile)
        write_profile(profile, args.out)
    except (LocalExitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{'exit':>4} {'edge ms':>8} {'bytes':>7} {'local':>6} {'cloud ms':>8} {'accuracy':>8}")
    for e in profile.exits:
        print(
            f"{e.exit:>4} {e.edge_ms:>8.2f} {e.feature_bytes:>7.0f} {e.local_rate:>6.1%} "
            f"{e.cloud_ms:>8.2f} {e.accuracy if e.accuracy is not None else float('nan'):>8.2%}"
        )
    print(f"wrote {args.out}")
    return 0
