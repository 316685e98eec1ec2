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
from typing import Any, cast

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
from models.devices import describe_device, resolve_device
from models.errors import ModelError
from models.options import check_device_name
from models.protocol import (
    InputSpec,
    MultiExitModel,
    build_from_spec,
    class_path,
    kind_of,
    local_exits,
    model_device,
    model_name,
    resolve_spec,
)

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
    device: str = "cpu"  # cpu, cuda or cuda:N (models.devices)

    def __post_init__(self) -> None:
        check_device_name(self.device)
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


def _exit_keys(model: MultiExitModel) -> tuple[str, ...]:
    return (*(str(k) for k in local_exits(model)), CLOUD)


def _batch(
    model: MultiExitModel, data: ImageDataset, idx: Any, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A batch on ``device``: the uint8 images and labels move once, then the images are normalized there
    (as the edge does)."""
    images = torch.from_numpy(np.ascontiguousarray(data.images[idx])).to(device, non_blocking=True)
    labels = torch.from_numpy(np.ascontiguousarray(data.labels[idx])).to(device, non_blocking=True)
    return model.input_spec.normalize(images), labels


@torch.inference_mode()
def evaluate(model: MultiExitModel, data: ImageDataset, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of every exit on ``data`` (no early exiting: every sample is classified at every exit),
    computed on the device the model is on."""
    assert isinstance(model, nn.Module)
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = dict.fromkeys(_exit_keys(model), 0)
    for start in range(0, len(data), batch_size):
        x, y = _batch(model, data, slice(start, start + batch_size), device)
        for key, logits in model(x).items():
            correct[key] += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return {k: v / len(data) for k, v in correct.items()}


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flips, one coin per sample (cheap and label-preserving for these datasets)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def train(
    model_config: ModelConfig,
    train_data: ImageDataset,
    test_data: ImageDataset,
    cfg: TrainConfig,
    *,
    progress: bool = True,
) -> tuple[MultiExitCNN, dict[str, Any]]:
    """Train the paper's CNN; returns it with its training log (schema ``localexit-trainlog/1``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    model = build_model(model_config)
    info = {
        "kind": model_config.kind,
        "exit": model_config.exit,
        "name": model_config.name,
        "widths": list(model_config.widths),
        "pool_after": list(model_config.pool_after),
    }
    return fit(model, info, train_data, test_data, cfg, gen, progress=progress)  # type: ignore[return-value]


def train_spec(
    spec: str, train_data: ImageDataset, test_data: ImageDataset, cfg: TrainConfig, *, progress: bool = True
) -> tuple[MultiExitModel, dict[str, Any]]:
    """Train the model the factory ``spec`` builds for ``train_data``'s input; returns it with its log."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    model = build_from_spec(spec, input_spec_of(train_data))
    exits = local_exits(model)
    info = {
        "kind": kind_of(exits),
        "exit": exits[0] if len(exits) == 1 else None,
        "name": model_name(model),
        "spec": spec,
        "model_class": class_path(model),
        "local_exits": list(exits),
        "parameters": sum(p.numel() for p in cast(nn.Module, model).parameters()),
    }
    return fit(model, info, train_data, test_data, cfg, gen, progress=progress)


def input_spec_of(data: ImageDataset) -> InputSpec:
    """The input a model for ``data`` takes (its images' shape, its classes, its normalization)."""
    mean, std = data.mean_std
    return InputSpec(data.channels, data.image_size, data.num_classes, mean, std)


def fit(
    model: MultiExitModel,
    model_info: dict[str, Any],
    train_data: ImageDataset,
    test_data: ImageDataset,
    cfg: TrainConfig,
    gen: torch.Generator,
    *,
    progress: bool = True,
) -> tuple[MultiExitModel, dict[str, Any]]:
    """The joint-loss training loop of any multi-exit model (``gen``: the seeded shuffling and flips).
    Returns the model, back on the CPU and in eval mode, and its training log."""
    assert isinstance(model, nn.Module)
    device = resolve_device(cfg.device)
    model.to(device)
    exit_keys = _exit_keys(model)
    name = str(model_info["name"])
    weights = parse_loss_weights(cfg.loss_weights, exit_keys)
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
        "model": model_info,
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
        "device": describe_device(device),
        "epochs": [],
    }
    from tqdm import tqdm

    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(train_data), generator=gen)[:n].numpy()
        total_loss = 0.0
        correct = dict.fromkeys(exit_keys, 0)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{name} epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
            unit="batch",
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = _batch(model, train_data, idx, device)
            if cfg.augment:
                x = _augment(x, gen)
            outputs = model(x)
            loss = sum(
                (weights[k] * loss_fn(v, y) for k, v in outputs.items()), torch.zeros((), device=device)
            )
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
            name,
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
    model.to("cpu").eval()
    return model, trainlog


def train_and_save(
    kind: str | None,
    exit: int | None,
    dataset: str,
    data_dir: Path | None,
    cfg: TrainConfig,
    out: Path,
    *,
    progress: bool = True,
    spec: str | None = None,
) -> dict[str, Any]:
    """Train one model -- the paper's CNN of ``kind`` and ``exit``, or the one the factory ``spec``
    builds -- and write ``out`` (checkpoint) and ``out`` with ``.train.json`` (training log)."""
    train_data = load_dataset(dataset, "train", data_dir)
    test_data = load_dataset(dataset, "test", data_dir)
    if spec is not None:
        spec_model, trainlog = train_spec(spec, train_data, test_data, cfg, progress=progress)
        save_checkpoint(spec_model, out, dataset=dataset, extra=_checkpoint_extra(cfg, trainlog), spec=spec)  # type: ignore[arg-type]
        write_json_atomic(out.with_suffix(".train.json"), trainlog, allow_nan=True)
        return trainlog
    assert kind is not None
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
    save_checkpoint(model, out, dataset=dataset, extra=_checkpoint_extra(cfg, trainlog))
    write_json_atomic(out.with_suffix(".train.json"), trainlog, allow_nan=True)  # (a diverged loss is NaN)
    return trainlog


def _checkpoint_extra(cfg: TrainConfig, trainlog: dict[str, Any]) -> dict[str, Any]:
    return {
        "final": trainlog["final"],
        "train": {"epochs": cfg.epochs, "seed": cfg.seed, "loss_weights": trainlog["loss_weights"]},
    }


def build_parser(prog: str = "python -m harness train") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Train a local-exit model (paper §3.2).")
    p.add_argument("--model", choices=MODEL_KINDS, help="model family")
    p.add_argument(
        "--model-spec",
        metavar="MODULE:FACTORY",
        help="train your own multi-exit model: FACTORY(input_spec) returns it (models/protocol.py; "
        "e.g. models.torchvision_exits:resnet18)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N; batches move to it once each",
    )
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
                device=args.device,
            )
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        resolve_device(args.device, option="--device")  # (a missing GPU fails before the data loads)
        if args.download:
            if args.dataset != "cifar10" or args.data_dir is None:
                raise ModelError("--download works with --dataset cifar10 and a --data-dir to put it in")
            download_cifar10(args.data_dir)
        if args.model_spec is not None:
            if args.all or args.model is not None or args.exit is not None:
                raise ModelError(
                    "--model-spec names the model by itself: leave out --model, --exit and --all"
                )
            resolve_spec(args.model_spec)  # (a spec that names nothing fails before the data loads)
            choices: list[tuple[str | None, int | None]] = [(None, None)]
            out_dir = None
        elif args.all:
            choices = [
                ("standard", None),
                *[("sem", k) for k in LOCAL_EXITS],
                ("mem", None),
            ]
            out_dir = args.out or DEFAULT_OUT_DIR / args.dataset
        elif args.model is None:
            raise ModelError(
                "say which model to train: --model {standard,sem,mem} [--exit K], --all, or "
                "--model-spec MODULE:FACTORY"
            )
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
            name = zoo_name(kind, exit) if kind is not None else args.model_spec.rpartition(":")[2]
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
                spec=args.model_spec,
            )
            acc = trainlog["final"]["test_accuracy"]
            summary.append((name, acc))
            print(
                f"{trainlog['model']['name']}: wrote {out} — test accuracy "
                + ", ".join(f"{k}: {v:.2%}" for k, v in acc.items())
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
