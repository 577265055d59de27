"""Optimizer and LR-schedule presets (the paper's, and the demo's).

* ``step``: LR x ``gamma`` at each epoch in ``milestones`` (the paper's fine-tune: x0.3 at 2/4/6/8).
* ``constant``: the paper's ANN pretraining (constant LR, 0.1 per 256 images for SGD).
* ``onecycle``: warm-up then cosine annealing, per step (our small-data default).
* ``cosine``: cosine annealing per step, no warm-up.
"""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..errors import ConfigError


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in kinds:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}")
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    params = [p for p in params if p.requires_grad]
    return kinds[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The LR multiplier after ``step`` optimisation steps (a pure function: resumable)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    progress = min(step / total, 1.0)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "onecycle":
        warm = cfg.warmup_pct
        start, end = 1 / 25, 1 / 25 / 1e2  # torch's OneCycleLR defaults: div_factor 25, final 1e4
        if warm > 0 and progress < warm:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * progress / warm))
        rest = (progress - warm) / max(1e-12, 1 - warm)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * rest))
    raise ConfigError(f"unknown schedule {cfg.schedule!r}")


class StepSchedule:
    """Sets every param group's LR to ``base_lr * lr_factor(step)``; its state is just the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizer, self.cfg, self.steps_per_epoch = optimizer, cfg, steps_per_epoch
        self.step_count = 0
        self.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        factor = lr_factor(self.cfg, self.step_count, self.steps_per_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self._apply()
