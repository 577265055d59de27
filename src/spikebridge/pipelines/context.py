"""The run context: what every phase of one run shares (device, output folder, seed, progress bars,
resume, mixed precision, SyncBN, the log), so that a phase is ``ctx.fit(model, data, phase)``."""
from __future__ import annotations

import contextlib
import copy
import contextvars
import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import PipelineConfig, TrainConfig
from ..data.loading import DataBundle
from ..errors import ConfigError, SpikebridgeError
from ..train.distributed import current as current_rank
from ..train.distributed import local_device
from ..train.engine import RunResult, checkpoint_path, fit


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; under torchrun ``cuda`` is this process's GPU."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: unknown device {name[:40]!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"run.device: {device.type!r} is not a device spikebridge trains on (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: mps requested but this PyTorch has no usable MPS device (Apple GPUs)")
    return local_device(device)


def log(message: str) -> None:
    """One line of a run's output (rank 0 alone under torchrun), with or without progress bars."""
    if current_rank().is_main:
        tqdm.write(message)


def log_written(out: Path, note: str = "") -> None:
    """``wrote OUT: <its files>, <its folders>/`` (rank 0 alone logs): what a finished run left,
    read from the folder, so that no output goes unnamed; hidden entries and what was there
    before the run (the run folder's record of foreign names) left out."""
    from ..train.runfolder import foreign_names

    foreign = foreign_names(Path(out))
    entries = [p for p in Path(out).iterdir() if not p.name.startswith(".") and p.name not in foreign]
    names = [p.name + "/" if p.is_dir() else p.name for p in sorted(entries, key=lambda p: (p.is_dir(), p.name))]
    log(f"wrote {out}: {', '.join(names)}" + (f" ({note})" if note else ""))


#: True inside :func:`holding_run_folder` (the CLI's ``execute`` has claimed ``--out``)
_FOLDER_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("spikebridge_run_folder_held", default=False)


@contextlib.contextmanager
def holding_run_folder():
    """The caller holds the run folder (``plan.execute``): the flows it calls claim none."""
    token = _FOLDER_HELD.set(True)
    try:
        yield
    finally:
        _FOLDER_HELD.reset(token)


#: the CLI's flags in the run folder's refusals -> what a Python caller sets instead
_PYTHON_ARGUMENTS = (("--resume", "cfg.run.resume=True"), ("--overwrite", "overwrite=True"), ("--out", "cfg.run.out"))


def claims_run_folder(command: str) -> Callable:
    """A flow called from Python (``pipes(cfg, ...)``) claims ``cfg.run.out`` as the CLI does:
    one run at a time, an earlier run refused unless ``cfg.run.resume`` continues it or
    ``overwrite=True`` replaces it, nothing left behind by a run that fails before its first
    result. Its boolean / text keyword options are part of the settings a resume must repeat."""
    def decorate(flow: Callable) -> Callable:
        @functools.wraps(flow)
        def run(cfg: PipelineConfig, *args: Any, overwrite: bool = False, **options: Any) -> dict:
            if _FOLDER_HELD.get():
                return flow(cfg, *args, **options)
            from ..neurons import check_backend_on_device
            from ..train.runfolder import claim_run_folder

            cfg = copy.deepcopy(cfg)  # the caller's cfg unchanged (the flow resolves model.name: auto in it)
            cfg.run.out = cfg.run.folder(command)
            cfg.validate()  # what the run plan checks for the CLI, before any work
            check_backend_on_device(cfg.neuron, resolve_device(cfg.run.device))
            plain = {k: v for k, v in options.items() if isinstance(v, (bool, int, str, list)) or v is None}
            try:
                folder = claim_run_folder(cfg.run.out, command=command, config={**asdict(cfg), "options": plain},
                                          resume=cfg.run.resume, overwrite=overwrite)
            except SpikebridgeError as exc:  # its advice in the caller's terms, not the CLI's flags
                text = str(exc)
                for flag, argument in _PYTHON_ARGUMENTS:
                    text = text.replace(flag, argument)
                raise type(exc)(text) from None
            threads = torch.get_num_threads()  # run.threads applies to the run alone
            try:
                with folder, holding_run_folder():  # a failure before any result leaves nothing (RunFolder.__exit__)
                    return flow(cfg, *args, **options)
            finally:
                torch.set_num_threads(threads)
        return run
    return decorate


@dataclass
class RunContext:
    """Device, output folder (None: nothing is written), seed, progress bars, resume, AMP, SyncBN,
    and when the run started (``time.perf_counter()``: the summary's ``wall_seconds``)."""

    device: torch.device
    out: Path | None
    seed: int = 0
    progress: bool = True
    resume: bool = False
    amp: str = "off"
    sync_bn: bool = False
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> RunContext:
        return cls(resolve_device(cfg.run.device), Path(cfg.run.out), cfg.run.seed, cfg.run.progress,
                   cfg.run.resume, cfg.run.amp, cfg.run.sync_bn)

    @property
    def is_main(self) -> bool:
        return current_rank().is_main

    def log(self, message: str) -> None:
        log(message)

    def wall_time(self) -> dict[str, Any]:
        """The summary's ``wall_seconds`` since the run started; after ``--resume`` they count this
        session alone, which ``wall_seconds_session`` says (the report too)."""
        return {"wall_seconds": round(time.perf_counter() - self.started, 1),
                **({"wall_seconds_session": True} if self.resume else {})}

    def bridge_seconds(self, name: str, measured: tuple[float, float]) -> tuple[float, float]:
        """The bridge's (wall, CPU) seconds before phase ``name``: ``measured``, or on ``--resume``
        the first run's, which the phase's checkpoints keep (``meta.bridge_seconds``), so that a
        resumed run reports the times of an uninterrupted one."""
        if self.resume and self.out is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # the JSON alone, not the tensors
                record = json.loads(checkpoint_path(self.out, name).read_text(encoding="utf-8"))
                wall, cpu = record["meta"]["bridge_seconds"]
                return float(wall), float(cpu)
        return measured

    def fit(self, model: nn.Module, bundle: DataBundle, phase: TrainConfig, *, name: str, saved: bool = True,
            **options: Any) -> RunResult:
        """Train one phase (:func:`spikebridge.train.engine.fit`); ``saved=False``: a short
        comparison run that writes no checkpoints and is not resumed."""
        return fit(model, bundle, phase, name=name, run_dir=self.out if saved else None, seed=self.seed,
                   device=self.device, progress=self.progress, resume=self.resume and saved, amp=self.amp,
                   sync_bn=self.sync_bn, **options)


__all__ = ["RunContext", "log", "resolve_device"]
