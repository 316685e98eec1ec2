"""Training as in the paper (§3.2): every exit classifies every sample, the weighted sum of the per-exit
cross-entropy losses is back-propagated, SGD.

``python -m harness train --model sem --exit 3`` (or ``python -m models.train ...``) writes a checkpoint
and a JSON training log with per-epoch, per-exit train and test accuracy (the paper's Fig. 9) and the
final per-exit accuracies (Fig. 10).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contract.atomic import write_json_atomic
from contract.cli import Parser
from contract.errors import LocalExitError
from contract.names import CLOUD, DATASETS, DEFAULT_DATASET, LOCAL_EXITS, MODEL_KINDS, TRAINLOG_SCHEMA
from models.checkpoint import save_checkpoint, zoo_name
from models.cnn import ModelConfig, MultiExitCNN, build_model
from models.datasets import ImageDataset, download_cifar10, load_dataset
from models.errors import ModelError

log = logging.getLogger(__name__)

# Where new checkpoints go unless --out says otherwise: a folder of the working directory, never the
# shipped zoo inside the package (retraining must not silently replace the shipped models).
DEFAULT_OUT_DIR = Path("checkpoints")
WEIGHT_SCHEMES = ("equal", "linear", "cloud-heavy")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the paper's Table 1, scaled to a CPU)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    loss_weights: str = "equal"
    augment: bool = True
    threads: int | None = None
    max_train_samples: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be ≥ 1")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError("need lr > 0, 0 ≤ momentum < 1 and weight_decay ≥ 0")
        parse_loss_weights(self.loss_weights, ("1", CLOUD))  # validates the spelling early


def parse_loss_weights(spec: str, exit_keys: Sequence[str]) -> dict[str, float]:
    """Per-exit loss weights from a scheme name or an explicit list.

    ``equal`` (the paper's choice): 1 for every exit. ``linear``: exit k weighs k/9, the cloud 1 — later,
    more capable exits count more. ``cloud-heavy``: local exits 0.5, the cloud 1. Explicit:
    ``"1:0.3,5:0.5,cloud:1"`` (unnamed exits weigh 1).
    """
    keys = list(exit_keys)
    if spec == "equal":
        return {k: 1.0 for k in keys}
    if spec == "linear":
        return {k: (1.0 if k == CLOUD else int(k) / 9) for k in keys}
    if spec == "cloud-heavy":
        return {k: (1.0 if k == CLOUD else 0.5) for k in keys}
    weights = {k: 1.0 for k in keys}
    for item in spec.split(","):
        name, sep, value = item.partition(":")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not sep or not name or not (w >= 0 and math.isfinite(w)):
            raise ValueError(
                f"bad loss weights {spec!r}: use one of {', '.join(WEIGHT_SCHEMES)} or 'EXIT:W,...' "
                "with EXIT in 1..8 or cloud and W ≥ 0"
            )
        if name in weights:
            weights[name] = w
        elif name not in {*map(str, LOCAL_EXITS), CLOUD}:
            raise ValueError(f"bad loss weights {spec!r}: unknown exit {name!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"bad loss weights {spec!r}: at least one weight must be positive")
    return weights


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.inference_mode()
def evaluate(model: MultiExitCNN, data: ImageDataset, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of every exit on ``data`` (no early exiting: every sample is classified at every exit)."""
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(model.config.exit_keys, 0)
    for start in range(0, len(data), batch_size):
        x = data.normalize(data.images[start : start + batch_size])
        y = torch.from_numpy(data.labels[start : start + batch_size])
        for key, logits in model(x).items():
            correct[key] += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return {k: v / len(data) for k, v in correct.items()}


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flips, one coin per sample (cheap and label-preserving for these datasets)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def train(
    model_config: ModelConfig,
    train_data: ImageDataset,
    test_data: ImageDataset,
    cfg: TrainConfig,
    *,
    progress: bool = True,
) -> tuple[MultiExitCNN, dict[str, Any]]:
    """Train a model; returns it with its training log (schema ``localexit-trainlog/1``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    model = build_model(model_config)
    weights = parse_loss_weights(cfg.loss_weights, model_config.exit_keys)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )
    n = len(train_data) if cfg.max_train_samples is None else min(cfg.max_train_samples, len(train_data))
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss()
    trainlog: dict[str, Any] = {
        "schema": TRAINLOG_SCHEMA,
        "model": {
            "kind": model_config.kind,
            "exit": model_config.exit,
            "name": model_config.name,
            "widths": list(model_config.widths),
            "pool_after": list(model_config.pool_after),
        },
        "dataset": train_data.name,
        "seed": cfg.seed,
        "loss_weights": weights,
        "optimizer": {
            "name": "sgd",
            "nesterov": True,
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
            "schedule": "one-cycle",
            "epochs": cfg.epochs,
            "augment": "hflip" if cfg.augment else None,
        },
        "train_samples": n,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": [],
    }
    from tqdm import tqdm

    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(train_data), generator=gen)[:n].numpy()
        total_loss = 0.0
        correct = dict.fromkeys(model_config.exit_keys, 0)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{model_config.name} epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
            unit="batch",
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = train_data.normalize(train_data.images[idx])
            if cfg.augment:
                x = _augment(x, gen)
            y = torch.from_numpy(train_data.labels[idx])
            outputs = model(x)
            loss = sum((weights[k] * loss_fn(v, y) for k, v in outputs.items()), torch.zeros(()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            with torch.no_grad():
                for k, v in outputs.items():
                    correct[k] += int((v.argmax(1) == y).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        bar.close()
        test_acc = evaluate(model, test_data)
        train_acc = {k: v / n for k, v in correct.items()}
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": total_loss / n,
            "seconds": round(time.perf_counter() - t0, 2),
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
        }
        trainlog["epochs"].append(record)
        log.info(
            "%s epoch %d: loss %.4f, cloud train %.4f test %.4f (%.0f s)",
            model_config.name,
            epoch,
            record["loss"],
            train_acc[CLOUD],
            test_acc[CLOUD],
            record["seconds"],
        )
    trainlog["final"] = {
        "train_accuracy": evaluate(model, train_data if n == len(train_data) else train_data.subset(n)),
        "test_accuracy": trainlog["epochs"][-1]["test_accuracy"],
    }
    model.eval()
    return model, trainlog


def train_and_save(
    kind: str,
    exit: int | None,
    dataset: str,
    data_dir: Path | None,
    cfg: TrainConfig,
    out: Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one model and write ``out`` (checkpoint) and ``out`` with ``.train.json`` (training log)."""
    train_data = load_dataset(dataset, "train", data_dir)
    test_data = load_dataset(dataset, "test", data_dir)
    mean, std = train_data.mean_std
    model_config = ModelConfig(
        kind=kind,  # type: ignore[arg-type]  # validated by ModelConfig
        exit=exit if kind == "sem" else None,
        in_channels=train_data.channels,
        image_size=train_data.image_size,
        num_classes=train_data.num_classes,
        input_mean=mean,
        input_std=std,
    )
    model, trainlog = train(model_config, train_data, test_data, cfg, progress=progress)
    final = trainlog["final"]
    save_checkpoint(
        model,
        out,
        dataset=dataset,
        extra={
            "final": final,
            "train": {"epochs": cfg.epochs, "seed": cfg.seed, "loss_weights": trainlog["loss_weights"]},
        },
    )
    write_json_atomic(out.with_suffix(".train.json"), trainlog, allow_nan=True)  # (a diverged loss is NaN)
    return trainlog


def build_parser(prog: str = "python -m harness train") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Train a local-exit model (paper §3.2) on the CPU.")
    p.add_argument("--model", choices=MODEL_KINDS, help="model family")
    p.add_argument("--exit", type=int, help="the local exit of a sem model (1..8)")
    p.add_argument("--all", action="store_true", help="train standard, sem-1..8 and mem one after another")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=DEFAULT_DATASET,
        help=f"training data (default {DEFAULT_DATASET})",
    )
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: the Debian package's folder)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir first")
    p.add_argument(
        "--epochs",
        type=int,
        default=TrainConfig.epochs,
        help=f"passes over the training set (default {TrainConfig.epochs})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help=f"images per SGD step (default {TrainConfig.batch_size})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=TrainConfig.lr,
        help=f"SGD learning rate (default {TrainConfig.lr:g}, momentum {TrainConfig.momentum:g})",
    )
    p.add_argument(
        "--loss-weights",
        default="equal",
        help=f"{', '.join(WEIGHT_SCHEMES)}, or EXIT:W,... e.g. '1:0.3,cloud:1' (default: equal, as the paper)",
    )
    p.add_argument("--no-augment", action="store_true", help="no random horizontal flips")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the weights' initialisation and the shuffling (default 0)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--max-train-samples", type=int, help="train on the first N shuffled samples per epoch")
    p.add_argument(
        "--out",
        type=Path,
        help="checkpoint path (default: checkpoints/DATASET/NAME.pt); with --all, a folder",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m harness train") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        try:
            cfg = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                loss_weights=args.loss_weights,
                augment=not args.no_augment,
                threads=args.threads,
                max_train_samples=args.max_train_samples,
            )
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        if args.download:
            if args.dataset != "cifar10" or args.data_dir is None:
                raise ModelError("--download works with --dataset cifar10 and a --data-dir to put it in")
            download_cifar10(args.data_dir)
        if args.all:
            choices: list[tuple[str, int | None]] = [
                ("standard", None),
                *[("sem", k) for k in LOCAL_EXITS],
                ("mem", None),
            ]
            out_dir = args.out or DEFAULT_OUT_DIR / args.dataset
        elif args.model is None:
            raise ModelError("say which model to train: --model {standard,sem,mem} [--exit K], or --all")
        else:
            if args.model == "sem" and args.exit not in LOCAL_EXITS:
                raise ModelError(f"--model sem needs --exit K with K in 1..{LOCAL_EXITS[-1]}")
            if args.model != "sem" and args.exit is not None:
                raise ModelError(
                    f"--exit is only for sem models: a {args.model} model is trained with all its exits"
                )
            choices = [(args.model, args.exit)]
            out_dir = None
        summary = []
        for kind, exit in choices:
            name = zoo_name(kind, exit)
            out = (
                (out_dir / f"{name}.pt")
                if out_dir is not None
                else (args.out or DEFAULT_OUT_DIR / args.dataset / f"{name}.pt")
            )
            trainlog = train_and_save(
                kind,
                exit,
                args.dataset,
                args.data_dir,
                replace(cfg),
                out,
                progress=not args.quiet and sys.stderr.isatty(),
            )
            acc = trainlog["final"]["test_accuracy"]
            summary.append((name, acc))
            print(
                f"{name}: wrote {out} — test accuracy " + ", ".join(f"{k}: {v:.2%}" for k, v in acc.items())
            )
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing written for the model in progress", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m models.train"))
