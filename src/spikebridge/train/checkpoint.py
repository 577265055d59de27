"""Checkpoints: tensors in safetensors, everything else in JSON; atomic, verifiable, resumable.

A checkpoint named ``NAME`` in folder ``DIR`` is two files:

* ``DIR/NAME-eEPOCH.safetensors``: the model's state dict under ``model.``, plus (for resuming)
  the optimizer's tensors under ``optim.``, and the RNG states under ``rng.``;
* ``DIR/NAME.json``: the metadata (model config, epoch, metrics, optimizer/scheduler scalars) and
  the file name and SHA-256 of the tensors file.

The tensors file gets a new name every save and the JSON is replaced atomically last, so at any
moment ``NAME.json`` points at a complete tensors file: killing a run never leaves a checkpoint
that loads half-written. Nothing is pickled; the tensors load with ``safetensors`` alone (and
``torch.load(weights_only=True)`` is never needed).
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import CheckpointError, first_line, short_repr
from ..utils import atomic_path, atomic_write_text, ensure_dir, remove_stale_temps

FORMAT = "spikebridge-checkpoint-1"
# the JSON holds metadata, optimizer and scheduler scalars: kilobytes. A larger one is not ours.
MAX_JSON_BYTES = 16 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Scalars, lists and dicts pass; tensors become lists; anything else is refused."""
    if isinstance(value, (str, int)) or value is None:  # bool is an int
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {"param_groups": _jsonable(state["param_groups"]), "scalars": _jsonable(scalars)}
    return tensors, meta


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: str | Path, name: str, model: torch.nn.Module, meta: dict[str, Any], *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    rng: dict[str, torch.Tensor] | None = None, epoch: int = 0) -> Path:
    """Write checkpoint ``folder/name`` atomically; returns the JSON path."""
    folder = ensure_dir(folder)
    module = getattr(model, "module", model)  # unwrap DDP
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    record: dict[str, Any] = {"format": FORMAT, "epoch": epoch, "meta": _jsonable(meta)}
    if optimizer is not None:
        optim_tensors, record["optimizer"] = _split_optimizer(optimizer)
        tensors.update(optim_tensors)
    if scheduler is not None:
        record["scheduler"] = _jsonable({k: v for k, v in scheduler.state_dict().items() if not callable(v)})
    for key, value in (rng or {}).items():
        tensors[f"rng.{key}"] = value.detach().cpu().contiguous()
    weights_name = f"{name}-e{epoch:04d}.safetensors"
    weights_path = folder / weights_name
    # serialised in memory and written by Python: a full disk raises OSError (ENOSPC) -> OutputError,
    # where safetensors' own file writer would raise a SafetensorError
    payload = save(tensors)
    with atomic_path(weights_path) as tmp:
        tmp.write_bytes(payload)
    record["weights"] = weights_name
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    json_path = folder / f"{name}.json"
    atomic_write_text(json_path, json.dumps(record, indent=1))
    remove_leftovers(folder, name, keep=weights_name)
    return json_path


def remove_leftovers(folder: str | Path, name: str, keep: str | None = None) -> int:
    """Delete what killed saves of checkpoint ``name`` left in ``folder``: temporary files, and
    tensors files other than ``keep`` (default: the one ``NAME.json`` points at). Returns the count.

    Safe at any moment no other process saves ``name``: ``NAME.json`` is only replaced after its
    tensors file is complete, so the file it points at is never removed.
    """
    folder = Path(folder)
    removed = remove_stale_temps(folder, (f"{glob.escape(name)}.json", f"{glob.escape(name)}-e*.safetensors"))
    if keep is None:
        keep = _current_weights(folder / f"{name}.json")
        if keep is None and (folder / f"{name}.json").exists():
            return removed  # unreadable JSON: keep every tensors file for the user to inspect
    for path in folder.glob(f"{glob.escape(name)}-e*.safetensors"):
        if path.name != keep and re.fullmatch(rf"{re.escape(name)}-e\d+\.safetensors", path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _current_weights(json_path: Path) -> str | None:
    try:
        weights = json.loads(json_path.read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return weights if isinstance(weights, str) else None


class Checkpoint:
    """A loaded checkpoint: ``model_state``, ``meta``, and what resuming needs."""

    def __init__(self, path: Path, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.path, self.record, self.tensors = path, record, tensors

    @property
    def meta(self) -> dict:
        return self.record.get("meta", {})

    @property
    def epoch(self) -> int:
        return int(self.record.get("epoch", 0))

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def optimizer_state(self) -> dict | None:
        if "optimizer" not in self.record:
            return None
        try:
            return _join_optimizer(self.tensors, self.record["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{self.path}: corrupt optimizer state ({type(exc).__name__}: {exc})") from None

    @property
    def scheduler_state(self) -> dict | None:
        return self.record.get("scheduler")

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {k[len("rng."):]: v for k, v in self.tensors.items() if k.startswith("rng.")}

    def resume_state(self) -> dict:
        """The training record a resume continues from, each field checked (``CheckpointError``
        naming the file and the field for a hand-edited or damaged JSON): ``history`` (the per-epoch
        records), ``curve`` / ``cpu_curve`` (``[seconds, epoch, accuracy]`` rows), ``seconds`` /
        ``cpu_seconds``, ``grad_scaler``; absent ones default to empty / 0. The scheduler and the
        optimizer's parameter groups are checked too. Loading for the weights alone never calls it."""
        meta = self.meta

        def bad(field: str, expected: str, value: Any) -> CheckpointError:
            return CheckpointError(f"{self.path}: checkpoint field {field!r} must be {expected}, got {short_repr(value)}")

        history = meta.get("history", [])
        if not (isinstance(history, list) and all(
                isinstance(r, dict) and _number(r.get("epoch"), 0, int) and _number(r.get("test_acc"), 0)
                and all(v is None or _number(v) for v in r.values()) for r in history)):
            raise bad("meta.history", "a list of per-epoch records (epoch, test_acc, ...: numbers)", history)
        state: dict[str, Any] = {"history": history}
        for key in ("curve", "cpu_curve"):
            rows = meta.get(key, [])
            if not (isinstance(rows, list) and all(isinstance(r, list) and len(r) == 3 and _number(r[0], 0)
                                                   and _number(r[1], 0, int) and _number(r[2], 0) for r in rows)):
                raise bad(f"meta.{key}", "a list of [seconds, epoch, accuracy] rows (numbers >= 0, an integer epoch)", rows)
            state[key] = rows
        for key in ("seconds", "cpu_seconds"):
            value = meta.get(key, 0.0)
            if not _number(value, 0):
                raise bad(f"meta.{key}", "a number >= 0", value)
            state[key] = float(value)
        scaler = meta.get("grad_scaler") or {}
        if not (isinstance(scaler, dict) and all(_number(v) for v in scaler.values())):
            raise bad("meta.grad_scaler", "a mapping of numbers", scaler)
        state["grad_scaler"] = scaler
        groups = (self.record.get("optimizer") or {}).get("param_groups", [])
        for i, group in enumerate(groups):
            params = group.get("params")
            if not (isinstance(params, list) and all(_number(v, 0, int) for v in params)):
                raise bad(f"optimizer.param_groups[{i}].params", "a list of parameter indices", params)
            for key, value in group.items():
                flat = value if isinstance(value, list) else [value]
                if key != "params" and not all(v is None or isinstance(v, bool) or _number(v) for v in flat):
                    raise bad(f"optimizer.param_groups[{i}].{key}", "a number, a flag or a list of numbers", value)
        scheduler = self.record.get("scheduler")
        if scheduler is not None and not (
            isinstance(scheduler, dict) and _number(scheduler.get("step_count"), 0, int)
            and isinstance(scheduler.get("base_lrs"), list) and all(_number(v, 0) for v in scheduler["base_lrs"])
            and len(scheduler["base_lrs"]) == (len(groups) if groups else max(1, len(scheduler["base_lrs"])))
        ):
            raise bad("scheduler", "a mapping with step_count (an integer >= 0) and base_lrs (one number per "
                      "parameter group)", scheduler)
        return state


def _number(value: Any, minimum: float | None = None, kind: type = float) -> bool:
    """Whether ``value`` is a finite number (an int for ``kind=int``; never a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return math.isfinite(value) and (minimum is None or value >= minimum)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept ``NAME.json``, the tensors file, or a folder holding exactly one ``*.json`` checkpoint."""
    if not str(path).strip():
        raise CheckpointError("checkpoint path is empty: give NAME.json, a .safetensors file or a run folder")
    path = Path(path)
    if path.is_dir():
        candidates = sorted(p for p in path.glob("*.json") if checkpoint_record(p) is not None)
        if not candidates and (path / "last.json").is_file():
            candidates = [path / "last.json"]  # damaged: loading it says what is wrong with it
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise CheckpointError(f"{path}: expected one checkpoint .json in the folder, found {found}")
        return candidates[0]
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def checkpoint_record(path: str | Path) -> dict | None:
    """The JSON record of checkpoint ``path`` (unchecked); None when it is not one (unreadable, too
    large, no format marker)."""
    try:
        if Path(path).stat().st_size > MAX_JSON_BYTES:
            return None
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def checkpoint_of_weights(path: str | Path) -> Path | None:
    """The checkpoint whose tensors file ``path`` is: ``NAME.json`` beside ``NAME-eEPOCH.safetensors``
    when it points at that file; else None."""
    path = Path(path)
    match = re.fullmatch(r"(.+)-e\d+\.safetensors", path.name)
    owner = path.with_name(f"{match[1]}.json") if match else None
    record = checkpoint_record(owner) if owner is not None else None
    if record is None and owner is not None and owner.is_file():
        return owner  # a damaged NAME.json: load_checkpoint says what is wrong with it
    return owner if record is not None and record.get("weights") == path.name else None


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (JSON + tensors). A bare ``.safetensors`` state dict loads as weights only.

    Raises :class:`CheckpointError` naming the file for a missing, truncated or corrupt JSON or
    tensors file, a checksum mismatch (``verify``), or metadata of the wrong shape.
    """
    path = resolve_checkpoint_path(path)
    if path.suffix == ".safetensors":
        return Checkpoint(path, {"format": FORMAT, "meta": {}}, _read_tensors(path, prefix="model."))
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for checkpoint metadata "
                                  f"(at most {MAX_JSON_BYTES})")
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON (truncated or corrupt)") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "weights" not in record:
        raise CheckpointError(f"{path}: not a spikebridge checkpoint (no '{FORMAT}' format marker)")
    _check_record(path, record)
    weights = path.parent / record["weights"]
    if not weights.is_file():
        raise CheckpointError(f"{path}: its tensors file {weights.name} is missing")
    if verify and record.get("sha256") and file_sha256(weights) != record["sha256"]:
        raise CheckpointError(f"{weights}: checksum mismatch (the file is corrupt or was changed)")
    checkpoint = Checkpoint(path, record, _read_tensors(weights))
    checkpoint.optimizer_state()  # a corrupt optimizer record fails here, not when resuming
    return checkpoint


def _check_record(path: Path, record: dict) -> None:
    """Refuse metadata of the wrong shape (a hand-edited or damaged JSON) with one line."""

    def bad(field: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{path}: checkpoint field {field!r} must be {expected}, got {short_repr(record.get(field))}")

    weights = record["weights"]
    if not isinstance(weights, str) or not weights or Path(weights).name != weights or weights in (".", ".."):
        raise bad("weights", "the name of a tensors file beside the JSON")
    if "sha256" in record and not isinstance(record["sha256"], str):
        raise bad("sha256", "a hex string")
    epoch = record.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise bad("epoch", "an integer >= 0")
    if not isinstance(record.get("meta", {}), dict):
        raise bad("meta", "a mapping")
    optimizer = record.get("optimizer")
    if optimizer is not None and not (
        isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) for g in optimizer["param_groups"])
        and isinstance(optimizer.get("scalars", {}), dict)
        and all(isinstance(v, dict) for v in optimizer.get("scalars", {}).values())
    ):
        raise bad("optimizer", "a mapping with 'param_groups' (a list of mappings)")
    scheduler = record.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, dict):
        raise bad("scheduler", "a mapping")


def _read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    sections = ("model.", "optim.", "rng.")  # what save_checkpoint writes into its tensors files
    if prefix and not (any(k.startswith(prefix) for k in tensors) and all(k.startswith(sections) for k in tensors)):
        tensors = {prefix + k: v for k, v in tensors.items()}  # a plain state dict (keys as they are)
    return tensors


def checkpoint_path(run_dir: str | Path, name: str) -> Path:
    """The last checkpoint :func:`~spikebridge.train.engine.fit` keeps of phase ``name`` in ``run_dir``."""
    return Path(run_dir) / name / "checkpoints" / "last.json"


def locate_checkpoint(path: str | Path, *, snn: bool = True) -> str | Path:
    """The checkpoint a user's CKPT names: for a checkpoint's tensors file its ``NAME.json``; for a
    run's phase folder (``RUN/PHASE``) the checkpoint the phase keeps; for a run folder that of its
    one phase, or of its one SNN phase (``snn=False``: its one ANN phase, as ``--ann RUN`` wants;
    several: ``CheckpointError`` listing them). Anything else as it is
    (:func:`~spikebridge.train.checkpoint.load_checkpoint` takes it or says why not)."""
    if not str(path).strip():
        return path  # load_checkpoint: "checkpoint path is empty"
    folder = Path(path)
    if not folder.is_dir():
        return checkpoint_of_weights(folder) or path
    if any(checkpoint_record(p) is not None for p in folder.glob("*.json")) or (folder / "last.json").is_file():
        return folder  # a folder of checkpoints: load_checkpoint takes its one .json
    if (own := checkpoint_path(folder.parent, folder.name)).is_file():
        return own  # a phase folder (a damaged checkpoint: load_checkpoint says what is wrong with it)
    try:
        kept = [d.name for d in sorted(folder.iterdir()) if d.is_dir() and checkpoint_path(folder, d.name).is_file()]
    except OSError:
        kept = []
    phases = {name: record for name in kept if (record := checkpoint_record(checkpoint_path(folder, name))) is not None}
    wanted = [name for name, record in phases.items() if _spiking_record(record) == snn]
    damaged = [name for name in kept if name not in phases]
    if damaged and len(wanted) != 1:  # not the other phase's instead: load_checkpoint says what is wrong
        return checkpoint_path(folder, damaged[0])
    if len(phases) == 1 or len(wanted) == 1:
        return checkpoint_path(folder, (wanted or list(phases))[0])
    if not phases:
        raise CheckpointError(f"{folder}: expected one checkpoint .json in the folder, found none; give a checkpoint "
                              ".json, a run's phase folder (RUN/snn_finetuned) or its run folder")
    names = list(phases)
    kind = "an SNN" if snn else "an ANN"
    raise CheckpointError(f"{folder} holds the checkpoints of {len(names)} phases ({', '.join(names[:8])}"
                          f"{' ...' if len(names) > 8 else ''}{'' if wanted else f'; none {kind}'}): give one of them, "
                          f"e.g. {folder / (wanted or names)[0]}")


def _spiking_record(record: dict) -> bool:
    """Whether a checkpoint's JSON record (unchecked) is an SNN's: its neuron is a spiking one."""
    meta = record.get("meta")
    neuron = meta.get("neuron") if isinstance(meta, dict) else None
    from ..neurons import neuron_names

    return isinstance(neuron, dict) and neuron.get("kind") in neuron_names(spiking=True)
