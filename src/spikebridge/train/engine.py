"""One training loop for ANNs and SNNs: ``fit`` and ``evaluate``.

``fit`` trains for ``cfg.epochs`` epochs (longer while the best accuracy still improves, with
``cfg.until_plateau``), evaluates after every epoch and records a curve of
``[training seconds, epoch, test accuracy]`` (evaluation not counted; ``cfg.precise_bn``'s
re-estimation counted as training) and the same in process CPU seconds (``cpu_curve``). After
every epoch it writes ``RUN_DIR/NAME/metrics.csv`` and a resumable checkpoint; ``resume=True``
continues from the last complete epoch, exactly. Under ``torchrun`` (DDP) rank 0 writes and
metrics are summed over ranks. ``cfg.step_in_backward``: see :class:`StepInBackward`.
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
from ..data.loading import DataBundle, calibration_batches, iterate_batches
from ..errors import CheckpointError, ConfigError, OutputError, TrainingError, first_line
from ..utils import atomic_write_text, ensure_writable_dir, remove_stale_temps
from . import distributed
from .checkpoint import checkpoint_path, load_checkpoint, remove_leftovers, save_checkpoint
from .recipes import StepSchedule, build_optimizer

#: The columns of ``metrics.csv`` (one row per evaluation)
METRICS_COLUMNS = ("epoch", "seconds", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


@dataclass
class RunResult:
    """A finished run, in the shape ``summary.json`` stores."""

    name: str
    epochs: int
    seconds: float
    best_acc: float
    final_acc: float
    curve: list[list[float]]  # [[seconds, epoch, acc], ...]
    cpu_curve: list[list[float]] = field(default_factory=list)  # [[process CPU seconds, epoch, acc], ...]
    history: list[dict] = field(default_factory=list)
    # the optimizer's final per-parameter state by parameter name (momentum buffers; for the bridge)
    optimizer_state: dict[str, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def to_summary(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "seconds": round(self.seconds, 3),
                "best_acc": self.best_acc, "final_acc": self.final_acc, "curve": self.curve,
                "cpu_seconds": self.cpu_curve[-1][0] if self.cpu_curve else 0.0, "cpu_curve": self.cpu_curve}


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class StepInBackward:
    """The optimizer step fused into the backward (``TrainConfig.step_in_backward``): every
    parameter is updated as soon as its gradient is accumulated, and that gradient is freed at once,
    so the weight gradients never all exist together (a lower memory peak).

    Exact for optimizers whose update of a parameter reads only that parameter's gradient and
    state (SGD, Adam, AdamW): the hook runs the optimizer's own ``step()`` while only that
    parameter has a gradient (the others are ``None``). Not combinable with what needs all
    gradients at once: see :func:`step_in_backward_clash`. :meth:`remove` detaches the hooks.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.handles = [param.register_post_accumulate_grad_hook(self._step)
                        for group in optimizer.param_groups for param in group["params"] if param.requires_grad]

    def _step(self, param: torch.Tensor) -> None:
        self.optimizer.step()  # only `param` has a gradient now: the others are None
        param.grad = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def check_batches(bundle: DataBundle, phases: dict[str, TrainConfig]) -> None:
    """TrainingError / ConfigError when a phase's global batch is larger than the training split or
    does not split over the DDP processes: run for every phase of a flow before its first one trains."""
    n_train, world_size = len(bundle.train), distributed.current().world_size
    for name, cfg in phases.items():
        if n_train < cfg.batch_size:
            raise TrainingError(f"{name}: the training split has {n_train} samples, fewer than one batch of "
                                f"{cfg.batch_size}")
        check_global_batch(name, cfg.batch_size, world_size)


def check_global_batch(name: str, batch_size: int, world_size: int) -> None:
    """ConfigError when a phase's global batch does not split evenly over the DDP processes."""
    if batch_size % world_size:
        raise ConfigError(f"{name}: batch_size {batch_size} is the global batch and must split evenly over "
                          f"the {world_size} processes (e.g. {batch_size - batch_size % world_size})")


def step_in_backward_clash(cfg: TrainConfig, precision: distributed.Precision, world_size: int) -> str:
    """Why the optimizer step cannot run inside the backward here ('' when it can): what needs every
    gradient at once."""
    return ("grad_clip > 0 (the clipping norm needs every gradient)" if cfg.grad_clip > 0
            else "amp=fp16 (the gradient scaler checks every gradient for overflow)" if precision.scaler is not None
            else f"DDP over {world_size} processes (gradients are all-reduced first)" if world_size > 1
            else "")


def steps_in_backward(cfg: TrainConfig, precision: distributed.Precision, world_size: int) -> bool:
    """Whether this phase updates its parameters inside the backward (:class:`StepInBackward`)."""
    return cfg.step_in_backward and not step_in_backward_clash(cfg, precision, world_size)


@torch.no_grad()
def evaluate(model: nn.Module, bundle: DataBundle, *, batch_size: int = 250, device: torch.device | str = "cpu",
             split: str = "test", topk: tuple[int, ...] = (1,)) -> dict[str, float]:
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
    *correct, loss_sum, count = distributed.all_reduce_sum([*correct, loss_sum, count], torch.device(device))
    model.train(was_training)
    result = {f"top{k}": c / max(count, 1) for k, c in zip(topk, correct)}
    result["acc"] = result[f"top{topk[0]}"]
    result["loss"] = loss_sum / max(count, 1)
    return result


def precise_batchnorm(model: nn.Module, bundle: DataBundle, samples: int, *, seed: int,
                      device: torch.device | str = "cpu") -> float:
    """Re-estimate every BatchNorm's running statistics over ``samples`` seeded random training
    samples without augmentation (a cumulative average instead of the running average of the last
    batches); under DDP each rank takes its share and the statistics are averaged. Returns the
    seconds it took. Does not touch the training batches' random stream."""
    from ..bridge import recalibrate_batchnorm

    started = time.perf_counter()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0.0
    info = distributed.current()
    batch_size = max(info.world_size, min(256, samples, len(bundle.train)))
    batch_size -= batch_size % info.world_size
    batches = calibration_batches(bundle, -(-samples // batch_size), batch_size, seed,
                                  rank=info.rank, world_size=info.world_size)
    # one batch in memory at a time (1,024 ImageNet images would be 600 MB)
    if recalibrate_batchnorm(model, batches, device) and info.enabled:
        distributed.average_batchnorm_statistics(model)
    return time.perf_counter() - started


def _set_requires_grad(model: nn.Module, frozen: set[str], trainable: bool) -> None:
    for name, param in unwrap(model).named_parameters():
        if name in frozen:
            param.requires_grad_(trainable)


def fit(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, *, name: str, run_dir: str | Path | None,
        seed: int = 0, device: torch.device | str = "cpu", progress: bool = True, resume: bool = False,
        frozen: set[str] | None = None, evaluate_first: bool = False, optimizer_state: dict | None = None,
        meta: dict[str, Any] | None = None, on_epoch: Callable[[dict], None] | None = None,
        stop_after: int | None = None, amp: str = "off", sync_bn: bool = False) -> RunResult:
    """Train ``model`` on ``bundle`` with ``cfg``; see the module docstring.

    Args:
        frozen: parameter names trained only after ``cfg.freeze_epochs`` epochs (warm-up: the
            transferred parameters stay fixed while new layers adapt).
        evaluate_first: record the accuracy before any training as the curve's point at 0 s
            (the bridge's accuracy right after transfer).
        optimizer_state: per-parameter optimizer state to start from (the paper restores the ANN's
            momentum buffers): a previous run's ``RunResult.optimizer_state`` (by parameter name) or
            a checkpoint's optimizer state dict; see :func:`load_optimizer_state`. The LR and other
            hyperparameters are this run's (``cfg.lr``: the LR is reset).
        meta: stored in every checkpoint (model config, data, ...), over what the data records of
            itself (``DataBundle.input_meta``: data_path, image_size, input_shape).
        stop_after: end after this many epochs of ``cfg``'s schedule (short comparisons).
        amp: ``off`` | ``bf16`` | ``fp16`` mixed precision (CUDA only; float32 on CPU, with a note).
        sync_bn: under DDP, BatchNorm statistics over the global batch (all ranks).
    """
    device = torch.device(device)
    info = distributed.current()
    model.to(device)
    module = unwrap(model)
    precision = distributed.Precision(amp, device)
    if precision.note and info.is_main:  # said with or without progress bars
        tqdm.write(f"{name}: {precision.note}")
    clash = step_in_backward_clash(cfg, precision, info.world_size)
    if cfg.step_in_backward and clash and info.is_main:
        tqdm.write(f"{name}: the optimizer steps after the backward (step_in_backward does not apply with {clash})")
    synced = info.enabled and sync_bn and distributed.convert_sync_batchnorm(module, device) > 0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frozen = frozen or set()
    if frozen and cfg.freeze_epochs > 0 and all(n in frozen for n, p in model.named_parameters() if p.requires_grad):
        if info.is_main:  # a full transfer: a warm-up would train nothing
            tqdm.write(f"{name}: freeze_epochs={cfg.freeze_epochs}: every parameter was transferred as it is, so "
                       "nothing is new to warm up; everything trains from the first epoch")
        frozen = set()
    if frozen and cfg.freeze_epochs > 0:
        _set_requires_grad(model, frozen, False)
    check_batches(bundle, {name: cfg})
    meta = {**bundle.input_meta(), **(meta or {})}
    steps_per_epoch = len(bundle.train) // cfg.batch_size

    out = Path(run_dir) / name if run_dir is not None else None
    ckpt_dir = checkpoint_path(run_dir, name).parent if out else None
    history: list[dict] = []
    curve: list[list[float]] = []
    cpu_curve: list[list[float]] = []
    start_epoch, seconds, cpu_seconds = 0, 0.0, 0.0

    def make_optimizer() -> tuple[torch.optim.Optimizer, StepSchedule]:
        opt = build_optimizer(module.parameters(), cfg)
        return opt, StepSchedule(opt, cfg, steps_per_epoch)

    optimizer, schedule = make_optimizer()
    transferred_state = None
    if optimizer_state is not None:
        transferred_state = state_by_name(module, optimizer_state)
        load_optimizer_state(module, optimizer, transferred_state)

    if out is not None and info.is_main:
        # fail now, not after an epoch, when the output folder cannot be written; then remove
        # what killed writes left behind (temporary files, orphaned tensors files)
        ensure_writable_dir(ckpt_dir)
        remove_stale_temps(out, ("metrics.csv",))
        remove_leftovers(ckpt_dir, "last")
    if resume and ckpt_dir is not None and (ckpt_dir / "last.json").exists():
        ckpt = load_checkpoint(ckpt_dir / "last.json")
        resumed = ckpt.resume_state()  # a hand-edited history, curve, ... fails here, naming its key
        try:
            module.load_state_dict(ckpt.model_state)
            _set_requires_grad(model, frozen, ckpt.epoch >= cfg.freeze_epochs)
            optimizer, schedule = make_optimizer()
            state = ckpt.optimizer_state()
            if state is not None:
                optimizer.load_state_dict(state)
            if ckpt.scheduler_state:
                schedule.load_state_dict(ckpt.scheduler_state)
            precision.load_state_dict(resumed["grad_scaler"])
            rng = ckpt.rng_state()
            torch.set_rng_state(rng["torch"])
            generator.set_state(rng["batches"])
            history, curve, cpu_curve = (resumed[k] for k in ("history", "curve", "cpu_curve"))
            seconds, cpu_seconds = resumed["seconds"], resumed["cpu_seconds"]
            start_epoch = ckpt.epoch
            if start_epoch > 0 and hasattr(module, "set_epoch"):
                module.set_epoch(start_epoch - 1)  # a sharpened ReLU resumes where its last epoch left it
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{ckpt.path}: cannot resume from this checkpoint, it does not fit this model or "
                                  f"configuration ({first_line(exc)[:200]}); use another --out, or drop --resume to "
                                  "start over") from None
    elif evaluate_first:
        acc = evaluate(model, bundle, device=device)["acc"]
        curve.append([0.0, 0, acc])
        cpu_curve.append([0.0, 0, acc])
        history.append({"epoch": 0, "seconds": 0.0, "test_acc": acc, "test_loss": None, "train_loss": None,
                        "train_acc": None, "lr": None})
        if info.is_main:
            tqdm.write(f"{name} epoch 0 (before training): test acc {acc:.4f}")

    train_model = distributed.wrap_model(model, device)  # after any resume: DDP sees what trains now
    max_epochs = cfg.epochs * 3 if cfg.until_plateau else cfg.epochs
    if stop_after is not None:
        max_epochs = min(max_epochs, stop_after)
    epoch = start_epoch
    while epoch < max_epochs:
        if epoch >= cfg.epochs and not _still_improving(history, cfg.until_plateau):
            break
        if frozen and epoch == cfg.freeze_epochs and cfg.freeze_epochs > 0:
            # warm-up over: every parameter trains from here; the schedule keeps its position
            _set_requires_grad(model, frozen, True)
            position = schedule.state_dict()
            kept = optimizer_state_by_name(module, optimizer)
            optimizer, schedule = make_optimizer()
            schedule.load_state_dict(position)
            # the new layers keep their momentum; the unfrozen ones get the transferred state, if any
            load_optimizer_state(module, optimizer, {**(transferred_state or {}), **kept})
            train_model = distributed.wrap_model(model, device)
        if hasattr(module, "set_epoch"):
            module.set_epoch(epoch)
        train_model.train()
        cpu_started = time.process_time()
        epoch_lr = schedule.lr  # metrics.csv's lr: what the epoch's first step used
        hooks = StepInBackward(optimizer) if steps_in_backward(cfg, precision, info.world_size) else None
        try:
            stats = _train_one_epoch(train_model, bundle, cfg, optimizer, schedule, generator, device, info, progress,
                                     f"{name} {epoch + 1}/{cfg.epochs}", precision, in_backward=hooks is not None)
        except TrainingError as exc:
            raise TrainingError(f"{exc}; {_last_good(ckpt_dir, epoch)}") from None
        finally:
            if hooks is not None:
                hooks.remove()
        seconds += stats["seconds"]
        if cfg.precise_bn:
            seconds += precise_batchnorm(module, bundle, cfg.precise_bn, seed=seed * 7919 + epoch, device=device)
        cpu_seconds += time.process_time() - cpu_started
        epoch += 1
        metrics = evaluate(model, bundle, device=device)
        record = {"epoch": epoch, "seconds": round(seconds, 3), "train_loss": stats["loss"], "train_acc": stats["acc"],
                  "test_loss": metrics["loss"], "test_acc": metrics["acc"], "lr": epoch_lr}
        history.append(record)
        curve.append([round(seconds, 3), epoch, metrics["acc"]])
        cpu_curve.append([round(cpu_seconds, 3), epoch, metrics["acc"]])
        if info.is_main:  # one line per epoch, with or without progress bars
            tqdm.write(f"{name} epoch {epoch}: train loss {stats['loss']:.4f} acc {stats['acc']:.4f} | "
                       f"test acc {metrics['acc']:.4f} | {seconds:.1f}s")
        if on_epoch is not None:
            on_epoch(record)
        bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TrainingError(f"{name}: after epoch {epoch} the weights hold NaN/Inf ({', '.join(bad[:3])}); nothing "
                                f"of this epoch is saved, {_last_good(ckpt_dir, epoch - 1)} (lower the learning rate)")
        if out is not None and info.is_main:
            try:
                write_metrics_csv(out / "metrics.csv", history)
                save_checkpoint(ckpt_dir, "last", module,
                                {**meta, "history": history, "curve": curve, "seconds": seconds, "name": name,
                                 "cpu_seconds": cpu_seconds, "cpu_curve": cpu_curve,
                                 "grad_scaler": precision.state_dict()},
                                optimizer=optimizer, scheduler=schedule, epoch=epoch,
                                rng={"torch": torch.get_rng_state(), "batches": generator.get_state()})
            except OutputError as exc:
                raise TrainingError(f"{name}: cannot save epoch {epoch}: {exc}; "
                                    f"{_last_good(ckpt_dir, epoch - 1)}") from exc
        distributed.barrier()

    if synced:
        distributed.revert_sync_batchnorm(module)
    accs = [point[2] for point in curve]
    return RunResult(name=name, epochs=epoch, seconds=round(seconds, 3), best_acc=max(accs) if accs else 0.0,
                     final_acc=accs[-1] if accs else 0.0, curve=curve, cpu_curve=cpu_curve, history=history,
                     optimizer_state=optimizer_state_by_name(module, optimizer))


def _last_good(ckpt_dir: Path | None, epoch: int) -> str:
    """Where the last complete checkpoint is (for error messages)."""
    if ckpt_dir is None:
        return "no checkpoints are written (run_dir=None)"
    if epoch <= 0 or not (ckpt_dir / "last.json").exists():
        return "no checkpoint was written yet"
    return f"the last good checkpoint (epoch {epoch}) is kept: {ckpt_dir / 'last.json'}"


def _still_improving(history: list[dict], window: int) -> bool:
    accs = [h["test_acc"] for h in history if h.get("train_loss") is not None]
    if len(accs) <= window:
        return True
    return max(accs[-window:]) > max(accs[:-window])


def optimizer_state_by_name(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """The optimizer's per-parameter state (SGD ``momentum_buffer``; Adam ``step``, ``exp_avg``,
    ``exp_avg_sq``) keyed by parameter name, tensors copied to the CPU."""
    names = {id(p): n for n, p in unwrap(module).named_parameters()}
    out: dict[str, dict[str, Any]] = {}
    for param, state in optimizer.state.items():
        name = names.get(id(param))
        if name is not None and state:
            out[name] = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    return out


def state_by_name(module: nn.Module, state: dict) -> dict[str, dict[str, Any]]:
    """Accept a by-name state, or a ``torch.optim`` state dict over ``module.parameters()`` in order
    (what a checkpoint of a run without frozen parameters holds)."""
    if not (isinstance(state, dict) and "state" in state and "param_groups" in state):
        return state
    names = [n for n, _ in unwrap(module).named_parameters()]
    order = [i for group in state["param_groups"] for i in group["params"]]
    if len(order) != len(names):
        raise CheckpointError(f"the pretrained optimizer state covers {len(order)} parameters, this model has "
                              f"{len(names)}: it belongs to another architecture")
    return {names[pos]: state["state"][i] for pos, i in enumerate(order) if i in state["state"]}


def optimizer_family(state_or_name: dict | str) -> str | None:
    """``"sgd"`` or ``"adam"`` (Adam and AdamW keep the same state) of an optimizer name or of a
    ``torch.optim`` state dict (read from its param groups); None when it cannot tell."""
    if isinstance(state_or_name, str):
        return "sgd" if state_or_name == "sgd" else "adam" if state_or_name in ("adam", "adamw") else None
    groups = state_or_name.get("param_groups") if isinstance(state_or_name, dict) else None
    group = groups[0] if isinstance(groups, list) and groups and isinstance(groups[0], dict) else {}
    return "sgd" if "momentum" in group and "dampening" in group else "adam" if "betas" in group else None


_STATE_KEYS = {torch.optim.SGD: ("momentum_buffer",), torch.optim.Adam: ("exp_avg", "exp_avg_sq", "step"),
               torch.optim.AdamW: ("exp_avg", "exp_avg_sq", "step")}


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, dict[str, Any]]) -> list[str]:
    """Give ``optimizer`` the per-parameter state of another run, matched by parameter name.

    Parameters not in the optimizer (frozen), absent from ``state``, or whose buffers have another
    shape (a re-initialised first conv or classifier) keep a fresh state. The optimizer's param
    groups (LR, momentum...) are untouched: the LR is this run's. Returns the names loaded.

    Raises:
        CheckpointError: the state was made by another kind of optimizer (e.g. Adam moments for SGD).
    """
    params = dict(unwrap(module).named_parameters())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    needed = _STATE_KEYS.get(type(optimizer), ())
    loaded = []
    for name, entry in state.items():
        param = params.get(name)
        if param is None or id(param) not in in_optimizer or not entry:
            continue
        missing = [k for k in needed if k not in entry]
        if missing:
            raise CheckpointError(f"the pretrained optimizer state of {name!r} holds {sorted(entry)}, not the "
                                  f"{missing} {type(optimizer).__name__} needs: pretrain and fine-tune with the same "
                                  "optimizer, or set bridge.transfer_optimizer: false")
        tensors = [v for k, v in entry.items() if isinstance(v, torch.Tensor) and k != "step"]
        if any(tuple(v.shape) != tuple(param.shape) for v in tensors):
            continue
        optimizer.state[param] = {k: v if not isinstance(v, torch.Tensor) else v.clone() if k == "step"
                                  else v.to(param.device, param.dtype).clone() for k, v in entry.items()}
        loaded.append(name)
    return loaded


def _train_one_epoch(model, bundle, cfg, optimizer, schedule, generator, device, info, progress, desc, precision,
                     *, in_backward: bool) -> dict:
    loss_sum, correct, count = 0.0, 0.0, 0.0
    steps = max(1, len(bundle.train) // cfg.batch_size)
    bar = tqdm(total=steps, desc=desc, disable=not (progress and info.is_main), leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    batches = iterate_batches(bundle, bundle.train, cfg.batch_size, train=True, generator=generator,
                              rank=info.rank, world_size=info.world_size)
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        finite = bool(torch.isfinite(loss))
        # every rank stops together (a rank that raised alone would leave the others waiting)
        ranks_bad = distributed.all_reduce_sum([0.0 if finite else 1.0], device)[0]
        if ranks_bad:
            if finite:
                what = f"NaN/Inf on {int(ranks_bad)} of {info.world_size} ranks (this rank's inputs are fine)"
            else:
                what = f"{loss.item()} (" + ("the inputs hold NaN/Inf" if not torch.isfinite(x).all() else (
                    f"the inputs are finite, largest |x| = {x.abs().max().item():.3g}")) + ")"
            run_name, _, epoch_text = desc.rpartition(" ")
            raise TrainingError(f"{run_name} epoch {epoch_text}, step {step + 1}: the loss became {what}; "
                                "lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)  # with step_in_backward the parameters are updated in here
        if not in_backward:
            if cfg.grad_clip > 0:
                precision.unscale(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            precision.step(optimizer)
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


def write_metrics_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = METRICS_COLUMNS) -> None:
    """``rows`` (per-epoch records) as a CSV of ``columns``; a missing or None value is empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


__all__ = ["RunResult", "StepInBackward", "checkpoint_path", "step_in_backward_clash", "steps_in_backward", "evaluate",
           "fit", "load_optimizer_state", "optimizer_family", "optimizer_state_by_name", "state_by_name", "unwrap",
           "write_metrics_csv"]
