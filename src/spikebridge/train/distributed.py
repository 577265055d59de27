"""torchrun / DistributedDataParallel setup: gloo on CPU, nccl on GPU; rank 0 writes files.

Also the DDP wrapper (:func:`wrap_model`), BatchNorm statistics over the global batch
(:func:`convert_sync_batchnorm`: ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` on
CPU, where PyTorch's refuses CPU tensors) and mixed precision (:class:`Precision`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, SpikebridgeError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched() -> DistInfo:
    """This process's rank and the process count torchrun launched (rank 0 of 1 without it), known
    before the process group starts (the run plan is made before it)."""
    if not launched_by_torchrun():
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))


def rank_0_decides(action: Callable[[], Any]) -> Any:
    """``action()`` on rank 0 alone (on this process without a process group); under torchrun its
    refusal (a SpikebridgeError) is raised on every rank, rank 0 ending only once all have it, and
    marked ``told_by_rank_0`` on the others (the CLI prints it once). Returns the action's result
    (None on the other ranks)."""
    info = current()
    result, verdict = None, None
    if info.is_main:
        try:
            result = action()
        except SpikebridgeError as exc:
            verdict = exc
    if info.enabled:
        shared = [None if verdict is None else (type(verdict), str(verdict))]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            dist.barrier()  # rank 0 would otherwise end before the others have the verdict
            if verdict is None:
                verdict = shared[0][0](shared[0][1])
                verdict.told_by_rank_0 = True
    if verdict is not None:
        raise verdict
    return result


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise the process group when launched by torchrun (idempotent); else a 1-process info."""
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # on CUDA: nccl for the training tensors, gloo for any CPU scalars
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return current()


def teardown_distributed() -> None:
    """Destroy the process group (end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare ``cuda`` device becomes this process's ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (no-op when not distributed)."""
    if not current().enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def average_batchnorm_statistics(model: nn.Module) -> None:
    """Average every BatchNorm's running mean and variance over the ranks (in place)."""
    info = current()
    if not info.enabled:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buffer in (m.running_mean, m.running_var):
                dist.all_reduce(buffer)
                buffer.div_(info.world_size)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


# ------------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------------
def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed, else ``model`` itself.

    DDP registers the parameters that require gradients *now*: call it again after unfreezing
    (the end of a warm-up). Construction broadcasts rank 0's parameters and buffers.
    """
    if not current().enabled:
        return model
    module = getattr(model, "module", model)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


# ------------------------------------------------------------------------------------------------
# synchronised BatchNorm
# ------------------------------------------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    backward = forward  # the gradient: the same sum over ranks


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the batch of every rank (any device, any backend).

    Same parameters, buffers and eval behaviour as ``nn.BatchNorm2d`` (converted in place by
    :func:`convert_sync_batchnorm`). In training under a process group the per-channel sum and
    count, then the squared deviations from the global mean, are all-reduced (differentiably: the
    backward is exact). Input ``[N, C, ...]``; statistics in float32; running statistics as
    ``nn.BatchNorm2d``'s.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and current().enabled):
            return super().forward(input)
        all_reduce = _SumOverRanks.apply
        x = input.float() if input.dtype != torch.float64 else input
        dims = [0, *range(2, x.dim())]
        # the per-channel sums are accumulated in float64: the statistics are as exact as one
        # process's over the global batch, whatever the number of ranks
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        packed = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        total = packed[-1]
        mean = packed[:-1] / total
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.to(x.dtype).view(shape)
        var = all_reduce((centred * centred).sum(dims, dtype=torch.float64)) / total
        out = centred * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            out = out * self.weight.to(x.dtype).view(shape) + self.bias.to(x.dtype).view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(total)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


_ORIGINAL_CLASS = "_spikebridge_bn_class"


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Make every BatchNorm of ``model`` compute its statistics over all ranks, in place (the
    modules keep their parameters, buffers and state-dict keys). Returns how many were converted."""
    target = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    converted = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not hasattr(module, _ORIGINAL_CLASS):
            setattr(module, _ORIGINAL_CLASS, type(module))
            if target is nn.SyncBatchNorm:
                module.process_group = None
            module.__class__ = target
            converted += 1
    return converted


def revert_sync_batchnorm(model: nn.Module) -> None:
    """Undo :func:`convert_sync_batchnorm`."""
    for module in model.modules():
        original = getattr(module, _ORIGINAL_CLASS, None)
        if original is not None:
            module.__class__ = original
            delattr(module, _ORIGINAL_CLASS)
            if hasattr(module, "process_group") and not isinstance(module, nn.SyncBatchNorm):
                del module.process_group


# ------------------------------------------------------------------------------------------------
# mixed precision
# ------------------------------------------------------------------------------------------------
class Precision:
    """``amp`` = ``off`` | ``bf16`` | ``fp16``: autocast on CUDA, with a gradient scaler for fp16.

    On a CPU device mixed precision is switched off (:attr:`note` says so): the recipes then run
    unchanged, in float32.
    """

    def __init__(self, amp: str, device: torch.device) -> None:
        if amp not in ("off", "bf16", "fp16"):
            raise ConfigError(f"run.amp must be off, bf16 or fp16, got {amp!r}")
        self.note = ""
        if amp != "off" and device.type != "cuda":
            self.note = f"run.amp={amp} applies on CUDA only; training in float32 on {device.type}"
            amp = "off"
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before gradient clipping: bring the gradients back to their true scale."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
