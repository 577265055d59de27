"""Rebuild models from what a user gives on the command line: a Python file + class name (their
own ANN, :func:`import_ann`), or a spikebridge checkpoint (whose metadata says how to rebuild its
model, :func:`load_model` / :func:`model_from_checkpoint`).

A checkpoint is data: its fields (:func:`check_model_meta`) and tensors (:func:`check_weights`) are
checked before the model is built for real. A checkpoint of the user's own class imports nothing
unless the caller names the code (``code=``, ``--ann``) or trusts the recorded file
(``trust_code=True``, ``--trust-code``); the file's SHA-256 is checked against ``ann_sha256``.

Checkpoint metadata of a spikified model (written by ``spikebridge finetune``, ``pipes`` and
``piped`` for ``--ann FILE.py:ClassName``; :func:`spikified_meta`)::

    {"model": {"name": "spikify", "ann": "/abs/path/file.py:ClassName", "ann_sha256": "<hex>", "ann_kwargs": {...},
               "num_classes": K, "in_channels": C, "T": T, "input_ndim": 4,
               "input_conv": "conv1"},
     "neuron": {...NeuronConfig fields...}, "data": "mnist5k"}

``input_conv`` (optional; pipeD on events): the ``nn.Conv2d`` reading the input was replaced by
one taking ``in_channels`` channels (:func:`spikebridge.spikify.adapt_input_conv`), so the model
is rebuilt with that conv swapped before its weights load.

The user's ANN itself, trained by ``pipes`` / ``piped`` (run ``ann``; :func:`ann_class_meta`)::

    {"model": {"name": "ann_class", "ann": "/abs/path/file.py:ClassName", "ann_sha256": "<hex>", "ann_kwargs": {...},
               "num_classes": K, "in_channels": C, "T": 1}, "neuron": null, "data": "mnist5k"}

Registry models store ``{"model": {"name", "num_classes", "in_channels", "T"}, "neuron": {...}}``
(:func:`spikebridge.pipelines.model_meta`).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import math
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import MAX_CHANNELS, MAX_CLASSES, MAX_T, check_int, from_dict
from .errors import CheckpointError, ConfigError, clip, first_line, short_repr
from .neurons import NeuronConfig, neuron_names
from .train.checkpoint import file_sha256, locate_checkpoint

SPIKIFIED_MODEL_NAME = "spikify"
USER_ANN_MODEL_NAME = "ann_class"  # the user's own ANN class, not spiking

MAX_JSON_DEPTH = 32  # --ann-kwargs / stored constructor arguments: nesting levels
MAX_JSON_ITEMS = 100_000  # ... and values in all
MAX_ANN_KWARGS_CHARS = 1 << 16
MAX_MODEL_ELEMENTS = 1 << 31  # a model described without its tensors: at most 8 GB of float32 parameters
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_python_class_spec(spec: str) -> bool:
    """``path/to/file.py:ClassName``?"""
    path, sep, name = str(spec).rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = first_line(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_json_value(value: Any, where: str, error: type[Exception] = ConfigError) -> None:
    """Refuse anything but JSON scalars, lists and string-keyed mappings, nested at most
    ``MAX_JSON_DEPTH`` deep with at most ``MAX_JSON_ITEMS`` values (iterative: no recursion)."""
    stack = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_JSON_DEPTH or count > MAX_JSON_ITEMS:
            raise error(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels or more than {MAX_JSON_ITEMS} values")
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise error(f"{where}: mapping keys must be strings")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise error(f"{where}: {item} is not a finite number")
        elif not (item is None or isinstance(item, (str, int, float, bool))):
            raise error(f"{where}: {type(item).__name__} is not a JSON value")


def parse_ann_kwargs(text: str | None) -> dict[str, Any]:
    """``--ann-kwargs`` JSON: an object, at most 64 KiB, ``MAX_JSON_DEPTH`` levels deep."""
    if not text:
        return {}
    if len(text) > MAX_ANN_KWARGS_CHARS:
        raise ConfigError(f"--ann-kwargs: {len(text)} characters is too long (at most {MAX_ANN_KWARGS_CHARS})")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"--ann-kwargs: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise ConfigError(f"--ann-kwargs must be a JSON object like '{{\"num_classes\": 10}}' ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--ann-kwargs must be a JSON object, got {short_repr(text)}")
    check_json_value(value, "--ann-kwargs")
    return value


def import_ann(spec: str, kwargs: dict[str, Any] | None = None, weights: str | Path | None = None) -> nn.Module:
    """Import ``FILE.py:ClassName`` by path and build ``ClassName(**kwargs)``; with ``weights``, load
    them (:func:`load_ann_weights`).

    This runs the file's code: call it only for code the user named (``--ann``) or trusted."""
    path_text, sep, class_name = str(spec).rpartition(":")
    if not sep or not path_text.endswith(".py"):
        raise ConfigError(f"--ann {short_repr(spec)}: expected FILE.py:ClassName or a checkpoint .json")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"--ann: file not found: {clip(path_text)}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"spikebridge_user_ann_{digest}"
    source_spec = importlib.util.spec_from_file_location(module_name, path)
    if source_spec is None or source_spec.loader is None:
        raise ConfigError(f"--ann: cannot import {clip(path_text)}")
    module = importlib.util.module_from_spec(source_spec)
    sys.modules[module_name] = module
    # the user's file may import siblings: make its folder importable while it loads
    sys.path.insert(0, str(path.parent))
    try:
        source_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(f"--ann: {clip(path_text)} line {exc.lineno}: syntax error ({exc.msg})") from None
    except Exception as exc:  # ImportError, or whatever the file's own code raised while it loaded
        raise ConfigError(f"--ann: importing {clip(path_text)} failed: {type(exc).__name__}: "
                          f"{short_repr(first_line(exc), 200)}") from None
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    cls = getattr(module, class_name, None)
    if cls is None:
        available = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module_name)
        raise ConfigError(f"--ann: {clip(path_text)} has no class {class_name!r}; nn.Module classes there: {', '.join(available) or 'none'}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--ann: {clip(path_text)}:{class_name} is not an nn.Module class")
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(cls)
        signature.bind(**kwargs)
    except TypeError as exc:
        required = [p.name for p in signature.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(
            f"--ann: {class_name}({', '.join(required)}) cannot be built with {short_repr(kwargs) if kwargs else 'no arguments'} ({exc}); "
            f"pass its arguments as JSON: --ann-kwargs '{{\"{required[0] if required else 'name'}\": ...}}'"
        ) from None
    except ValueError:
        pass  # no signature available (builtins): just try
    try:
        model = cls(**kwargs)
    except Exception as exc:  # the class's own __init__ failed
        raise ConfigError(f"--ann: {class_name}(**{short_repr(kwargs)}) raised {type(exc).__name__}: "
                          f"{short_repr(first_line(exc), 200)}") from None
    if weights:
        load_ann_weights(model, weights)
    return model


def check_weights(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Any, model_name: str) -> None:
    """Refuse (``CheckpointError``) weights ``state`` that do not fit a model whose state dict is
    ``own``: missing / unexpected keys, other shapes, integer or bool tensors where the model has
    floating ones, NaN or Inf values. Integer buffers (BatchNorm's ``num_batches_tracked``) stay
    integers, and may be missing. ``own`` may live on the meta device (nothing allocated)."""
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{clip(source)}: {short_repr(not_tensors[0])} is not a tensor (not a state dict)")
    # BatchNorm's step counter is absent from older and converted files; PyTorch loads them without it
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"shape mismatch {k}: file {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mismatched[:1]]
    parts += [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
              for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if parts:
        raise CheckpointError(clip(f"{source}: the weights do not fit {model_name} ({'; '.join(parts)})", 300))
    for key, value in own.items():
        if key not in state:
            continue
        tensor = state[key]
        if value.is_floating_point() != tensor.is_floating_point():
            raise CheckpointError(f"{clip(source)}: {key} is {str(tensor.dtype).removeprefix('torch.')} where "
                                  f"{model_name} has {str(value.dtype).removeprefix('torch.')} (not weights of this model)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{clip(source)}: {key} holds NaN or Inf values (the weights are damaged)")


def load_ann_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` (``.pth``/``.pt``/``.safetensors``/checkpoint) into ``model``: every key, of
    the model's shapes, floating where the model is, finite (:func:`check_weights`)."""
    from .bridge import as_state_dict

    state = as_state_dict(Path(path))
    own = model.state_dict()
    check_weights(own, state, path, type(model).__name__)
    model.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state}, strict=True)  # counters it lacks


def absolute_class_spec(spec: str) -> str:
    """``file.py:ClassName`` with the file's absolute path (what checkpoint metadata stores)."""
    path, _sep, class_name = str(spec).rpartition(":")
    return f"{Path(path).expanduser().resolve()}:{class_name}"


def _class_meta(name: str, spec: str, kwargs: dict[str, Any] | None, neuron: NeuronConfig | None, *,
                num_classes: int, in_channels: int, T: int, data: str, **more: Any) -> dict:
    """Checkpoint metadata of a user class: ``ann`` (absolute spec), ``ann_sha256`` (of its file:
    loading checks it), ``ann_kwargs``, the sizes and ``more`` (left out when empty)."""
    spec = absolute_class_spec(spec)
    model = {"name": name, "ann": spec, "ann_sha256": file_sha256(Path(spec.rpartition(":")[0])),
             "ann_kwargs": dict(kwargs or {}), "num_classes": int(num_classes), "in_channels": int(in_channels),
             "T": int(T), **{k: v for k, v in more.items() if v}}
    return {"model": model, "neuron": asdict(neuron) if neuron is not None else None, "data": data}


def ann_class_meta(spec: str, kwargs: dict[str, Any] | None, *, num_classes: int, in_channels: int,
                   data: str) -> dict:
    """Checkpoint metadata of the user's ANN class ``spec`` (trained by pipes / piped)."""
    return _class_meta(USER_ANN_MODEL_NAME, spec, kwargs, None, num_classes=num_classes, in_channels=in_channels,
                       T=1, data=data)


def spikified_meta(spec: str, kwargs: dict[str, Any] | None, neuron: NeuronConfig, *, num_classes: int,
                   in_channels: int, T: int, input_ndim: int, data: str, input_conv: str | None = None) -> dict:
    """Checkpoint metadata of ``spikify(ClassName(**kwargs))`` (see the module docstring)."""
    return _class_meta(SPIKIFIED_MODEL_NAME, spec, kwargs, neuron, num_classes=num_classes, in_channels=in_channels,
                       T=T, data=data, input_ndim=int(input_ndim), input_conv=input_conv)


def neuron_from_meta(data: Any, where: str = "the checkpoint") -> NeuronConfig:
    """The checkpoint's ``neuron`` record, each field checked as a recipe's ``neuron:`` section is
    (type, then :class:`NeuronConfig`'s own validation); unknown fields are refused."""
    try:
        return from_dict(NeuronConfig, data, "neuron")
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{clip(where)}: checkpoint neuron settings are invalid: {_one_line(exc)}") from None


# ------------------------------------------------------------------------------------------------
# checkpoint metadata: fields by type and range
# ------------------------------------------------------------------------------------------------
_FIXED_ARGUMENTS = {"self", "num_classes", "in_channels", "neuron", "T"}


def _model_options(name: str) -> set[str]:
    """Constructor arguments of registry model ``name`` a checkpoint may set (``model.options``):
    those with defaults, other than the ones every model takes."""
    from .models import create_model

    with torch.device("meta"):
        probe = create_model(name, num_classes=1, in_channels=1, neuron=NeuronConfig(kind="relu"), T=1)
    parameters = inspect.signature(type(probe).__init__).parameters.values()
    return {p.name for p in parameters if p.default is not p.empty and p.name not in _FIXED_ARGUMENTS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_model_meta(meta: Any, where: str = "the checkpoint") -> dict[str, Any]:
    """``meta["model"]`` after checking its fields by type and range (``CheckpointError``):
    ``name`` (a registry model, ``ann_class`` or ``spikify``), ``num_classes`` in [1, MAX_CLASSES],
    ``in_channels`` in [1, MAX_CHANNELS], ``T`` in [1, MAX_T]; a registry model's ``options`` only
    its constructor's, with JSON values; a user class's ``ann`` spec, ``ann_sha256``,
    ``ann_kwargs`` (JSON object), ``input_ndim``, ``input_conv``."""
    from .models import list_models

    where = clip(where)
    info = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise CheckpointError(f"{where}: the checkpoint has no model description (meta.model.name); "
                              "it was not written by spikebridge")
    name = info["name"]

    def field(key: str) -> str:
        return f"{where}: checkpoint field meta.model.{key}"

    check_int(field("num_classes"), info.get("num_classes"), 1, MAX_CLASSES, error=CheckpointError)
    check_int(field("in_channels"), info.get("in_channels"), 1, MAX_CHANNELS, error=CheckpointError)
    check_int(field("T"), info.get("T", 1), 1, MAX_T, error=CheckpointError)
    if name in (USER_ANN_MODEL_NAME, SPIKIFIED_MODEL_NAME):
        if not isinstance(info.get("ann"), str) or not is_python_class_spec(info["ann"]):
            raise CheckpointError(f"{field('ann')} must be FILE.py:ClassName, got {short_repr(info.get('ann'))}")
        digest = info.get("ann_sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise CheckpointError(f"{field('ann_sha256')} must be 64 hex digits, got {short_repr(digest)}")
        if not isinstance(info.get("ann_kwargs", {}), dict):
            raise CheckpointError(f"{field('ann_kwargs')} must be a mapping, got {short_repr(info.get('ann_kwargs'))}")
        check_json_value(info.get("ann_kwargs", {}), field("ann_kwargs"), CheckpointError)
        if name == SPIKIFIED_MODEL_NAME:
            check_int(field("input_ndim"), info.get("input_ndim", 4), 2, 5, error=CheckpointError)
            conv = info.get("input_conv")
            if conv is not None and not (isinstance(conv, str) and all(p.isidentifier() or p.isdigit() for p in conv.split("."))):
                raise CheckpointError(f"{field('input_conv')} must be a module name, got {short_repr(conv)}")
        return info
    if name not in list_models():
        raise CheckpointError(f"{field('name')}: unknown model {short_repr(name)}; "
                              f"known: {', '.join(list_models())}, {USER_ANN_MODEL_NAME}, {SPIKIFIED_MODEL_NAME}")
    options = info.get("options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{field('options')} must be a mapping, got {short_repr(options)}")
    allowed = _model_options(name)
    for key, value in options.items():
        if key not in allowed:
            raise CheckpointError(f"{field('options')}: {name} takes no option {short_repr(key)} "
                                  f"(it takes {', '.join(sorted(allowed)) or 'none'})")
        flat = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in flat):
            raise CheckpointError(f"{field('options')}.{key} must be a number, a string or a list of them, got {short_repr(value)}")
        check_json_value(value, f"{field('options')}.{key}", CheckpointError)
    return info


# ------------------------------------------------------------------------------------------------
# rebuilding
# ------------------------------------------------------------------------------------------------
def resolve_code(info: dict, *, code: str | None, trust_code: bool, where: str = "the checkpoint",
                 flag: str = "--ann") -> str:
    """The ``FILE.py:Class`` a user-class checkpoint (``info`` = its checked ``meta["model"]``)
    may import, or ``CheckpointError`` - importing nothing. ``code`` (the user's ``--ann``) must
    name the recorded class and have the recorded SHA-256 (a checkpoint of an older spikebridge,
    without ``ann_sha256``, takes the named class as it is); ``trust_code`` imports the recorded
    absolute path if its file still has the recorded SHA-256. ``flag``: the command's flag naming
    the code, for the messages."""
    where = clip(where)
    recorded_path, _sep, recorded_class = info["ann"].rpartition(":")
    digest = info.get("ann_sha256")
    if code:
        if not is_python_class_spec(code):
            raise ConfigError(f"{flag} {short_repr(code)}: expected FILE.py:ClassName")
        code_path, _sep, code_class = code.rpartition(":")
        if code_class != recorded_class:
            raise CheckpointError(f"{where}: {flag} names class {code_class}, but this checkpoint needs {recorded_class} "
                                  f"(from {clip(recorded_path)})")
        file = Path(code_path).expanduser()
        if not file.is_file():
            raise ConfigError(f"{flag}: file not found: {clip(code_path)}")
        if digest is not None and file_sha256(file) != digest:
            raise CheckpointError(f"{where}: {flag} {clip(code_path)} is not the code this checkpoint was written with "
                                  f"(SHA-256 {file_sha256(file)[:12]}..., recorded {digest[:12]}...)")
        return absolute_class_spec(code)
    python = not flag.startswith("-")  # a Python caller's argument (load_model's code=), not a CLI flag
    name_it = f'{flag}="FILE.py:Class"' if python else f"{flag} FILE.py:Class"
    if not trust_code:
        raise CheckpointError(f"{where}: this checkpoint needs Python code ({recorded_class} from "
                              f"{clip(recorded_path)}); name it with {name_it} or pass "
                              f"{'trust_code=True' if python else '--trust-code'} to import the recorded file")
    file = Path(recorded_path)
    for refused, problem in ((not file.is_absolute(), "the recorded code path {} is not absolute"),
                             (digest is None, "the checkpoint records no SHA-256 of its code {}"),
                             (not file.is_file(), "the recorded code file {} does not exist")):
        if refused:
            raise CheckpointError(f"{where}: {problem.format(clip(recorded_path))}; name the file with {name_it}")
    if file_sha256(file) != digest:
        raise CheckpointError(f"{where}: the recorded code file {clip(recorded_path)} changed since the checkpoint "
                              "was written (SHA-256 differs); not importing it")
    return info["ann"]


def model_from_meta(meta: dict, *, T: int | None = None, code: str | None = None, trust_code: bool = False,
                    where: str = "the checkpoint", state: dict[str, torch.Tensor] | None = None,
                    code_flag: str = "--ann") -> nn.Module:
    """A fresh (untrained) model as the checkpoint metadata describes it; ``T`` overrides its T.

    Every field is checked first (:func:`check_model_meta`, :func:`neuron_from_meta`). A user
    class is imported only as :func:`resolve_code` allows (``code`` / ``trust_code``; ``code_flag``
    names the flag giving ``code`` in its messages). A registry
    model is first built on the meta device (no memory): with ``state`` its weights must fit it
    (:func:`check_weights`), without it it must stay under ``MAX_MODEL_ELEMENTS`` elements."""
    if T is not None:
        check_int("--T", T, 1, MAX_T)
    info = check_model_meta(meta, where)
    steps, name = int(T or info.get("T", 1)), info["name"]
    neuron = neuron_from_meta(meta.get("neuron") or {}, where) if name != USER_ANN_MODEL_NAME else None
    if neuron is not None:  # the backend is how the op ran there (all give the same numbers): here, the device's own
        neuron = replace(neuron, backend="auto")
    if name in (USER_ANN_MODEL_NAME, SPIKIFIED_MODEL_NAME):
        from .spikify import adapt_input_conv, spikify

        spec = resolve_code(info, code=code, trust_code=trust_code, where=where, flag=code_flag)
        ann = import_ann(spec, info.get("ann_kwargs") or {})
        if name == USER_ANN_MODEL_NAME:
            return ann
        snn = spikify(ann, neuron, T=steps, input_ndim=int(info.get("input_ndim", 4)))
        if info.get("input_conv"):
            swapped = adapt_input_conv(snn, int(info["in_channels"]), "skip")  # its weights load next
            if swapped != info["input_conv"]:
                raise CheckpointError(f"{clip(where)}: the checkpoint adapted the input conv {info['input_conv']!r}, "
                                      f"but {clip(spec)} now reads its input with {swapped!r}")
        return snn
    from .models import create_model

    options = {k: tuple(v) if isinstance(v, list) else v for k, v in (info.get("options") or {}).items()}

    def build() -> nn.Module:
        return create_model(name, num_classes=info["num_classes"], neuron=neuron, T=steps,
                            in_channels=info["in_channels"], **options)

    try:
        with torch.device("meta"):
            probe = build()
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{clip(where)}: cannot rebuild the checkpoint's model: {_one_line(exc)}") from None
    own = probe.state_dict()
    if state is not None:
        check_weights(own, state, where, name)
    elif sum(v.numel() for v in own.values()) > MAX_MODEL_ELEMENTS:
        raise CheckpointError(f"{clip(where)}: the model the checkpoint describes has more than {MAX_MODEL_ELEMENTS} elements")
    return build()


def model_from_checkpoint(path: str | Path | Any, *, T: int | None = None, code: str | None = None,
                          trust_code: bool = False, code_flag: str = "--ann") -> tuple[nn.Module, dict, Any]:
    """Load checkpoint ``path`` (or take a :class:`~spikebridge.train.checkpoint.Checkpoint` already
    loaded) and rebuild its model with the weights: ``(model, meta, ckpt)``.

    ``code`` / ``trust_code`` / ``code_flag``: see :func:`model_from_meta` (without them a checkpoint
    of the user's class is refused, importing nothing). In the returned ``meta`` (a copy),
    ``model.ann`` is the spec actually imported (``code`` when given). ``path`` may also name a run,
    a phase or a tensors file (:func:`locate_checkpoint`); a tensors file without its checkpoint JSON
    (weights only: nothing says which model they are) is refused."""
    from .train.checkpoint import Checkpoint, load_checkpoint

    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(locate_checkpoint(path))
    where = str(ckpt.path)
    if Path(ckpt.path).suffix == ".safetensors":
        raise CheckpointError(f"{clip(where)}: a tensors file without its checkpoint .json, which records the model; "
                              "give the checkpoint's NAME.json (or its folder)")
    meta = copy.deepcopy(ckpt.meta)
    state = ckpt.model_state
    model = model_from_meta(meta, T=T, code=code, trust_code=trust_code, where=where, state=state, code_flag=code_flag)
    if meta["model"]["name"] in (USER_ANN_MODEL_NAME, SPIKIFIED_MODEL_NAME):
        meta["model"]["ann"] = resolve_code(meta["model"], code=code, trust_code=trust_code, where=where, flag=code_flag)
        check_weights(model.state_dict(), state, where, type(model).__name__)
    model.load_state_dict(state, strict=True)
    if hasattr(model, "set_epoch") and not getattr(model, "spiking", True):
        model.set_epoch(max(0, ckpt.epoch - 1))  # a sharpened ReLU ends where its last training epoch left it
    return model, meta, ckpt


def load_model(path: str | Path, *, T: int | None = None, code: str | None = None,
               trust_code: bool = False) -> nn.Module:
    """The model of spikebridge checkpoint ``path`` with its weights, in eval mode, its time steps
    in ``model.T`` (1 for an ANN): registry ANN / SNN, the user's class or a spikified one (those
    two need ``code="FILE.py:Class"`` or ``trust_code=True``; see :func:`resolve_code`)."""
    model, meta, _ckpt = model_from_checkpoint(path, T=T, code=code, trust_code=trust_code, code_flag="code")
    info = meta["model"]
    spiking = getattr(model, "spiking", info["name"] == SPIKIFIED_MODEL_NAME)
    model.T = int(T or info.get("T", 1)) if spiking else 1
    return model.eval()


__all__ = [
    "MAX_JSON_DEPTH", "MAX_MODEL_ELEMENTS", "SPIKIFIED_MODEL_NAME", "USER_ANN_MODEL_NAME",
    "absolute_class_spec", "ann_class_meta", "check_json_value", "check_model_meta", "check_weights",
    "import_ann", "is_python_class_spec", "load_ann_weights", "load_model", "locate_checkpoint", "model_from_checkpoint",
    "model_from_meta", "neuron_from_meta", "parse_ann_kwargs", "resolve_code", "spikified_meta",
]
