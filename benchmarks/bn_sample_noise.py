"""How much a trained SNN's test accuracy depends on which samples precise BN re-estimates its
BatchNorm statistics from (``finetune.precise_bn``: N seeded random training samples after every
epoch, before the evaluation).

For each seed, the checkpoint's statistics are re-estimated from N training samples drawn with
that seed (the training loop draws them with seed ``run.seed * 7919 + epoch``), then the test set
is evaluated; then once from the whole training set. The spread over the seeds is the evaluation
noise that precise BN adds to every epoch's accuracy, on the same weights.

    python benchmarks/bn_sample_noise.py runs/piped/snn_events_pretrained/checkpoints/last.json \
        --data es-mnist --samples 1024 --seeds 3 4 5 6 7
"""
from __future__ import annotations

import argparse

import torch

import spikebridge as sb
from spikebridge.data.datasets import open_dataset
from spikebridge.data.loading import with_time_bins
from spikebridge.train.engine import evaluate, precise_batchnorm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a spikebridge SNN checkpoint (.json)")
    parser.add_argument("--data", default="es-mnist", help="mnist5k | es-mnist | a dataset folder")
    parser.add_argument("--samples", type=int, default=1024, help="precise BN's sample count")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = sb.load_model(args.checkpoint)
    bundle = open_dataset(args.data)
    if bundle.kind == "events":
        bundle = with_time_bins(bundle, model.T)
    print(f"as saved: test acc {evaluate(model, bundle)['acc']:.4f}")
    accs = []
    for seed in args.seeds:
        model = sb.load_model(args.checkpoint)
        precise_batchnorm(model, bundle, args.samples, seed=seed)
        accs.append(evaluate(model, bundle)["acc"])
        print(f"precise BN on {args.samples} samples, seed {seed}: test acc {accs[-1]:.4f}")
    model = sb.load_model(args.checkpoint)
    precise_batchnorm(model, bundle, len(bundle.train), seed=0)
    print(f"precise BN on all {len(bundle.train)} training samples: test acc {evaluate(model, bundle)['acc']:.4f}")
    print(f"spread over {len(accs)} draws of {args.samples}: {min(accs):.4f} .. {max(accs):.4f}")


if __name__ == "__main__":
    main()
