"""The run plan: every command resolves (command, recipe, ``--set``, flags) into the ordered phases
it will train, validates them whole before any work and before anything is written, prints them
in short when the run starts, and as JSON with ``--plan``.

Defaults come in one stack, each layer over the one before (README, "The run plan"):

    library defaults (spikebridge.config) <- command preset <- recipe (--config) <- --set <- flags

A command preset (:data:`PRESETS`) applies only when no recipe is given: a recipe runs with the
library defaults under it, so the values it states are the values that run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from ..config import PipelineConfig, TrainConfig, load_config, parse_override, read_yaml
from ..data.datasets import BUILTIN_DATASETS, check_builtin_size, event_steps, planned_model, video_clip_frames
from ..data.disk import check_clip_size
from ..data.loading import merged_time_steps, step_divisors
from ..errors import ConfigError, DataError, clip
from ..models import list_models
from ..neurons import check_backend_on_device
from ..restore import locate_checkpoint
from ..train.checkpoint import load_checkpoint
from ..train.distributed import launched, rank_0_decides
from ..train.engine import check_global_batch
from ..train.runfolder import check_run_folder
from .ann import AnnSource, ClassFamily, check_checkpoint_optimizer, check_model_reads, load_ann
from .context import resolve_device

#: The command presets (dotted keys), below a recipe: used only when no ``--config`` is given.
FINETUNE_PRESET: dict[str, Any] = {  # one short epoch: the transferred SNN already sits near a solution
    "finetune.epochs": 1, "finetune.lr": 3e-4, "finetune.schedule": "cosine", "finetune.optimizer": "adam",
}
#: A spikified user class (``--ann FILE.py:Class``): a slower leak than the paper's 0.25 (the
#: membrane integrates over about two steps, closer to the rate code a ReLU maps to at T = 4).
SPIKIFY_PRESET: dict[str, Any] = {"neuron.decay": 0.5}
#: The demo: a short ANN (8 epochs at LR 1e-2) whose sharpening ends half-way (a 16-epoch
#: schedule: a half-sharpened ANN transfers better to the small CNN at T=4), one calibration batch,
#: and longer event fine-tuning; measured over seeds 0-3 in README, "The bridge end to end".
DEMO_PRESET: dict[str, Any] = {"neuron.sharpen_epochs": 16, "ann.epochs": 8, "ann.lr": 1e-2,
                               "bridge.calibration_batches": 1, "finetune.lr": 2e-3,
                               "events.finetune.epochs": 8}
#: The benchmark: the library's phases with a sharpening schedule of twice the ANN's 20 epochs
#: (half-way to the step), every method at one budget (the README's benchmark table).
BENCHMARK_PRESET: dict[str, Any] = {"neuron.sharpen_epochs": 40}
PRESETS: dict[str, dict[str, Any]] = {"benchmark": BENCHMARK_PRESET, "finetune": FINETUNE_PRESET, "demo": DEMO_PRESET}
PHASE_FIELDS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "schedule", "batch_size",
                "freeze_epochs", "until_plateau", "precise_bn")


@dataclass
class Request:
    """What the user asked for: the command, its recipe, ``--set`` texts, flag values (dotted
    keys; None = not given), the ANN source and the command's own options."""

    command: str
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    ann: AnnSource | None = None
    options: dict[str, Any] = field(default_factory=dict)  # baseline, events, methods, ann_data, ...


@dataclass
class Phase:
    """One training phase: its run name, role (ann | finetune | scratch), model, neuron, T, data
    and the size its images or event frames are resized to (0: as stored)."""

    name: str
    role: str
    model: str
    neuron: str
    T: int
    data: str
    image_size: int
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self.train)
        return {"name": self.name, "role": self.role, "model": self.model, "neuron": self.neuron, "T": self.T,
                "data": self.data, "image_size": self.image_size, **{key: values[key] for key in PHASE_FIELDS},
                **{key: value for key, value in values.items() if key not in PHASE_FIELDS}}


@dataclass
class RunPlan:
    command: str
    config: PipelineConfig
    phases: list[Phase]
    ann: AnnSource | None = None
    options: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=dict)
    loaded_ann: Any = None  # the ANN, loaded once when the plan was validated (execute runs it)
    notes: list[str] = field(default_factory=list)  # what the plan changed from the request, and why

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "command": self.command,
            "out": cfg.run.out,
            "device": cfg.run.device,
            "seed": cfg.run.seed,
            "processes": launched().world_size,
            "amp": cfg.run.amp,
            "sync_bn": cfg.run.sync_bn,
            "checkpoint_blocks": cfg.model.checkpoint_blocks,
            "ann": self.ann.label if self.ann else None,
            "preset": self.preset,
            "bridge": asdict(cfg.bridge),
            "neuron": asdict(cfg.neuron),
            "options": self.options,
            "notes": self.notes,
            "phases": [phase.to_dict() for phase in self.phases],
        }

    def settings(self) -> dict[str, Any]:
        """What the run computes: the config, the command's options (--baseline, --no-events,
        --methods, --ann-data) and the ANN it starts from; a ``--resume`` must give the same."""
        return {**asdict(self.config), "options": {k: v for k, v in self.options.items() if k != "overwrite"},
                "ann_source": self.ann.identity if self.ann else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def describe(self) -> list[str]:
        """The plan in short: one line for the run, one per phase."""
        cfg = self.config
        lines = [f"[plan] {self.command} -> {cfg.run.out} (device {cfg.run.device}, seed {cfg.run.seed}"
                 + (f", ANN {self.ann.label}" if self.ann else "")
                 + (", activation checkpointing over blocks" if cfg.model.checkpoint_blocks else "") + ")"]
        for p in self.phases:
            t = p.train
            epochs = f"{t.epochs} epoch{'' if t.epochs == 1 else 's'}"
            size = f" at {p.image_size} px" if p.image_size else ""
            lines.append(f"[plan] {p.name:<24} {p.role:<8} {p.model} {p.neuron} T={p.T} on {p.data}{size}: {epochs} "
                         f"{t.optimizer} lr {t.lr:g} {t.schedule}, batch {t.batch_size}"
                         + (f", warm-up {t.freeze_epochs}" if t.freeze_epochs else "")
                         + (f", until plateau {t.until_plateau}" if t.until_plateau else "")
                         + (f", precise BN {t.precise_bn}" if t.precise_bn else ""))
        return lines + [f"[plan] note: {note}" for note in self.notes]


# ------------------------------------------------------------------------------------------------
# resolving and validating
# ------------------------------------------------------------------------------------------------
def resolve_config(request: Request, *, user_class: bool = False) -> tuple[PipelineConfig, dict[str, Any]]:
    """The config from the layers (module docstring) and the preset that was applied
    (``user_class``: the ANN is the user's own class, which spikify turns into the SNN)."""
    preset: dict[str, Any] = {}
    if request.recipe is None:
        preset = dict(PRESETS.get(request.command, {}))
        if user_class and request.command in ("finetune", "pipes", "piped"):
            preset.update(SPIKIFY_PRESET)
    values = dict(preset)
    values.update(parse_override(text) for text in request.overrides)
    values.update({key: value for key, value in request.flags.items() if value is not None})
    cfg = load_config(PipelineConfig, request.recipe, values)
    cfg.run.out = cfg.run.folder(request.command)  # --out, else the recipe's or --set's, else runs/<command>
    cfg.run.resume = bool(request.flags.get("run.resume"))  # the flag alone: a saved config.yaml does not resume
    return cfg, preset


def _event_T_from_flag(command: str, cfg: PipelineConfig, T: int | None) -> None:
    """``--T`` where every SNN reads events (piped; benchmark on event data) is their T: the frames
    merge into T steps (``events.time_bins``; it was ignored, T stayed 4); refused in one line when
    T does not divide the frames. Elsewhere ``--T`` is ``model.T`` alone."""
    if T is None or command not in ("piped", "benchmark"):
        return
    name = cfg.events.data if command == "piped" else cfg.data.name
    steps = event_steps(name)
    if steps is None:
        return
    if steps % T:
        raise ConfigError(f"--T {T}: the {steps} event frames of {clip(name)} merge into T = {step_divisors(steps)}")
    cfg.events.time_bins = T


def dataset_folder(name: str) -> str:
    """``name``, or the dataset folder a folder that holds one leads to (a download folder such as
    Tonic's ``save_to``: :func:`~spikebridge.data.disk.locate_dataset`), as an absolute path, so
    that the plan shows and the run opens the folder used, and a ``--resume`` from another working
    directory opens it again (or is refused where its ``--data`` names another one); a name that is
    no dataset is left to the checks that use it."""
    from ..data.disk import locate_dataset

    name = os.path.expanduser(name) if name.startswith("~") else name  # a quoted or --x=~/... path
    if not name or name in BUILTIN_DATASETS or not os.path.isdir(name):
        return name
    try:
        return os.path.abspath(locate_dataset(name)[0])
    except (DataError, OSError):
        return os.path.abspath(name)


def _check_model(key: str, name: str) -> None:
    if name not in ("", "auto") and name not in list_models():
        raise ConfigError(f"{key}: unknown model {name[:60]!r}; registered: {', '.join(list_models())}")


def build_plan(request: Request) -> RunPlan:
    """Resolve and validate ``request`` whole; reads nothing but configs, flags, folder layouts and
    the ANN ``--ann`` names (its weights loaded, its class imported: a bad one fails here)."""
    command, options, source = request.command, dict(request.options), request.ann
    # the checkpoint --ann names (a damaged one fails here) and its meta.model (a bare weights file has none)
    ckpt = load_checkpoint(locate_checkpoint(source.checkpoint, snn=False)) \
        if source is not None and source.checkpoint else None  # a run or phase folder names its ANN's
    info = ckpt.meta.get("model") if ckpt is not None else None
    info = info if isinstance(info, dict) else {}
    user_class = info.get("name") == "ann_class" or (source is not None and bool(source.class_spec))
    if user_class and command == "benchmark":  # a class, or a checkpoint of one (it passed the plan)
        raise ConfigError("benchmark --ann takes a spikebridge checkpoint of a registry model (its methods split "
                          "encoder and decoder by the registry's layer names)")
    cfg, preset = resolve_config(request, user_class=user_class)
    cfg.data.name, cfg.events.data = dataset_folder(cfg.data.name), dataset_folder(cfg.events.data)
    _event_T_from_flag(command, cfg, request.flags.get("model.T"))
    if options.get("ann_data"):
        options["ann_data"] = dataset_folder(options["ann_data"])
    if ckpt is not None and command in ("pipes", "finetune"):  # the flows that fine-tune from the ANN's momentum
        check_checkpoint_optimizer(cfg, ckpt, source.label)
    _check_model("model.name", cfg.model.name)
    _check_model("events.model", cfg.events.model)
    sequence = [m for m in (cfg.model.name, cfg.events.model) if m in list_models(sequence=True)]
    if cfg.model.checkpoint_blocks and sequence:  # the CRNN: a per-frame encoder and an LSTM, no blocks
        raise ConfigError(f"--checkpoint-blocks: {sequence[0]} has no blocks to checkpoint (cnn, resnet and vgg models do)")
    check_backend_on_device(cfg.neuron, resolve_device(cfg.run.device))  # before any work
    ann_model = cfg.model.name
    ann_registry = info.get("name") if info and not user_class else (source.model if source is not None else None)
    if ann_registry and cfg.model.name not in ("", "auto", ann_registry):
        raise ConfigError(f"--ann {clip(source.label)} is a {ann_registry}, not a {cfg.model.name}: the SNN takes the "
                          "ANN's architecture (leave out --model / model.name)")
    if info:
        ann_model = str(info.get("ann") if user_class else info.get("name") or ann_model)
        if cfg.model.name in ("", "auto") and not user_class and info.get("name"):
            cfg.model.name = str(info["name"])
    elif source is not None and source.model:  # a registry model + its weights
        ann_model = source.model
        if cfg.model.name in ("", "auto"):
            cfg.model.name = source.model
    elif source is not None:
        ann_model = source.class_spec
    elif cfg.model.name in ("", "auto"):  # shown as the model the data will pick; cfg keeps "auto"
        ann_model = planned_model(cfg.model.name, cfg.data.name, cfg.data.image_size)
    ann_trained = source is not None and (source.checkpoint is not None or source.weights is not None)
    snn_model = ann_model if user_class or source is None else cfg.model.name
    data_steps = None if command == "piped" and ann_trained else event_steps(cfg.data.name)  # None: static
    ann_neuron = cfg.ann_neuron if source is None else "(its own)"
    clip_frames = video_clip_frames(cfg.data.name)  # RGB clips: every model reads their frames, at their size
    if clip_frames:
        check_clip_size(cfg.data.name, cfg.data.image_size)
    static_T = clip_frames or cfg.model.T
    if cfg.model.name in list_models(sequence=True) and not clip_frames and data_steps is None \
            and (cfg.data.name in BUILTIN_DATASETS or os.path.isdir(cfg.data.name)):
        raise ConfigError(f"model {cfg.model.name} reads frame sequences (video clips, event streams); "
                          f"{clip(cfg.data.name)} holds images: give an image model, or --model auto")

    def phase(name: str, role: str, train: TrainConfig, *, data: str = cfg.data.name, T: int = static_T,
              model: str = snn_model, image_size: int = cfg.data.image_size) -> Phase:
        return Phase(name, role, model, cfg.neuron.kind, T, data, image_size, train)

    phases: list[Phase] = []
    ann_phase = Phase("ann", "ann", ann_model, ann_neuron, clip_frames or 1, cfg.data.name, cfg.data.image_size, cfg.ann)
    if command in ("pretrain", "pipes", "piped", "demo") and not ann_trained:
        phases.append(ann_phase)
    if command in ("pretrain", "pipes", "demo", "finetune", "piped") and data_steps is not None:
        raise DataError(f"data.name {clip(cfg.data.name)!r} holds events; {command} trains on static images "
                        "(pipeD: spikebridge piped --events ...)")
    if command == "finetune":
        phases.append(phase("snn_finetuned", "finetune", cfg.finetune))
    if command in ("pipes", "demo"):
        phases.append(phase("snn_pretrained", "finetune", cfg.finetune))
        if options.get("baseline", command == "demo"):  # the CLI's --baseline; the demo always
            phases.append(phase("snn_scratch", "scratch", cfg.scratch))
    notes = _events_of_other_data(request, cfg, options, ann_trained)
    if command == "piped" or (command == "demo" and options.get("events", True)):
        steps = event_steps(cfg.events.data)
        if steps is None:
            raise DataError(f"events.data {clip(cfg.events.data)!r} holds no events (es-mnist, ES-ImageNet, ES-UCF101 "
                            "or DVS recordings)")
        T = merged_time_steps(cfg.events.time_bins, steps, cfg.events.data)
        event_phase = partial(phase, data=cfg.events.data, T=T, model=cfg.events.model or snn_model,
                              image_size=cfg.events.image_size)
        phases.append(event_phase("snn_events_pretrained", "finetune", cfg.events.finetune))
        if cfg.events.compare_first_layer:
            compare = replace(cfg.events.finetune, epochs=cfg.events.compare_epochs)
            phases += [event_phase(f"snn_events_{mode}", "finetune", compare)
                       for mode in ("signed_polarity", "mean", "skip") if mode != cfg.bridge.first_layer]
        if options.get("baseline", command == "demo"):  # the CLI's --baseline; the demo always
            phases.append(event_phase("snn_events_scratch", "scratch", cfg.events.scratch))
    if command == "benchmark":
        phases += _benchmark_phases(cfg, options, source, ann_phase, data_steps, snn_model)
    for name, image_size in dict.fromkeys((p.data, p.image_size) for p in phases):  # each once, in phase order
        _check_dataset(name, image_size)
    for model, data, image_size in dict.fromkeys((p.model, p.data, p.image_size) for p in phases):
        _check_model_reads_data(model, data, image_size)
    loaded = load_ann(source, checkpoint=ckpt) if source is not None else None
    if loaded is not None and command in ("pipes", "piped", "finetune") and isinstance(loaded.family, ClassFamily):
        loaded.family.check_convertible(cfg, loaded.model)
    plan = RunPlan(command, cfg, phases, source, options, preset, loaded, notes)
    for p in phases:  # under torchrun each global batch splits over the processes
        check_global_batch(p.name, p.train.batch_size, launched().world_size)
    # under torchrun rank 0 alone checks the folder (the others may see its fresh claim) and tells them
    rank_0_decides(lambda: check_run_folder(cfg.run.out, command=command, config=plan.settings(),
                                            resume=cfg.run.resume, overwrite=bool(options.get("overwrite"))))
    return plan


def _events_of_other_data(request: Request, cfg: PipelineConfig, options: dict, ann_trained: bool) -> list[str]:
    """pipeD's default events are ES-MNIST, the embedded digits' ODG events: an ANN trained on other
    images (``--data FOLDER``) is not paired with them unless the request names them. ``piped`` is
    refused; the demo skips its pipeD half (as ``--no-events``) and says so in the plan's notes."""
    if request.command not in ("piped", "demo") or ann_trained or cfg.data.name == "mnist5k" \
            or cfg.events.data != "es-mnist" or _states(request, "events.data"):
        return []
    if request.command == "piped":
        raise ConfigError(f"piped trains the ANN on {clip(cfg.data.name)}: name the events of those images with "
                          "--events FOLDER (spikebridge convert odg makes them), or --events es-mnist for the "
                          "embedded digits' events")
    if not options.get("events", True):
        return []
    options["events"] = False
    return [f"pipeD skipped: its events (es-mnist) are the embedded digits', not those of {clip(cfg.data.name)}; "
            "name these with --set events.data=FOLDER (spikebridge convert odg makes them)"]


def _states(request: Request, key: str) -> bool:
    """Whether the request itself (its recipe, a ``--set`` or a flag) gives ``key`` (a dotted name)."""
    if request.flags.get(key) is not None or any(parse_override(text)[0] == key for text in request.overrides):
        return True
    node: Any = read_yaml(request.recipe) if request.recipe is not None else {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_model_reads_data(model: str, data: str, image_size: int) -> None:
    """A registry model that cannot read the data's frames (vgg*_tv's five 2 x 2 max-pools on the
    28 x 28 digits) is refused by the plan (the run refused it once started): one forward on the
    meta device (``ann.check_model_reads``, as ``ann.check_model_fits`` runs it once the data is
    open), at the frame size the layout and file headers tell (:func:`~spikebridge.data.disk.peek_frame`)."""
    from ..data.disk import EVENT_LAYOUT_STEPS, peek_frame
    from ..models import create_model

    if model not in list_models(sequence=False):
        return
    if data in BUILTIN_DATASETS:
        events, (size, channels), key = data == "es-mnist", (28, 2 if data == "es-mnist" else 1), ""
    else:
        try:
            layout, frame = peek_frame(data, image_size)
        except (DataError, OSError):  # the data checks name the problem
            return
        if frame is None:
            return
        events, (size, channels) = layout in EVENT_LAYOUT_STEPS, frame
        key = "events.image_size" if events else "data.image_size"
    shape = (1, 1, channels, size, size) if events else (1, channels, size, size)  # events: [T, B, C, H, W]
    check_model_reads(lambda: create_model(model, num_classes=10, neuron="relu", T=1, in_channels=channels), model,
                      shape, data, resize_key=key)


def _check_dataset(name: str, image_size: int) -> None:
    from ..data.disk import check_dataset

    check_builtin_size(name, image_size)
    if name not in BUILTIN_DATASETS:
        try:
            check_dataset(name)
        except OSError as exc:
            raise DataError(f"dataset {clip(name)!r}: cannot read it ({exc.strerror or exc})") from None


def _benchmark_phases(cfg: PipelineConfig, options: dict, source: AnnSource | None, ann_phase: Phase,
                      data_steps: int | None, snn_model: str) -> list[Phase]:
    from ..analysis.benchmark import parse_methods

    from .benchmark import DEFAULT_METHODS

    given = options.get("methods")
    methods = parse_methods(DEFAULT_METHODS if given is None else given)
    phases: list[Phase] = []
    events = data_steps is not None
    transfers = any(m.transfers for m in methods)
    if events and transfers and source is None and not options.get("ann_data"):
        options["ann_data"] = "mnist5k" if cfg.data.name == "es-mnist" else None
        if options["ann_data"] is None:
            raise ConfigError(f"{clip(cfg.data.name)}: holds events; give the ANN's static images with --ann-data "
                              "(or --ann CKPT)")
    if options.get("ann_data"):
        if event_steps(options["ann_data"]) is not None:
            raise DataError(f"--ann-data {clip(options['ann_data'])!r} holds events; the ANN learns static images")
    if transfers and source is None:
        ann_phase.data = options.get("ann_data") or cfg.data.name
        phases.append(ann_phase)
    finetune, scratch = (cfg.events.finetune, cfg.events.scratch) if events else (cfg.finetune, cfg.scratch)
    T = merged_time_steps(cfg.events.time_bins, data_steps, cfg.data.name) if events else cfg.model.T
    seen: dict[tuple, str] = {}
    default = given in (None, DEFAULT_METHODS)
    for method in list(methods):  # the same SNN under two names (pretrained and pretrained+T4 at T=4)
        same = seen.setdefault((method.base, method.warmup, method.neuron or cfg.neuron.kind, method.T or T), method.name)
        if same != method.name and default:  # the default set on a LIAF recipe: scratch+liaf is scratch
            methods.remove(method)
        elif same != method.name:
            raise ConfigError(f"benchmark methods {same} and {method.name} train the same SNN (T={method.T or T}, "
                              f"{method.neuron or cfg.neuron.kind}); give one of them")
    options["methods"] = ",".join(method.name for method in methods)
    for method in methods:
        if events and method.T and data_steps % method.T:  # its frames are merged into T steps
            raise ConfigError(f"benchmark method {method.name}: T={method.T} must divide the {data_steps} event frames "
                              f"of {clip(cfg.data.name)}")
        train = scratch
        if method.transfers:  # the warm-up ("+wu") freezes the transferred encoder for at least one epoch
            train = replace(finetune, freeze_epochs=max(1, finetune.freeze_epochs) if method.warmup else 0)
        phases.append(Phase(method.name, "scratch" if method.base == "scratch" else "finetune",
                            (cfg.events.model if events else "") or snn_model, method.neuron or cfg.neuron.kind,
                            method.T or T, cfg.data.name, cfg.events.image_size if events else cfg.data.image_size,
                            train))
    return phases


def execute(plan: RunPlan) -> dict:
    """Run a validated plan: claim the output folder (one run at a time; ``--resume`` exact or
    refused), print the plan in short, run the command's flow; returns its summary. A new run that
    fails before it writes any result leaves no file behind."""
    from ..train.runfolder import claim_run_folder
    from .context import holding_run_folder, log

    cfg, options = plan.config, plan.options
    with claim_run_folder(cfg.run.out, command=plan.command, config=plan.settings(), resume=cfg.run.resume,
                          overwrite=bool(options.get("overwrite"))) as folder, holding_run_folder():
        folder.own(*(phase.name for phase in plan.phases))  # each phase's run folder (benchmark methods too)
        for line in plan.describe():
            log(line)
        return _run_flow(plan, plan.loaded_ann)  # the folder is left empty if it fails before any result


def _run_flow(plan: RunPlan, loaded) -> dict:
    from .benchmark import benchmark
    from .runs import demo, finetune, piped, pipes, pretrain

    cfg, options = plan.config, plan.options
    baseline = bool(options.get("baseline"))
    flows = {
        "demo": lambda: demo(cfg, events=options.get("events", True)),
        "pretrain": lambda: pretrain(cfg),
        "finetune": lambda: finetune(cfg, loaded),
        "pipes": lambda: pipes(cfg, baseline=baseline, ann=loaded),
        "piped": lambda: piped(cfg, baseline=baseline, ann=loaded),
        "benchmark": lambda: benchmark(cfg, options.get("methods") or "", ann=loaded,
                                       ann_data=options.get("ann_data")),
    }
    if plan.command not in flows:
        raise ConfigError(f"no run plan for the command {plan.command!r}")
    return flows[plan.command]()


__all__ = ["PRESETS", "Phase", "Request", "RunPlan", "build_plan", "dataset_folder", "event_steps", "execute",
           "resolve_config"]
