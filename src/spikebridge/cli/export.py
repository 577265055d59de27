"""``spikebridge export CKPT --format nir --out FILE.nir [--dt 1e-4]``: a trained SNN as a NIR
graph (see :mod:`spikebridge.export` for the mapping and what cannot be exported).

``--out`` names a file; an existing one is replaced only with ``--overwrite``, and never when it
is one of the checkpoint's own files (its JSON or tensors)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections import Counter
from pathlib import Path


def register(sub, add, common) -> None:
    p = add("export", cmd_export, "write a trained SNN checkpoint as a NIR graph for neuromorphic toolchains",
            example="spikebridge export runs/ft/snn_finetuned/checkpoints/last.json --format nir --out runs/ft/snn.nir",
            flags="model", out_metavar="FILE.nir", out_help="the NIR file to write; an existing file is replaced only "
            "with --overwrite", out_required=True)
    p.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP.format(what="an SNN checkpoint"))
    p.add_argument("--format", default="nir", choices=["nir"], help="output format (default: nir)")
    p.add_argument("--ann", dest="code", help=argparse.SUPPRESS)  # --code's name before 0.1.1: still taken
    p.add_argument("--input-shape", metavar="C,H,W", help="per-sample input shape (default: the shape the checkpoint was trained on, or --data's)")
    p.add_argument("--dt", type=float, default=None, metavar="SECONDS",
                   help="NIR time step per SNN step, stored in the graph (default 1e-4: snnTorch's; give importers the same)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


#: the CKPT argument of evaluate and export (what :func:`spikebridge.restore.locate_checkpoint` takes)
CHECKPOINT_HELP = ("{what}: its .json, its .safetensors tensors file, a run's phase folder (RUN/snn_finetuned) "
                   "or a run folder with one SNN phase")


def _checkpoint_files(ckpt) -> list[Path]:
    """The files a loaded checkpoint was read from: its JSON and its tensors file."""
    files = [Path(ckpt.path)]
    weights = ckpt.record.get("weights") if isinstance(getattr(ckpt, "record", None), dict) else None
    if isinstance(weights, str) and weights:
        files.append(Path(ckpt.path).parent / weights)
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_out_file(out: str, overwrite: bool, protected: list[Path] = ()) -> Path:
    """Refuse ``out`` when it is a folder, an existing file without ``overwrite``, or one of the
    ``protected`` files (whatever ``overwrite`` says)."""
    from ..errors import OutputError

    path = Path(out)
    for keep in protected:
        if path.exists() and _same_file(path, keep):
            raise OutputError(f"--out {str(out)[:100]} is the checkpoint's own file {keep.name}: "
                              "choose another output file")
    if path.is_dir() or str(out).endswith(("/", os.sep)):  # a folder, or one named as a folder (DIR/)
        raise OutputError(f"--out {str(out)[:100]} is a folder; give a file name such as model.nir")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"--out {str(out)[:100]} already exists; choose another file or add --overwrite to replace it")
    return path


@dataclasses.dataclass
class CheckpointInput:
    """The data a checkpoint was trained on (:meth:`~spikebridge.data.loading.DataBundle.input_meta`),
    each field checked: its dataset (a folder's absolute path), image size (0: unknown), frame
    shape ``[C, H, W]``, split seed, event time steps and the images' normalisation (None:
    unknown, a checkpoint from before 0.1.2; normalisation: before 0.1.3, or none recorded)."""

    name: str | None
    image_size: int
    shape: list[int] | None
    split_seed: int | None
    time_steps: int | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def checkpoint_input(meta: dict, where: str) -> CheckpointInput:
    from ..config import MAX_IMAGE_SIZE, MAX_T, check_int
    from ..errors import CheckpointError, short_repr

    def field(key: str, low: int, high: int) -> int | None:
        value = meta.get(key)
        return None if value is None else check_int(f"{where}: checkpoint field meta.{key}", value, low, high,
                                                    error=CheckpointError)

    name = meta.get("data_path") or meta.get("data")
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{where}: checkpoint field meta.data_path must be a path, got {short_repr(name)}")
    shape = meta.get("input_shape")
    if shape is not None:
        if not (isinstance(shape, list) and len(shape) == 3):
            raise CheckpointError(f"{where}: checkpoint field meta.input_shape must be [C, H, W], got {short_repr(shape)}")
        for value in shape:
            check_int(f"{where}: checkpoint field meta.input_shape", value, 1, MAX_IMAGE_SIZE, error=CheckpointError)
    mean, std = meta.get("mean"), meta.get("std")
    if mean is not None or std is not None:
        def channels(values) -> bool:
            return (isinstance(values, list) and 0 < len(values) <= 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))

        if not (channels(mean) and channels(std) and len(mean) == len(std) and all(v > 0 for v in std)):
            raise CheckpointError(f"{where}: checkpoint fields meta.mean and meta.std must be lists of 1-4 numbers "
                                  f"of equal length (std > 0), got {short_repr(mean)} and {short_repr(std)}")
        if shape is not None and len(mean) != shape[0]:  # it was skipped, and the data's own statistics used
            raise CheckpointError(f"{where}: checkpoint fields meta.mean and meta.std hold {len(mean)} values for the "
                                  f"{shape[0]} input channels of meta.input_shape")
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return CheckpointInput(name, field("image_size", 0, MAX_IMAGE_SIZE) or 0, shape, field("split_seed", 0, 2**63 - 1),
                           field("time_steps", 1, MAX_T), mean, std)


def open_checkpoint_data(data_flag: str | None, meta: dict, where: str, *, alternative: str = "",
                         time_steps: int | None = None):
    """``--data``, else the dataset the checkpoint was trained on, read as in training: a folder
    at the checkpoint's image size, the split of its split seed (the same test samples), event
    frames merged to its time steps where they divide the data's. ``time_steps`` (``--T``): event
    frames merged to that many steps instead (ConfigError where it does not divide them)."""
    from ..data.datasets import BUILTIN_DATASETS, open_dataset
    from ..data.loading import step_divisors, with_time_bins
    from ..errors import ConfigError, DataError, clip

    trained = checkpoint_input(meta, where)
    if not data_flag:
        if not trained.name:
            raise ConfigError(f"give --data{alternative} (the checkpoint does not name its dataset)")
        if trained.name not in BUILTIN_DATASETS and not os.path.exists(trained.name):
            raise DataError(f"the checkpoint's dataset {clip(trained.name)} is not there; give --data DIR{alternative}")
    data = data_flag or trained.name
    # frames trained as stored (non-square: the recorded image_size is their shorter side) stay so
    as_stored = trained.shape is not None and trained.shape[1] != trained.shape[2]
    bundle = open_dataset(data, image_size=0 if data in BUILTIN_DATASETS or as_stored else trained.image_size,
                          split_seed=trained.split_seed or 0)
    if trained.mean is not None and bundle.normalises_in_memory and len(trained.mean) == bundle.in_channels:
        # the statistics the model was trained with, not those of --data's own training split
        bundle = dataclasses.replace(bundle, mean=trained.mean, std=trained.std)
    if data_flag and bundle.info.get("resized_from"):  # another sensor than the checkpoint's: said, not hidden
        height, width = bundle.info["resized_from"]
        print(f"note: the event frames of {clip(data)} are {height} x {width}; resized to the checkpoint's "
              f"{trained.image_size} x {trained.image_size} (area average)")
    steps = bundle.time_steps
    if time_steps and steps and steps % time_steps:
        raise ConfigError(f"--T {time_steps}: the {steps} event frames of {clip(bundle.name)} merge into "
                          f"T = {step_divisors(steps)}")
    wanted = time_steps or trained.time_steps
    if wanted and steps and steps != wanted and steps % wanted == 0:
        bundle = with_time_bins(bundle, wanted)
    return bundle


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..export import DT, checked_dt, export_nir
    from ..restore import model_from_checkpoint

    if not args.out:  # --out ""
        raise ConfigError("--out FILE.nir names no file")
    dt = DT if args.dt is None else checked_dt(args.dt, "--dt")  # before the model loads
    check_out_file(args.out, args.overwrite)  # before the (slow) load
    model, meta, ckpt = model_from_checkpoint(args.checkpoint, T=args.T, code=args.code, trust_code=args.trust_code,
                                              code_flag="--code")
    check_out_file(args.out, args.overwrite, _checkpoint_files(ckpt))
    trained = checkpoint_input(meta, args.checkpoint)  # its input shape, T and normalisation, where recorded
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
            if min(shape) < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--input-shape must be positive integers like 1,28,28, got {args.input_shape[:100]!r}") from None
    elif not args.data and trained.shape:
        shape = tuple(trained.shape)
    else:
        shape = tuple(open_checkpoint_data(args.data, meta, args.checkpoint, alternative=" or --input-shape C,H,W")
                      .first_sample().shape[-3:])
    scaled = {"input_mean": list(trained.mean), "input_std": list(trained.std)} if trained.mean is not None else {}
    if trained.time_steps:  # an event SNN reads a frame per step (T of them, --T's), not one image at every step
        scaled["readout"] = (f"feed one event frame per step ({getattr(model, 'T', trained.time_steps)} frames); the "
                             "prediction is the output averaged over the steps")
    graph = export_nir(model, shape, args.out, dt=dt, metadata=scaled)
    kinds = Counter(type(node).__name__ for node in graph.nodes.values())
    print(f"wrote {args.out}: {len(graph.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
          f"{len(graph.edges)} edges; input {list(shape)}, T={getattr(model, 'T', 1)} steps, dt={dt:g}")
    if trained.mean is not None:
        print(f"the graph reads normalised images, (pixel / 255 - mean) / std per channel: mean "
              f"{[round(v, 4) for v in trained.mean]}, std {[round(v, 4) for v in trained.std]} (in its metadata "
              "as input_mean, input_std)")
    return 0
