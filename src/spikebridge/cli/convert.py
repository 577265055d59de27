"""``spikebridge convert odg|video|edge-integral``: image folders -> ES-ImageNet (ODG), video clip
folders -> ES-UCF101, and ES-ImageNet -> the self-pretrain edge-integral images of arXiv:2203.01158
(:mod:`spikebridge.data.convert`: resumable; ``--out`` must be new, empty or an earlier output of the
same conversion unless ``--overwrite``). Prints one paragraph: converted / already done / dropped for
too few events / unreadable.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..data.odg import ES_IMAGENET_SIZE, ES_IMAGENET_WINDOW
from ..errors import DataError
from ..utils import counted

ODG_EXAMPLE = "spikebridge convert odg --input /data/imagenet/train --out /data/es-imagenet/train --workers 8"
VIDEO_EXAMPLE = "spikebridge convert video --input /data/ucf101/jpegs_256 --out /data/es-ucf101 --workers 8"
EDGE_EXAMPLE = "spikebridge convert edge-integral --input /data/es-imagenet --out /data/es-imagenet-edge --workers 8"


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _check_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """The folders; nesting and a foreign ``--out`` are refused by the converter itself."""
    source, out = Path(args.input), Path(args.out)
    if not source.is_dir():
        raise DataError(f"{source}: input folder not found")
    return source, out


def _listing(items: list[tuple[str, object]], limit: int = 3) -> str:
    shown = "; ".join(f"{path} ({detail})" for path, detail in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _finish(report, text: str, nothing_written: str) -> int:
    """Print ``text`` and the sentences on partial files removed, samples dropped and unreadable
    inputs, if any; :class:`DataError` ``nothing_written`` when no sample was written."""
    if report.stale_temp_removed:
        text += f" Removed {report.stale_temp_removed} partial files an interrupted conversion left."
    if report.dropped:
        text += " Dropped: " + _listing([(p, f"{n} events") for p, n in report.dropped]) + "."
    if report.failed:
        text += " Unreadable: " + _listing([(p, " ".join(str(m).split())[:120]) for p, m in report.failed]) + "."
    print(text)
    if report.written == 0:
        raise DataError(nothing_written)
    return 0


def _finish_dataset(report, unit: str) -> int:
    """:func:`_finish` of a converted dataset (``odg``, ``video``: class folders and ``labels.txt``)."""
    text = (f"Converted {counted(report.converted, unit)}, skipped {report.reused} already done, dropped "
            f"{len(report.dropped)} with too few events, {len(report.failed)} unreadable")
    if report.skipped:
        text += f", ignored {counted(len(report.skipped), 'entry', 'entries')} (not {unit}s)"
    text += (f" ({counted(report.total, unit)} in {counted(len(report.classes), 'class', 'classes')}, "
             f"{report.elapsed_s:.1f} s). "
             f"{counted(report.written, 'sample')} {'is' if report.written == 1 else 'are'} listed in {report.label_file}.")
    return _finish(report, text, f"no {unit} of {report.out_dir} could be converted ({report.total} found, "
                                 f"{len(report.dropped)} dropped, {len(report.failed)} unreadable)")


def cmd_convert_odg(args: argparse.Namespace) -> int:
    from ..data.convert import convert_image_folder_odg

    source, out = _check_folders(args)
    odg_kwargs = {"size": args.size, "threshold": args.threshold, "min_events": args.min_events}
    if args.window is not None:
        odg_kwargs["window"] = tuple(args.window)
    elif args.size != ES_IMAGENET_SIZE:  # ES-ImageNet's window, 16..240 of 254, kept in proportion to --size
        odg_kwargs["window"] = tuple(round(edge * args.size / ES_IMAGENET_SIZE) for edge in ES_IMAGENET_WINDOW)
    report = convert_image_folder_odg(source, out, workers=args.workers, odg_kwargs=odg_kwargs,
                                      progress=not args.no_progress, overwrite=args.overwrite)
    return _finish_dataset(report, "image")


def cmd_convert_video(args: argparse.Namespace) -> int:
    from ..data.convert import convert_video_folder

    source, out = _check_folders(args)
    video_kwargs = {"mode": args.mode, "n_frames": args.frames, "seed": args.seed}
    report = convert_video_folder(source, out, workers=args.workers, video_kwargs=video_kwargs,
                                  progress=not args.no_progress, overwrite=args.overwrite)
    return _finish_dataset(report, "clip")


def cmd_convert_edge_integral(args: argparse.Namespace) -> int:
    from ..data.convert import convert_es_to_edge_integral

    source, out = _check_folders(args)
    report = convert_es_to_edge_integral(source, out, workers=args.workers, progress=not args.no_progress,
                                         overwrite=args.overwrite)
    text = (f"Converted {counted(report.converted, 'sample')} to edge-integral images, skipped {report.reused} "
            f"already done, {len(report.failed)} unreadable ({counted(report.total, 'sample')} in "
            f"{counted(len(report.classes), 'class', 'classes')}, "
            f"{report.elapsed_s:.1f} s). Image folders: {out / 'train'} and {out / 'val'}.")
    return _finish(report, text, f"no sample of {source} could be converted ({report.total} listed, "
                                 f"{len(report.failed)} unreadable)")


def _leaf(kinds, name: str, func: Callable[[argparse.Namespace], int], help_text: str, example: str,
          input_help: str, out_help: str = "output folder (class folders of .npz + labels.txt)") -> argparse.ArgumentParser:
    p = kinds.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--input", required=True, metavar="DIR", help=input_help)
    p.add_argument("--out", required=True, metavar="DIR", help=out_help)
    p.add_argument("--workers", type=_non_negative_int, default=1, metavar="N",
                   help="worker processes, up to 256 (0 or 1: convert in this process; default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="convert everything again: needed to change the parameters of an earlier output folder, "
                        "or to write into a non-empty folder that is not one (same-named files are replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def register(sub, add, common) -> None:
    """Add ``convert`` with its ``odg`` / ``video`` / ``edge-integral`` sub-commands (no training flags: see the module)."""
    parser = sub.add_parser(
        "convert", help="make event datasets: image folder -> ES-ImageNet (odg), clip folders -> ES-UCF101 (video), "
                        "ES-ImageNet -> self-pretrain images (edge-integral)",
        description="Make event datasets. Resumable: rerun the same command after an interruption.",
        epilog=f"examples:\n  {ODG_EXAMPLE}\n  {VIDEO_EXAMPLE}\n  {EDGE_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    kinds = parser.add_subparsers(dest="convert_kind", metavar="KIND", parser_class=type(parser))
    kinds.required = True

    p = _leaf(kinds, "odg", cmd_convert_odg, "static images -> ES-ImageNet events with ODG (arXiv:2203.01158)",
              ODG_EXAMPLE, "ImageNet-layout folder: DIR/<class>/<image> (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)")
    p.add_argument("--threshold", type=float, default=0.18,
                   help="ODG intensity-change threshold, a finite number >= 0 (default: %(default)s)")
    p.add_argument("--size", type=int, default=ES_IMAGENET_SIZE,
                   help="resized length of the longer image side, 1..4096 (default: %(default)s)")
    p.add_argument("--min-events", type=_non_negative_int, default=1000, metavar="N",
                   help="drop samples with fewer events (default: %(default)s)")
    p.add_argument("--window", type=int, nargs=2, metavar=("LO", "HI"),
                   help="keep events with LO < row, col < HI on the (size+4) canvas (default: 16 240 at --size 254, "
                        "in proportion at another size: 4 60 at 64)")

    p = _leaf(kinds, "video", cmd_convert_video, "video clips (folders of frames) -> ES-UCF101 events",
              VIDEO_EXAMPLE, "UCF101 jpegs_256-style folder: DIR/<class>/<clip>/<frame images>")
    p.add_argument("--mode", choices=["percentile", "random"], default="percentile",
                   help="per-clip percentile thresholds, or per-pixel random thresholds (default: %(default)s)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                   help="seed of --mode random (each clip: seed + its path; default: %(default)s)")
    p.add_argument("--frames", type=int, default=31, metavar="N",
                   help="frames sampled evenly per clip, 2..1000; N-1 event steps (default: %(default)s)")

    _leaf(kinds, "edge-integral", cmd_convert_edge_integral,
          "ES-ImageNet events -> grey edge-integral images for a self-pretrained ANN (arXiv:2203.01158)",
          EDGE_EXAMPLE, "ES-ImageNet root: trainlabel.txt + vallabel.txt (released) or train/labels.txt + val/labels.txt",
          "output folder: train/<class>/*.png and val/<class>/*.png (an ImageNet-layout image folder; <class>: the "
          "source's class folder names, or the zero-padded label where it has none in label order)")
