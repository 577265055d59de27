"""``spikebridge export CKPT --format nir --out FILE.nir``: a trained SNN as a NIR graph
(see :mod:`spikebridge.export` for the mapping)."""
from __future__ import annotations

import argparse


def register(sub, add, common) -> None:
    p = add("export", cmd_export, "write a trained SNN checkpoint as a NIR graph for neuromorphic toolchains",
            example="spikebridge export runs/ft/snn_finetuned/checkpoints/last.json --format nir --out runs/ft/snn.nir",
            flags="model")
    p.add_argument("checkpoint", metavar="CKPT", help="an SNN checkpoint (.json)")
    p.add_argument("--format", default="nir", choices=["nir"], help="output format (default: nir)")
    p.add_argument("--input-shape", metavar="C,H,W", help="per-sample input shape (default: from --data or the checkpoint's dataset)")


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..export import export_nir
    from ..restore import model_from_checkpoint

    if not args.out:
        raise ConfigError("--out FILE.nir is required")
    model, meta, _ckpt = model_from_checkpoint(args.checkpoint, T=args.T)
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape must look like 1,28,28, got {args.input_shape!r}") from None
    else:
        from ..data.datasets import open_dataset

        data_name = args.data or meta.get("data")
        if not data_name:
            raise ConfigError("give --input-shape C,H,W or --data (the checkpoint does not name its dataset)")
        bundle = open_dataset(data_name)
        sample = bundle.test.images[0] if hasattr(bundle.test, "images") else bundle.test[0][0]
        shape = tuple(sample.shape[-3:])
    graph = export_nir(model, shape, args.out)
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    print(f"wrote {args.out}: {len(graph.nodes)} nodes ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
          f"{len(graph.edges)} edges; input {list(shape)}, T={getattr(model, 'T', 1)} steps, dt=1")
    return 0
