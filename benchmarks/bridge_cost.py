"""The bridge's calibration cost: the plain per-layer firing-rate matching (every bisection step a
full forward of the SNN) against the cached form (each step runs only the unit it changes), and
both against a fine-tune epoch of the same SNN.

What is timed is what ``bridge_to_snn`` runs after the transfer for pipeS: BatchNorm
re-calibration on spiking activity, then ``match_firing_rates`` (``bridge.calibration_iterations``
= 8 bisection steps per layer, LIF, T=4). The ANN is the same model with the sharpened ReLU at the
end of its schedule, its BatchNorm affine parameters drawn at random (a trained-looking ANN); the
calibration images are smooth random images (blurred Gaussian noise, per-image contrast), in
batches of up to 256 like ``bridge.calibration_batch_size``. The reference is quadratic in depth
and slow (VGG-11 at 32x32: about 13 minutes at the default 512 samples on one core), so it runs
on ``--reference-samples`` samples (the new form too, for the like-for-like ratio; both costs are
linear in the sample count), and the new form alone on ``--samples``. The result of both is
checked to be identical (rate errors, biases, BN statistics).

The fine-tune epoch: SGD steps (momentum 0.9) of the SNN on batches of ``--train-batch`` samples
at T=4, timed per sample; ``epoch = per-sample time x --epoch-samples``. "break-even" is the
training-set size at which one epoch costs as much as the bridge on 512 samples (the pipelines'
default: 2 batches of 256), extrapolated linearly from ``--samples``.

    python benchmarks/bridge_cost.py --models vgg11 resnet18 --sizes 32 64
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the plain reference

import spikebridge as sb  # noqa: E402
from _model_reference import match_firing_rates_reference  # noqa: E402
from spikebridge.bridge import match_firing_rates, recalibrate_batchnorm  # noqa: E402
from common import environment, publish_table, set_threads  # noqa: E402


def models(name: str, T: int):
    torch.manual_seed(0)
    ann = sb.create_model(name, neuron=sb.NeuronConfig("sharpened_relu", sharpen_epochs=4))
    with torch.no_grad():
        for module in ann.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    ann.set_epoch(4)
    snn = sb.create_model(name, neuron="lif", T=T)
    sb.transfer(ann, snn)
    return ann, snn


def images(samples: int, size: int, batch: int = 256) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(samples, 3, size, size, generator=generator)
    smooth = F.avg_pool2d(noise, 5, stride=1, padding=2) * 3  # neighbouring pixels correlate
    smooth = smooth * torch.rand(samples, 1, 1, 1, generator=generator).add(0.5)
    return list(smooth.split(batch))


def bridge(calibrate, ann, snn, batches, iterations: int) -> tuple[float, dict]:
    start = time.perf_counter()
    recalibrate_batchnorm(snn, batches)
    errors = calibrate(ann, snn, batches, iterations=iterations)
    return time.perf_counter() - start, errors


def train_seconds_per_sample(snn, size: int, batch: int, steps: int) -> float:
    snn.train()
    optimizer = torch.optim.SGD(snn.parameters(), lr=0.01, momentum=0.9)
    x = images(batch, size)[0]
    y = torch.randint(0, 10, (batch,))
    times = []
    for step in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(snn(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2] / batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg11", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=8, help="bisection steps (bridge.calibration_iterations)")
    parser.add_argument("--samples", type=int, default=128, help="calibration samples for the new form")
    parser.add_argument("--reference-samples", type=int, default=32, help="samples for reference vs new")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--epoch-samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="bridge_cost")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    env = environment()
    rows, records = [], []
    for name in args.models:
        for size in args.sizes:
            ann, snn = models(name, args.T)
            few = images(args.reference_samples, size)
            plain = copy.deepcopy(snn)
            ref_s, ref_errors = bridge(match_firing_rates_reference, ann, plain, few, args.iterations)
            fast = copy.deepcopy(snn)
            new_s, new_errors = bridge(lambda *a, **k: match_firing_rates(*a, progress=False, **k),
                                       ann, fast, few, args.iterations)
            same = new_errors == ref_errors and all(
                torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
            full_s, _ = bridge(lambda *a, **k: match_firing_rates(*a, progress=False, **k),
                               ann, copy.deepcopy(snn), images(args.samples, size), args.iterations)
            per_sample = train_seconds_per_sample(copy.deepcopy(snn), size, args.train_batch, args.train_steps)
            epoch_s = per_sample * args.epoch_samples
            record = {"model": name, "size": size, "T": args.T, "iterations": args.iterations,
                      "reference_samples": args.reference_samples, "reference_s": ref_s, "new_s": new_s,
                      "identical": same, "samples": args.samples, "new_full_s": full_s,
                      "new_512_s_extrapolated": full_s * 512 / args.samples,
                      "train_s_per_sample": per_sample, "epoch_samples": args.epoch_samples, "epoch_s": epoch_s,
                      "layers": len(new_errors)}
            records.append(record)
            rows.append([name, f"{size}x{size}", len(new_errors), args.reference_samples, f"{ref_s:.1f}",
                         f"{new_s:.1f}", f"{ref_s / new_s:.1f}x", "yes" if same else "NO",
                         f"{full_s:.1f} ({args.samples})", f"{full_s * 512 / args.samples:.0f}",
                         f"{per_sample * 1e3:.1f}", f"{epoch_s:.0f}",
                         f"{full_s * 512 / args.samples / per_sample:.0f}"])
            print(rows[-1], flush=True)
    header = ["model", "input", "layers", "samples", "reference s", "new s", "speed-up", "identical",
              "new s (samples)", "new s at 512 (linear)", "train ms/sample", f"epoch s ({args.epoch_samples})",
              "break-even epoch (samples, bridge at 512)"]
    publish_table(args.name, f"Bridge calibration cost, T={args.T}, {args.iterations} bisection steps", env,
                  header, rows, records)
    return 0 if all(r["identical"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
