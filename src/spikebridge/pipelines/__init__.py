"""Pipelines: the run plan and the flows it runs (pipeS, pipeD, the demo, pretrain, finetune, the
benchmark), each written once for every ANN source and every command."""
from .ann import (
    AnnSource,
    LoadedAnn,
    ann_source_from_flags,
    bridge_to_snn,
    build_model,
    load_ann,
    model_meta,
)
from .benchmark import DEFAULT_METHODS, benchmark
from .context import RunContext, resolve_device
from .plan import PRESETS, Phase, Request, RunPlan, build_plan, execute
from .runs import demo, events_config, finetune, open_events, open_static, piped, pipes, pretrain, start_run

__all__ = [
    "DEFAULT_METHODS", "PRESETS", "AnnSource", "LoadedAnn", "Phase", "Request", "RunContext", "RunPlan",
    "ann_source_from_flags", "benchmark", "bridge_to_snn", "build_model", "build_plan", "demo", "events_config",
    "execute", "finetune", "load_ann", "model_meta", "open_events", "open_static", "piped", "pipes", "pretrain",
    "resolve_device", "start_run",
]
