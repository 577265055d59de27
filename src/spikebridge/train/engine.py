"""One training loop for ANNs and SNNs: ``fit`` and ``evaluate``.

``fit`` trains for ``cfg.epochs`` epochs (and longer while the best accuracy still improves, when
``cfg.until_plateau`` is set), evaluates after every epoch, and records a curve of
``[training seconds, epoch, test accuracy]`` (evaluation time is not counted). After every epoch
it writes ``RUN_DIR/NAME/metrics.csv`` and a resumable checkpoint (model, optimizer, schedule, RNG
state, history); ``resume=True`` continues from the last complete epoch and gives the same result
as an uninterrupted run. The same code runs under ``torchrun`` (DDP; rank 0 writes; metrics are
summed over ranks).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.loading import DataBundle, iterate_batches
from ..errors import CheckpointError, TrainingError
from ..utils import atomic_write_text
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .recipes import StepSchedule, build_optimizer


@dataclass
class RunResult:
    """A finished run, in the shape ``summary.json`` stores."""

    name: str
    epochs: int
    seconds: float
    best_acc: float
    final_acc: float
    curve: list[list[float]]  # [[seconds, epoch, acc], ...]
    history: list[dict] = field(default_factory=list)

    def to_summary(self) -> dict:
        return {
            "name": self.name,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "best_acc": self.best_acc,
            "final_acc": self.final_acc,
            "curve": self.curve,
        }


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    bundle: DataBundle,
    *,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    split: str = "test",
    topk: tuple[int, ...] = (1,),
) -> dict[str, float]:
    """Top-k accuracy (fractions) and mean loss on a split, summed over DDP ranks."""
    info = distributed.current()
    was_training = model.training
    model.eval()
    correct = [0.0] * len(topk)
    loss_sum, count = 0.0, 0.0
    data = bundle.test if split == "test" else bundle.train
    for x, y in iterate_batches(bundle, data, batch_size, train=False, rank=info.rank, world_size=info.world_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        ranked = logits.topk(max(topk), dim=1).indices
        for i, k in enumerate(topk):
            correct[i] += (ranked[:, :k] == y[:, None]).any(1).sum().item()
        count += len(y)
    totals = distributed.all_reduce_sum([*correct, loss_sum, count], torch.device(device))
    *correct, loss_sum, count = totals
    model.train(was_training)
    result = {f"top{k}": c / max(count, 1) for k, c in zip(topk, correct)}
    result["acc"] = result[f"top{topk[0]}"]
    result["loss"] = loss_sum / max(count, 1)
    return result


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "batches": generator.get_state()}


def _set_requires_grad(model: nn.Module, frozen: set[str], trainable: bool) -> None:
    for name, param in unwrap(model).named_parameters():
        if name in frozen:
            param.requires_grad_(trainable)


def fit(
    model: nn.Module,
    bundle: DataBundle,
    cfg: TrainConfig,
    *,
    name: str,
    run_dir: str | Path | None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    resume: bool = False,
    frozen: set[str] | None = None,
    evaluate_first: bool = False,
    optimizer_state: dict | None = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train ``model`` on ``bundle`` with ``cfg``; see the module docstring.

    Args:
        frozen: parameter names trained only after ``cfg.freeze_epochs`` epochs (warm-up: the
            transferred parameters stay fixed while new layers adapt).
        evaluate_first: record the accuracy before any training as the curve's point at 0 s
            (the bridge's accuracy right after transfer).
        optimizer_state: an optimizer state dict to start from (the paper restores the ANN's
            momentum buffers); the LR is reset to ``cfg.lr``.
        meta: stored in every checkpoint (model config, data, ...).
    """
    device = torch.device(device)
    info = distributed.current()
    model.to(device)
    module = unwrap(model)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frozen = frozen or set()
    if frozen and cfg.freeze_epochs > 0:
        _set_requires_grad(model, frozen, False)
    n_train = len(bundle.train)
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    if steps_per_epoch == 0 or n_train < cfg.batch_size:
        raise TrainingError(f"{name}: the training split has {n_train} samples, fewer than one batch of {cfg.batch_size}")
    train_model = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=bool(frozen))

    out = Path(run_dir) / name if run_dir is not None else None
    ckpt_dir = out / "checkpoints" if out else None
    history: list[dict] = []
    curve: list[list[float]] = []
    start_epoch, seconds = 0, 0.0

    def make_optimizer() -> tuple[torch.optim.Optimizer, StepSchedule]:
        opt = build_optimizer(module.parameters(), cfg)
        return opt, StepSchedule(opt, cfg, steps_per_epoch)

    optimizer, schedule = make_optimizer()
    if optimizer_state is not None:
        _load_optimizer_momentum(optimizer, optimizer_state)
        schedule = StepSchedule(optimizer, cfg, steps_per_epoch)

    if resume and ckpt_dir is not None and (ckpt_dir / "last.json").exists():
        ckpt = load_checkpoint(ckpt_dir / "last.json")
        module.load_state_dict(ckpt.model_state)
        if frozen and ckpt.epoch < cfg.freeze_epochs:
            _set_requires_grad(model, frozen, False)
        else:
            _set_requires_grad(model, frozen, True)
        optimizer, schedule = make_optimizer()
        state = ckpt.optimizer_state()
        if state is not None:
            optimizer.load_state_dict(state)
        if ckpt.scheduler_state:
            schedule.load_state_dict(ckpt.scheduler_state)
        rng = ckpt.rng_state()
        torch.set_rng_state(rng["torch"])
        generator.set_state(rng["batches"])
        history = ckpt.meta.get("history", [])
        curve = ckpt.meta.get("curve", [])
        seconds = float(ckpt.meta.get("seconds", 0.0))
        start_epoch = ckpt.epoch
    elif evaluate_first:
        acc = evaluate(model, bundle, device=device)["acc"]
        curve.append([0.0, 0, acc])
        history.append({"epoch": 0, "seconds": 0.0, "test_acc": acc, "test_loss": None, "train_loss": None, "train_acc": None, "lr": None})

    max_epochs = cfg.epochs * 3 if cfg.until_plateau else cfg.epochs
    epoch = start_epoch
    while epoch < max_epochs:
        if epoch >= cfg.epochs and not _still_improving(history, cfg.until_plateau):
            break
        if frozen and epoch == cfg.freeze_epochs and cfg.freeze_epochs > 0:
            # warm-up over: every parameter trains from here; the schedule keeps its position
            _set_requires_grad(model, frozen, True)
            position = schedule.state_dict()
            optimizer, schedule = make_optimizer()
            schedule.load_state_dict(position)
        if hasattr(module, "set_epoch"):
            module.set_epoch(epoch)
        train_model.train()
        stats = _train_one_epoch(
            train_model, bundle, cfg, optimizer, schedule, generator, device, info, progress,
            desc=f"{name} {epoch + 1}/{cfg.epochs}",
        )
        seconds += stats["seconds"]
        epoch += 1
        metrics = evaluate(model, bundle, device=device)
        record = {
            "epoch": epoch,
            "seconds": round(seconds, 3),
            "train_loss": stats["loss"],
            "train_acc": stats["acc"],
            "test_loss": metrics["loss"],
            "test_acc": metrics["acc"],
            "lr": schedule.lr,
        }
        history.append(record)
        curve.append([round(seconds, 3), epoch, metrics["acc"]])
        if progress and info.is_main:
            tqdm.write(
                f"{name} epoch {epoch}: train loss {stats['loss']:.4f} acc {stats['acc']:.4f} | "
                f"test acc {metrics['acc']:.4f} | {seconds:.1f}s"
            )
        if on_epoch is not None:
            on_epoch(record)
        if out is not None and info.is_main:
            _write_metrics_csv(out / "metrics.csv", history)
            save_checkpoint(
                ckpt_dir, "last", module,
                {**(meta or {}), "history": history, "curve": curve, "seconds": seconds, "name": name},
                optimizer=optimizer, scheduler=schedule, rng=_rng_state(generator), epoch=epoch,
            )
        distributed.barrier()

    accs = [point[2] for point in curve]
    return RunResult(
        name=name,
        epochs=epoch,
        seconds=round(seconds, 3),
        best_acc=max(accs) if accs else 0.0,
        final_acc=accs[-1] if accs else 0.0,
        curve=curve,
        history=history,
    )


def _still_improving(history: list[dict], window: int) -> bool:
    accs = [h["test_acc"] for h in history if h.get("train_loss") is not None]
    if len(accs) <= window:
        return True
    return max(accs[-window:]) > max(accs[:-window])


def _load_optimizer_momentum(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load another optimizer's per-parameter state (momentum buffers), keeping our LR."""
    try:
        lrs = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
            group["initial_lr"] = lr
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"the pretrained optimizer state does not fit this model: {exc}") from None


def _train_one_epoch(model, bundle, cfg, optimizer, schedule, generator, device, info, progress, desc) -> dict:
    loss_sum, correct, count = 0.0, 0.0, 0.0
    steps = max(1, len(bundle.train) // cfg.batch_size)
    bar = tqdm(total=steps, desc=desc, disable=not (progress and info.is_main), leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    batches = iterate_batches(
        bundle, bundle.train, cfg.batch_size, train=True, generator=generator,
        rank=info.rank, world_size=info.world_size,
    )
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{desc}: the loss became {loss.item()} at step {step + 1}; the last good checkpoint is kept "
                "(lower the learning rate or check the inputs for NaN/Inf)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    elapsed = time.perf_counter() - start
    bar.close()
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum, correct, count], device)
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "seconds": elapsed}


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    columns = ["epoch", "seconds", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


__all__ = ["RunResult", "evaluate", "fit", "unwrap"]
