"""``spikebridge inspect PATH [--json] [--out DIR]``: what spikebridge reads from a recording
(events, ON / OFF, sensor, time range) or a dataset (layout, classes, split sizes, sample shape),
before anyone trains on it (:mod:`spikebridge.data.inspect`). ``--out DIR`` adds a picture of one
sample: its ON / OFF events over a few time bins, or the image."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLE = "spikebridge inspect data/NMNIST/Test/3/00017.bin --out figs"


def register(sub, add, common) -> None:
    p = add("inspect", cmd_inspect, "show what spikebridge reads from a recording or dataset (events, classes, splits, "
            "sample shape)", example=EXAMPLE, flags="")
    p.add_argument("path", metavar="PATH", help="a recording (.bin .aedat .aedat4 .npy .npz), a video clip folder, "
                   "a dataset folder, or mnist5k / es-mnist")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", metavar="DIR", help="also draw one sample as DIR/inspect_<name>.png")


def table(info: dict) -> str:
    """``info`` as aligned ``key  value`` lines (long class lists shortened)."""
    def text(key, value) -> str:
        if key == "classes" and len(value) > 10:
            return f"{', '.join(value[:10])}, ... ({len(value)} classes)"
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in value.items())
        if key == "t_range" and value:
            return f"{value[0]} .. {value[1]}"
        if isinstance(value, list):
            return " x ".join(map(str, value)) if key in ("sensor_size", "frame_size", "sample_shape") else \
                ", ".join(map(str, value))
        return "-" if value is None else str(value)

    width = max(map(len, info))
    return "\n".join(f"{key:<{width}}  {text(key, value)}" for key, value in info.items())


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_path

    info, preview = inspect_path(args.path, preview=bool(args.out))
    picture = None
    if preview is not None:
        from ..analysis.figures import plot_event_frames, plot_images

        picture = Path(args.out) / f"inspect_{Path(args.path).name.split('.')[0] or 'sample'}.png"
        for skipped in preview.skipped:
            print(f"skipped an unreadable sample: {skipped}", file=sys.stderr)
        draw = plot_event_frames if preview.kind == "events" else plot_images
        draw(preview.data, picture, title=preview.title)
    print(json.dumps(info) if args.json else table(info))
    if picture is not None:
        print(f"wrote {picture}", file=sys.stderr if args.json else sys.stdout)
    return 0
