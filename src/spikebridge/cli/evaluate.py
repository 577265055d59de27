"""``spikebridge evaluate CKPT --data ...``: accuracy, latency, activity and energy of a checkpoint.

Writes ``OUT/evaluation.json`` and ``OUT/evaluation.md`` with: top-1/top-5 on the test split; for
an SNN also the accuracy at every T from 1 to ``--T-max`` with the same weights, per-layer firing
rates, synaptic operations per sample against the ANN's MACs, energy estimates and the paper's
FP32 add/mult table (definitions: :mod:`spikebridge.analysis.metrics`); figures
``accuracy_vs_T.png`` (with classic conversion of ``--ann`` when given), ``firing_rates.png``,
``spike_raster.png`` and, for event data, ``event_frames.png``.

At any scale: every pass streams the test split one batch at a time (nothing holds the split);
top-1/top-5 use the whole split, the activity and accuracy-vs-T passes a seeded subset of
``--samples`` (default :data:`DEFAULT_SAMPLES`; 0 = the whole split). Each pass shows a progress
bar on stderr (``--no-progress`` turns them off).
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import replace
from pathlib import Path

#: Test samples for the activity and accuracy-vs-T passes by default: the whole of MNIST's and
#: CIFAR's test splits, a fifth of ImageNet's validation split (0 = the whole split).
DEFAULT_SAMPLES = 10000


def register(sub, add, common) -> None:
    from .export import CHECKPOINT_HELP

    p = add("evaluate", cmd_evaluate, "accuracy at every T, firing rates, SOPs vs MACs and energy of a checkpoint",
            example="spikebridge evaluate runs/ft/snn_finetuned/checkpoints/last.json --data mnist5k", flags="model",
            out_metavar="DIR", out_help="folder for evaluation.json, evaluation.md and the figures (default: an 'evaluation' folder "
            "beside the checkpoint's .json, e.g. RUN/snn_finetuned/checkpoints/evaluation)")
    p.add_argument("--model", help="refuse a checkpoint of another registry model")
    p.add_argument("--seed", type=int, help="seed of the --samples subset")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP.format(what="a spikebridge checkpoint"))
    p.add_argument("--T-max", dest="t_max", type=int, help="evaluate T = 1..T_MAX (default: 2x the model's T, at least 8)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help="test samples (a seeded subset) for the activity and accuracy-vs-T passes; 0 = the whole test split; "
                        "top-1/top-5 always use the whole split (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ann", metavar="CKPT|MODEL|FILE.py:ClassName",
                   help="the ANN (a checkpoint, a registry model or your class with --ann-weights; the class also "
                        "serves as --code): add classic conversion of it to the accuracy-vs-T plot")
    p.add_argument("--ann-weights", metavar="W.pth|W.safetensors", help="weights for --ann MODEL or FILE.py:ClassName")
    p.add_argument("--ann-kwargs", metavar="JSON", help="constructor arguments for --ann FILE.py:ClassName")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.summary import write_json
    from ..errors import CheckpointError, ConfigError, clip
    from ..pipelines.ann import ann_output
    from ..pipelines.context import resolve_device
    from ..restore import is_python_class_spec, model_from_checkpoint
    from ..train.runfolder import EVALUATION_FOLDER
    from ..utils import atomic_write_text, ensure_dir
    from .export import open_checkpoint_data

    if args.ann is not None and not args.ann.strip():  # --ann '' (an unset shell variable): refused, not ignored
        from ..pipelines.ann import ann_source_from_flags

        ann_source_from_flags(args.ann, None, None)  # its one-line error
    if args.t_max is not None and args.t_max < 1:
        raise ConfigError(f"--T-max must be >= 1, got {args.t_max}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be >= 0, got {args.samples}")
    device = resolve_device(args.device or "auto")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    ann_class = not args.code and args.ann and is_python_class_spec(args.ann)  # --ann's class is the code too
    model, meta, ckpt = model_from_checkpoint(args.checkpoint, T=args.T, code=args.ann if ann_class else args.code,
                                              trust_code=args.trust_code, code_flag="--ann" if ann_class else "--code")
    info = meta.get("model", {})
    if args.model and args.model != info.get("name"):
        raise CheckpointError(f"{args.checkpoint}: a checkpoint of {info.get('name')!r}, not of --model {args.model!r}")
    if args.T and not getattr(model, "spiking", False):  # it was accepted, and the report said T 1
        raise ConfigError(f"--T {args.T}: the checkpoint is an ANN, which has no time steps; drop --T")
    bundle = open_checkpoint_data(args.data, meta, args.checkpoint, time_steps=args.T)
    if int(info.get("num_classes", bundle.num_classes)) != bundle.num_classes:
        raise CheckpointError(f"{args.checkpoint}: the model has {info.get('num_classes')} classes, {bundle.name} has {bundle.num_classes}")
    if int(info.get("in_channels", bundle.in_channels)) != bundle.in_channels:
        raise CheckpointError(f"{args.checkpoint}: the model takes {info.get('in_channels')} input channels, {bundle.name} has {bundle.in_channels}")
    spiking = bool(getattr(model, "spiking", False))
    if args.ann and spiking and bundle.kind == "events":
        raise ConfigError(f"--ann: {clip(bundle.name)} holds events, and the ANN reads static images (pipeD's ANN "
                          "learnt them): the comparison with the ANN needs the SNN's static data; drop --ann here")
    ann = load_ann(args) if args.ann and spiking else None
    if ann is not None and getattr(ann, "spiking", False):
        raise CheckpointError(f"--ann {args.ann}: an SNN checkpoint; give the ANN's")
    if ann is not None:  # classic conversion of it is scored on this data's labels
        outputs = ann_output(ann, bundle.first_sample().unsqueeze(0).float(), args.ann, bundle.name).shape[-1]
        if outputs != bundle.num_classes:
            raise CheckpointError(f"--ann {args.ann}: the ANN has {outputs} outputs, {bundle.name} {bundle.num_classes} "
                                  "classes: its conversion cannot be scored here; drop --ann")
    out = Path(args.out) if args.out else Path(ckpt.path).parent / EVALUATION_FOLDER
    created = next((p for p in reversed([out, *out.parents]) if not os.path.lexists(p)), None)  # the top folder made here
    try:
        ensure_dir(out)  # a file in the way / no permission: OutputError (exit 2)
        result, activity = evaluate_model(model, bundle, out, samples=args.samples, seed=args.seed or 0,
                                          t_max=args.t_max, device=device, progress=not args.no_progress, ann=ann)
        result = {"checkpoint": str(ckpt.path), "model": info, "neuron": meta.get("neuron"), **result}
        write_json(out / "evaluation.json", result)
        atomic_write_text(out / "evaluation.md", render_evaluation(result, activity.to_markdown()))
    except BaseException:
        if created is not None:  # no folder of half an evaluation left behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    print(f"top-1 {result['top1']:.4f}" + (f", top-5 {result['top5']:.4f}" if result.get("top5") is not None else "")
          + (f"; mean firing rate {activity.mean_firing_rate:.4f}; SOPs/sample {activity.sops:,.0f}"
             + (f" + analog MACs {activity.snn_macs:,.0f}" if activity.snn_macs else "")
             + f" vs ANN MACs {activity.ann_macs:,.0f}" if spiking else "")
          + f"; wrote {out / 'evaluation.md'}")
    return 0


def evaluate_model(model, bundle, out: Path, *, samples: int = DEFAULT_SAMPLES, seed: int = 0, t_max: int | None = None,
                   device="cpu", progress: bool = True, ann=None):
    """The passes of ``spikebridge evaluate`` on ``bundle``'s test split, streamed batch by batch:
    top-1/top-5 on the whole split, then on a seeded subset of ``samples`` (0 = all) the activity
    and, for an SNN, the accuracy at T = 1..``t_max`` (and classic conversion of ``ann``); figures
    go to ``out``. Returns ``(result dict, ActivityReport)``."""
    from ..analysis.figures import plot_accuracy_vs_T, plot_event_frames, plot_firing_rates, plot_spike_raster, record_spikes
    from ..analysis.metrics import measure_activity
    from ..conversion import accuracy_curve, conversion_accuracy_curve, test_subset
    from ..data.loading import iterate_batches
    from ..train.engine import evaluate

    model.to(device).eval()
    spiking = bool(getattr(model, "spiking", False))
    topk = (1, 5) if bundle.num_classes >= 5 else (1,)
    subset = test_subset(bundle, samples, seed) if samples and samples < len(bundle.test) else bundle
    with _bar("evaluate: top-1", len(bundle.test), progress) as bar:
        scores = evaluate(model, replace(bundle, progress=bar.update), device=device, topk=topk)
    result: dict = {
        "data": bundle.name, "spiking": spiking,
        "T": (int(getattr(model, "T", 1)) if bundle.kind == "static" else bundle.time_steps) if spiking else None,
        "top1": scores["top1"], "top5": scores.get("top5"), "test_loss": scores["loss"], "test_samples": len(bundle.test),
        "curve_samples": len(subset.test),
    }
    first: list = []  # the first batch, for the spike raster and the event-frame figure

    def activity_batches():
        with _bar("evaluate: activity", len(subset.test), progress) as bar:
            for x, _y in iterate_batches(replace(subset, progress=bar.update), subset.test, 250, train=False):
                if not first:
                    first.append(x)
                yield x

    activity = measure_activity(model, activity_batches(), device=device)
    result["activity"] = activity.to_dict()
    figures = {}
    if spiking:
        trained_T = result["T"] or 1
        asked, t_max = t_max, t_max or max(8, 2 * trained_T)
        if bundle.kind == "events" and bundle.time_steps and t_max > bundle.time_steps:
            t_max = bundle.time_steps
            if asked:
                print(f"--T-max {asked}: the event frames are merged into {t_max} time steps (the checkpoint's T, or --T); "
                      f"accuracy vs T runs T = 1..{t_max}")
        T_values = list(range(1, t_max + 1))
        with _bar(f"accuracy vs T (T=1..{t_max})", len(subset.test), progress) as bar:
            curve = accuracy_curve(model, replace(subset, progress=bar.update), T_values, device=device)
        result["accuracy_vs_T"] = [[t, a] for t, a in curve]
        curves = {f"this SNN (trained at T={trained_T})": curve}
        if ann is not None:
            with _bar(f"conversion accuracy vs T (T=1..{t_max})", len(subset.test), progress) as bar:
                conversion = conversion_accuracy_curve(ann.to(device).eval(), replace(subset, progress=bar.update),
                                                       T_values, device=device)
            result["conversion_accuracy_vs_T"] = [[t, a] for t, a in conversion]
            curves["ANN->SNN conversion of --ann (IF, soft reset, p99.9)"] = conversion
        figures["accuracy_vs_T"] = plot_accuracy_vs_T(curves, out / "accuracy_vs_T.png",
                                                      title=f"Accuracy vs time steps ({bundle.name})",
                                                      marks={f"this SNN (trained at T={trained_T})": trained_T})
        rates = [(n["name"], n["firing_rate"]) for n in result["activity"]["neuron_layers"]]
        figures["firing_rates"] = plot_firing_rates(rates, out / "firing_rates.png",
                                                    title=f"Firing rate per layer (T={activity.time_steps}, {activity.samples} samples)")
        layer, spikes = record_spikes(model, first[0].to(device))
        figures["spike_raster"] = plot_spike_raster(spikes, out / "spike_raster.png",
                                                    title=f"Spikes of {spikes.shape[1]} neurons of '{layer}' for one test sample")
    if bundle.kind == "events":
        figures["event_frames"] = plot_event_frames(first[0][:, 0], out / "event_frames.png",
                                                    title=f"Event frames of one {bundle.name} test sample")
    result["figures"] = {k: str(Path(v).name) for k, v in figures.items()}
    return result, activity


def _bar(desc: str, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False, dynamic_ncols=True)


def load_ann(args: argparse.Namespace):
    """``--ann``, as the training commands read it: a spikebridge checkpoint, a registry model with
    ``--ann-weights``, or ``FILE.py:ClassName`` with ``--ann-weights``."""
    from ..errors import ConfigError
    from ..pipelines.ann import ann_source_from_flags
    from ..pipelines.ann import load_ann as load_source
    from ..restore import is_python_class_spec

    if is_python_class_spec(args.ann) and not args.ann_weights:
        raise ConfigError("--ann FILE.py:ClassName needs --ann-weights W.pth|W.safetensors (the trained ANN to "
                          "convert); to name only the checkpoint's class, use --code FILE.py:ClassName")
    source = ann_source_from_flags(args.ann, args.ann_weights, args.ann_kwargs, weights_required=True,
                                   trust_code=args.trust_code)
    return load_source(source).model


def render_evaluation(result: dict, activity_md: str) -> str:
    lines = [f"# Evaluation of `{result['checkpoint']}`", "",
             f"Model {result['model'].get('name')} on {result['data']} ({result['test_samples']} test samples), "
             f"{'SNN, T=' + str(result['T']) if result['spiking'] else 'ANN'}.", "",
             f"- top-1: {result['top1']:.4f}"]
    if result.get("top5") is not None:
        lines.append(f"- top-5: {result['top5']:.4f}")
    if result.get("accuracy_vs_T"):
        subset = result.get("curve_samples", result["test_samples"])
        on = "the whole test split" if subset >= result["test_samples"] else \
            f"a seeded subset of {subset} test samples (--samples; top-1 above is the whole split's)"
        lines += ["", "## Accuracy at every T (same weights)", "", f"On {on}.", "",
                  "| T | accuracy |" + (" conversion |" if result.get("conversion_accuracy_vs_T") else ""),
                  "|---:|---:|" + ("---:|" if result.get("conversion_accuracy_vs_T") else "")]
        conversion = dict((t, a) for t, a in result.get("conversion_accuracy_vs_T") or [])
        for t, a in result["accuracy_vs_T"]:
            lines.append(f"| {t} | {a:.4f} |" + (f" {conversion[t]:.4f} |" if t in conversion else ""))
    lines += ["", "## Activity, operations and energy", "", activity_md]
    for key, name in result.get("figures", {}).items():
        lines += [f"![{key.replace('_', ' ')}]({name})", ""]
    return "\n".join(lines) + "\n"
