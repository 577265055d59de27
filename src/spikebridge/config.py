"""Configuration as data: dataclasses, strict YAML loading, dotted command-line overrides.

Every section is a dataclass with the reference defaults. ``load_config(path, overrides)`` reads a
YAML recipe into them and refuses unknown keys and wrong types with a one-line error naming the
key (``ConfigError: configs/x.yaml: finetune.lr: expected a number, got 'fast'``).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, first_line, short_repr
from .neurons import NeuronConfig, neuron_names

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine", "step")


# ------------------------------------------------------------------------------------------------
# Bounds of the values that size memory or threads. A recipe, a --set or a checkpoint field beyond
# them is refused before any work (a typo like T=100000 otherwise asks for terabytes).
# ------------------------------------------------------------------------------------------------
MAX_T = 1024  # time steps: activations and the state the backward keeps grow linearly with T (the paper uses <= 15)
MAX_CLASSES = 1_000_000  # a ResNet-50 head for 1e6 classes is already 2e9 parameters (8 GB)
MAX_CHANNELS = 4096  # input channels (images 1-3, event polarities 2)
MAX_IMAGE_SIZE = 4096  # pixels per side: one 4096^2 x 3 image is 200 MB in float32
MAX_BATCH = 65536  # samples per batch (training, calibration)
MAX_SAMPLES = 10_000_000  # sample counts that are gathered (calibration, precise BN, the demo curve)
MAX_EPOCHS = 100_000
MAX_SHIFT = 64  # random-translation pixels
MAX_WORKERS = 256  # data-loader processes
MAX_CALIBRATION_ITERATIONS = 64  # bisection steps: float32 thresholds stop changing after ~30
RECIPE_MAX_BYTES = 1 << 20  # a recipe is a page of YAML; 1 MiB is far beyond any real one
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


def max_threads() -> int:
    """``run.threads`` may be at most the machine's CPU count: more threads than cores only slows
    torch down, and absurd counts (100000) crash its thread pool."""
    return os.cpu_count() or 1


# SNN phases re-estimate their BatchNorm statistics after every epoch over this many training
# samples by default (TrainConfig.precise_bn); a few seconds per epoch on the demo's digits
PRECISE_BN_SAMPLES = 1024


@dataclass
class TrainConfig:
    """One training phase (ANN pretraining, SNN fine-tuning, SNN from scratch)."""

    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # constant | onecycle | cosine | step
    milestones: list[int] = field(default_factory=lambda: [2, 4, 6, 8])  # for "step"
    gamma: float = 0.3  # for "step": LR x gamma at each milestone
    warmup_pct: float = 0.25  # for "onecycle"
    batch_size: int = 64
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    freeze_epochs: int = 0  # "+WU": first N epochs train only layers not transferred
    until_plateau: int = 0  # >0: keep training past `epochs` while the best improved in the last N
    # >0: after every epoch re-estimate BatchNorm statistics over this many training samples
    # (no augmentation; counted as training time): "precise BN"
    precise_bn: int = 0
    # step each parameter inside the backward and free its gradient (exact; less memory); phases
    # with grad_clip, fp16 or DDP step after the backward
    step_in_backward: bool = True

    def validate(self, where: str) -> None:
        check_int(f"{where}.epochs", self.epochs, 0, MAX_EPOCHS)
        check_int(f"{where}.batch_size", self.batch_size, 1, MAX_BATCH)
        _choice(f"{where}.optimizer", self.optimizer, OPTIMIZERS)
        _choice(f"{where}.schedule", self.schedule, SCHEDULES)
        _positive_float(f"{where}.lr", self.lr)
        _range_float(f"{where}.momentum", self.momentum, 0.0, 1.0)
        _range_float(f"{where}.weight_decay", self.weight_decay, 0.0, math.inf)
        _range_float(f"{where}.gamma", self.gamma, 0.0, 1.0)
        _range_float(f"{where}.warmup_pct", self.warmup_pct, 0.0, 1.0)
        _range_float(f"{where}.label_smoothing", self.label_smoothing, 0.0, 1.0)
        _range_float(f"{where}.grad_clip", self.grad_clip, 0.0, math.inf)
        check_int(f"{where}.freeze_epochs", self.freeze_epochs, 0, MAX_EPOCHS)
        check_int(f"{where}.until_plateau", self.until_plateau, 0, MAX_EPOCHS)
        check_int(f"{where}.precise_bn", self.precise_bn, 0, MAX_SAMPLES)
        for i, milestone in enumerate(self.milestones):
            check_int(f"{where}.milestones[{i}]", milestone, 1, MAX_EPOCHS)


@dataclass
class DataConfig:
    name: str = "mnist5k"  # mnist5k | es-mnist | a path (ImageNet-layout folder, CIFAR, ES-ImageNet)
    workers: int = 0
    max_shift: int = 2  # random-translation augmentation for in-memory digits (pixels)
    image_size: int = 0  # 0 = pick from the data
    split_seed: int = 0
    limit_train: int = 0  # >0: use only this many training samples (a seeded subset; quick runs, tests)
    limit_test: int = 0  # >0: use only this many test samples

    def validate(self, where: str = "data") -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"{where}.name must name a dataset (mnist5k, es-mnist or a folder), got {short_repr(self.name)}")
        check_int(f"{where}.workers", self.workers, 0, MAX_WORKERS)
        check_int(f"{where}.max_shift", self.max_shift, 0, MAX_SHIFT)
        check_int(f"{where}.image_size", self.image_size, 0, MAX_IMAGE_SIZE)
        for key in ("limit_train", "limit_test"):  # subsets: they only ever shrink the data
            check_int(f"{where}.{key}", getattr(self, key), 0)
        _seed(f"{where}.split_seed", self.split_seed)


@dataclass
class ModelConfig:
    name: str = "auto"  # a registry name, or auto = picked for the data (cnn for digits ... resnet18 for photos)
    T: int = 4
    num_classes: int = 0  # 0 = from the data
    in_channels: int = 0  # 0 = from the data
    checkpoint_blocks: bool = False  # SNN training: recompute each block in the backward (less memory)

    def validate(self, where: str = "model") -> None:
        check_int(f"{where}.T", self.T, 1, MAX_T)
        check_int(f"{where}.num_classes", self.num_classes, 0, MAX_CLASSES)
        check_int(f"{where}.in_channels", self.in_channels, 0, MAX_CHANNELS)


@dataclass
class BridgeConfig:
    """How the ANN's parameters are carried into the SNN."""

    first_layer: str = "mean"  # mean | signed_polarity | skip (when input channels change; mean won in the demo)
    recalibrate_bn: bool = True  # re-estimate BN running statistics under spikes
    match_rates: bool = True  # threshold-aware: match each channel's firing rate to the ANN's (pipeS, LIF)
    calibration_batches: int = 2  # batches of calibration_batch_size training images (no augmentation)
    calibration_batch_size: int = 256
    calibration_iterations: int = 8  # bisection steps per layer for match_rates
    min_match: float = 0.5  # refuse when fewer than this fraction of the SNN's tensors load
    transfer_optimizer: bool = False  # also carry the ANN optimizer's state (momentum buffers) into the fine-tune

    def validate(self, where: str = "bridge") -> None:
        _choice(f"{where}.first_layer", self.first_layer, ("signed_polarity", "mean", "skip"))
        check_int(f"{where}.calibration_batches", self.calibration_batches, 1, MAX_SAMPLES // MAX_BATCH)
        check_int(f"{where}.calibration_batch_size", self.calibration_batch_size, 1, MAX_BATCH)
        check_int(f"{where}.calibration_iterations", self.calibration_iterations, 1, MAX_CALIBRATION_ITERATIONS)
        _range_float(f"{where}.min_match", self.min_match, 0.0, 1.0)


@dataclass
class RunConfig:
    out: str = ""  # the run folder; "" = runs/<command> (RunConfig.folder)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    progress: bool = True
    resume: bool = False
    threads: int = 0  # torch intra-op threads, at most the CPU count (max_threads()); 0 = leave torch's default
    amp: str = "off"  # off | bf16 | fp16: mixed precision on CUDA (ignored, with a note, on CPU)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (all ranks)

    def folder(self, command: str) -> str:
        """The run folder: ``out`` (``~`` expanded: it made a folder named ``~``), or ``runs/<command>``
        when it is empty."""
        return os.path.expanduser(self.out.strip()) or f"runs/{command}"

    def validate(self, where: str = "run") -> None:
        if not isinstance(self.out, str):
            raise ConfigError(f"{where}.out must be a folder path, got {short_repr(self.out)}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"{where}.device must be auto, cpu, cuda, cuda:N or mps, got {short_repr(self.device)}")
        _seed(f"{where}.seed", self.seed)
        check_int(f"{where}.threads", self.threads, 0, max_threads())
        _choice(f"{where}.amp", self.amp, ("off", "bf16", "fp16"))


@dataclass
class EventsConfig:
    """pipeD: the event dataset the SNN is fine-tuned on, and its training phases."""

    data: str = "es-mnist"  # es-mnist | an ES-ImageNet / event folder
    time_bins: int = 4  # >0: merge the stream's frames into this many steps (0 = keep them all)
    image_size: int = 0  # >0: resize the event frames to this square size (area average); 0 = as stored
    model: str = ""  # "" = the same model as the ANN
    # a transferred net is already near a solution: no warm-up, a cosine decay from a high LR
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=5, lr=3e-3, schedule="cosine", precise_bn=PRECISE_BN_SAMPLES))
    scratch: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=10, until_plateau=2, precise_bn=PRECISE_BN_SAMPLES))
    compare_first_layer: bool = True  # also fine-tune briefly with the other first-layer modes
    compare_epochs: int = 1

    def validate(self, where: str = "events") -> None:
        check_int(f"{where}.time_bins", self.time_bins, 0, MAX_T)
        check_int(f"{where}.image_size", self.image_size, 0, MAX_IMAGE_SIZE)
        check_int(f"{where}.compare_epochs", self.compare_epochs, 1, MAX_EPOCHS)
        self.finetune.validate(f"{where}.finetune")
        self.scratch.validate(f"{where}.scratch")


@dataclass
class PipelineConfig:
    """Everything one pipeline run needs (the demo, pipeS, pipeD)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    ann_neuron: str = "sharpened_relu"  # relu | sharpened_relu
    ann: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))
    # the transferred SNN already sits near a solution: a cosine decay from the peak LR, no warm-up
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, lr=1e-3, schedule="cosine", precise_bn=PRECISE_BN_SAMPLES))
    scratch: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=10, until_plateau=2, precise_bn=PRECISE_BN_SAMPLES))
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    demo_conversion_samples: int = 500  # demo: test digits for the bridge-vs-conversion curve (0 = skip)

    def validate(self) -> None:
        self.model.validate()
        self.events.validate()
        for name in ("ann", "finetune", "scratch"):
            getattr(self, name).validate(name)
        _choice("ann_neuron", self.ann_neuron, tuple(neuron_names(spiking=False)))
        if not self.neuron.spiking:
            raise ConfigError(f"neuron.kind is the SNN's neuron and must spike ({', '.join(neuron_names(spiking=True))}), "
                              f"got {short_repr(self.neuron.kind)}; the ANN's activation is ann_neuron")
        self.bridge.validate()
        self.data.validate()
        self.run.validate()
        check_int("demo_conversion_samples", self.demo_conversion_samples, 0, MAX_SAMPLES)
        if self.bridge.transfer_optimizer and self.ann.optimizer != self.finetune.optimizer:
            raise ConfigError(f"bridge.transfer_optimizer carries the ANN optimizer's state into the fine-tune, so "
                              f"ann.optimizer ({self.ann.optimizer}) and finetune.optimizer "
                              f"({self.finetune.optimizer}) must be the same")


# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------
def check_int(name: str, value: Any, low: int, high: int | None = None, error: type[Exception] = ConfigError) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``, else ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(f"{name} must be an integer >= {low}, got {short_repr(value)}")
    if high is not None and value > high:
        raise error(f"{name} must be an integer <= {high}, got {short_repr(value)}")
    return value


def _seed(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ConfigError(f"{name} must be an integer in [0, 2**63), got {short_repr(value)}")


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {short_repr(value)}")


def _range_float(name: str, value: Any, low: float, high: float) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not (ok and low <= value <= high):
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {short_repr(value)}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {short_repr(value)}")


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass
# ------------------------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for option in typing.get_args(tp):
            if option is not type(None):
                with contextlib.suppress(ConfigError):
                    return _coerce(value, option, key)
        options = " or ".join("null" if t is type(None) else _describe(t) for t in typing.get_args(tp))
        raise ConfigError(f"{key}: expected {options}, got {short_repr(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short_repr(value)}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(tp):
        return from_dict(tp, value, key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Any or (tp in (bool, str) and isinstance(value, tp)) or (tp is int and number and isinstance(value, int)):
        return value
    if tp is float and number:
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            digits = f"{len(str(value))} digits" if value.bit_length() < 13000 else "over 4000 digits"
            raise ConfigError(f"{key}: the number {str(value)[:12] if value.bit_length() < 13000 else ''}... "
                              f"({digits}) is too large") from None
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 as a string
        with contextlib.suppress(ValueError):
            return float(value)
    if tp is str and isinstance(value, (int, float)):  # YAML read the text as a number (007 -> 7) or true/false
        read_as = "true/false" if isinstance(value, bool) else "a number"
        raise ConfigError(f"{key}: expected a string, got {short_repr(value)}, which YAML reads as {read_as}; "
                          f"quote the text (--set \"{key}='...'\", or {key.rsplit('.', 1)[-1]}: '...' in a recipe)")
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {short_repr(value)}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    for key in data:
        if key not in known:
            label = key if isinstance(key, str) else short_repr(key)
            where = f"{prefix}.{label}" if prefix else label
            raise ConfigError(f"unknown config key {short_repr(where)}; known keys here: {', '.join(sorted(known))}")
    try:
        defaults = cls()
    except TypeError:  # a dataclass with required fields: no defaults to start from
        defaults = None
    kwargs = {}
    for key, value in data.items():
        base = getattr(defaults, key, None)
        if is_dataclass(base) and value is None:  # "finetune:" with every key commented out: the defaults,
            value = {}  # not those of the section's class (10 one-cycle epochs for every phase)
        if is_dataclass(base) and isinstance(value, dict):
            # a partial section keeps the defaults of *this* field (e.g. events.finetune's own
            # epochs and schedule), not those of the section's class
            value = _merged(asdict(base), value)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}: {exc}" if prefix else str(exc)) from None


def _merged(base: dict, update: dict) -> dict:
    """``base`` with ``update`` laid over it, section by section."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing anchors and aliases (``&a`` / ``*a``, and ``<<: *a`` merges).

    An alias shares one node many times: nine levels of them (a 418-byte "billion laughs" file)
    stand for 10^9 strings, which anything that walks the value (a check, an error message)
    expands. Recipes never need them, so the composer refuses them before any value is built."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise _YamlAliasError(f"line {mark.line + 1}: YAML anchors and aliases (&name, *name) are not allowed; "
                                  "write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        """Refuse a key given twice in one mapping (PyYAML keeps the last one without a word)."""
        seen: set = set()
        for key_node, _value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise _YamlAliasError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _decimal_int(loader: _NoAliasLoader, node: Any) -> Any:
    """YAML 1.1 reads ``010`` as octal 8 and ``0x10`` as 16: a recipe's integer is decimal, and the
    other forms stay text (which the config's type check names)."""
    text = loader.construct_scalar(node)
    digits = text.replace("_", "")
    return int(digits, 10) if re.fullmatch(r"[-+]?[0-9]+", digits) else text


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _decimal_int)


class _YamlAliasError(ConfigError):
    """What the recipe loader refuses: anchors, aliases, a key given twice."""


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` without anchors/aliases (:class:`_NoAliasLoader`)."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, Any]:
    """``"finetune.lr=0.01"`` -> ``("finetune.lr", 0.01)`` (the value is parsed as YAML, no aliases)."""
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except _YamlAliasError as exc:
        raise ConfigError(f"--set {short_repr(key.strip())}: {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError, OverflowError):  # e.g. 2024-13-01 (a date YAML cannot build)
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    if not str(path).strip():
        raise ConfigError("the config file path is empty")
    path = Path(path).expanduser()
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        raise ConfigError(f"config {path} is a folder; give one YAML recipe in it"
                          + (f" (e.g. {', '.join(yamls)})" if yamls else ""))
    if not path.exists():  # a pipe (--config <(...), /dev/stdin) is no regular file, and is read
        raise ConfigError(f"config file not found: {path}")
    try:
        size = path.stat().st_size
        if size > RECIPE_MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a recipe (at most {RECIPE_MAX_BYTES})")
        data = safe_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if isinstance(exc, _YamlAliasError) else str(exc)) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: e.g. a date like 2024-13-45
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data or {}


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Defaults <- YAML file <- dotted overrides; validated."""
    tree: dict = read_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        node = tree
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {short_repr(dotted)}: {short_repr(part)} is not a section")
        node[key] = value
    try:
        config = from_dict(cls, tree)
        if hasattr(config, "validate"):
            config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return config


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(asdict(config), sort_keys=False)


__all__ = [
    "BridgeConfig", "DataConfig", "EventsConfig", "ModelConfig", "PipelineConfig", "RunConfig",
    "TrainConfig", "dump_yaml", "from_dict", "load_config", "check_int", "max_threads", "parse_override",
    "read_yaml", "safe_yaml",
]
