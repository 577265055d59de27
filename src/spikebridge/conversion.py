"""The baseline the bridge is measured against: classic ANN-to-SNN conversion, and accuracy vs T.

Conversion (Diehl et al. 2015; Rueckauer et al. 2017), of the *same* ANN weights:

* every ReLU-like activation becomes an integrate-and-fire neuron (no leak) with **soft reset**
  (the threshold is subtracted, keeping the residue) and membrane starting at
  ``initial_membrane * threshold`` (0: the classic form);
* **threshold balancing**: each neuron layer's threshold is the ``percentile`` (99.9) of the ANN's
  positive activations at that layer on a calibration set, so a spike stands for that activation
  value (data-based normalisation with the scale kept beside the weights, see
  :mod:`spikebridge.spikify`); BatchNorm stays in eval mode (its running statistics, per frame);
* **input**: ``direct`` (the analog image at every step) or ``rate`` (Bernoulli spikes with
  probability ``|x| / max|x|`` per sample, signed, scaled so their mean is ``x``).

Works on registry ANNs (``create_model(..., neuron="relu"|"sharpened_relu")``) and any ANN that
:func:`~spikebridge.spikify.spikify` accepts.

Accuracy at every T from one run: both the converted SNN and the bridge's SNN are causal (the
output at step t depends on steps <= t only; BN runs in eval mode) and read out the mean over
steps, so the accuracy at T = t equals the accuracy of the mean of the first t per-step outputs of
one run at ``T_max`` (tested against separate runs).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .data.loading import DataBundle, calibration_batches as draw_batches, iterate_batches
from .errors import ConfigError
from .neurons import NeuronConfig
from .spikify import SpikingNet, _activation_sites, _Recorder, _subsample, spikify_with_graph

INPUT_CODINGS = ("direct", "rate")


class IFSoftReset(nn.Module):
    """Integrate-and-fire, soft reset: ``u[t] = u[t-1] + x[t] - threshold * s[t-1]``,
    ``s[t] = u[t] >= threshold``; ``u[-1] = initial_membrane * threshold``.

    ``[T, B, ...] -> [T, B, ...]`` spikes (0/1). Inference only (no surrogate gradient).
    """

    def __init__(self, threshold: float = 1.0, initial_membrane: float = 0.0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.initial_membrane = float(initial_membrane)
        self.fixed_decay = 1.0  # for the activity report: no leak multiply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.full_like(x[0], self.initial_membrane * self.threshold)
        out = torch.empty_like(x)
        for t in range(x.shape[0]):
            u = u + x[t]
            spike = (u >= self.threshold).to(x.dtype)
            u = u - spike * self.threshold
            out[t] = spike
        return out

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, initial_membrane={self.initial_membrane}, reset=soft"


@torch.no_grad()
def convert(
    ann: nn.Module,
    calibration: Iterable,
    *,
    T: int = 32,
    percentile: float = 99.9,
    initial_membrane: float = 0.0,
    calibration_samples: int = 512,
    device: torch.device | str = "cpu",
) -> SpikingNet:
    """Classic conversion of ``ann`` (see the module docstring): IF neurons with soft reset, each
    layer's threshold = the ``percentile`` of the ANN's positive activations there."""
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    snn, ann_graph, batches = spikify_with_graph(
        ann, NeuronConfig(kind="lif"), T, calibration, calibrate=False, calibration_samples=calibration_samples,
        neuron_builder=lambda: IFSoftReset(1.0, initial_membrane),
    )
    if not batches:
        raise ConfigError("conversion needs calibration batches (threshold balancing)")
    ann_graph.eval().to(device)
    sites = _activation_sites(ann_graph)
    recorder = _Recorder(ann_graph, names={n.name for n in sites})
    values: dict[str, list[torch.Tensor]] = {}
    for x in batches:
        recorder.values = {}
        recorder.run(x.to(device))
        for name, value in recorder.values.items():
            positive = value[value > 0]
            values.setdefault(name, []).append(_subsample(positive.cpu()))
    for node, neuron in zip(sites, snn.neurons):
        positive = torch.cat(values.get(node.name, [torch.zeros(0)]))
        level = float(torch.quantile(_subsample(positive).double(), percentile / 100)) if positive.numel() else 1.0
        neuron.threshold.fill_(max(level, 1e-6))
    return snn.to(device).eval()


# ------------------------------------------------------------------------------------------------
# per-step outputs and accuracy curves
# ------------------------------------------------------------------------------------------------
def rate_code(x: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, ...]`` analog -> ``[T, B, ...]`` signed Bernoulli spikes whose mean over T is ``x`` in
    expectation (probability ``|x| / m``, amplitude ``m = max |x|`` per sample)."""
    flat = x.flatten(1).abs().amax(1).clamp(min=1e-12)
    scale = flat.view(-1, *([1] * (x.dim() - 1)))
    prob = (x.abs() / scale).unsqueeze(0).expand(steps, *x.shape)
    draws = torch.rand(prob.shape, generator=generator, device=x.device if generator is None else "cpu").to(x.device)
    return (draws < prob).to(x.dtype) * torch.sign(x) * scale


def _cumulative_mean(per_step: torch.Tensor) -> torch.Tensor:
    counts = torch.arange(1, per_step.shape[0] + 1, device=per_step.device, dtype=per_step.dtype)
    return per_step.cumsum(0) / counts.view(-1, *([1] * (per_step.dim() - 1)))


@torch.no_grad()
def outputs_at_each_T(model: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``[steps, B, K]``: entry ``t-1`` is the model's output when run for ``t`` steps.

    ``x``: static ``[B, ...]`` or events ``[T', B, ...]`` (the first ``t`` frames count). Registry
    models (``BridgeNet``) and spikified nets run once for ``steps`` steps (exact: they are causal
    and average over steps); other models run once per ``t``.
    """
    from .models.base import BridgeNet
    from .models.crnn import CRNN

    model = getattr(model, "module", model)
    if isinstance(model, SpikingNet):
        if x.dim() == model.input_ndim + 1:
            return _cumulative_mean(model.per_step_outputs(x[:steps]))
        old = model.T
        model.T = steps
        try:
            return _cumulative_mean(model.per_step_outputs(x))
        finally:
            model.T = old
    if isinstance(model, CRNN):  # its readout is the LSTM's last step
        return model.outputs_at_each_step(x[:steps])
    if isinstance(model, BridgeNet):  # its readout is fc(mean of features over steps)
        frames = x[:steps] if x.dim() == model.input_ndim + 1 else x
        return model.fc(_cumulative_mean(model.per_step_features(frames, steps)))
    outs = []
    old = getattr(model, "T", None)
    try:
        for t in range(1, steps + 1):
            if x.dim() >= 5:
                outs.append(model(x[:t]))
            else:
                model.T = t
                outs.append(model(x))
    finally:
        if old is not None:
            model.T = old
    return torch.stack(outs)


def test_subset(bundle: DataBundle, count: int, seed: int = 0) -> DataBundle:
    """``bundle`` with a seeded random ``count``-sample subset of its test split (class-balanced
    in expectation; the embedded MNIST's test split is ordered by class)."""
    from dataclasses import replace

    from .data.static import TensorSplit

    index = torch.randperm(len(bundle.test), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    if isinstance(bundle.test, TensorSplit):
        return replace(bundle, test=TensorSplit(bundle.test.images[index], bundle.test.labels[index]))
    return replace(bundle, test=torch.utils.data.Subset(bundle.test, index.tolist()))


@torch.no_grad()
def accuracy_curve(
    model: nn.Module,
    bundle: DataBundle,
    T_values: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    max_samples: int | None = None,
    batch_frames: int = 8192,
    input_coding: str = "direct",
    seed: int = 0,
) -> list[tuple[int, float]]:
    """Test accuracy of ``model`` at every T in ``T_values`` (one run at ``max(T_values)``)."""
    if input_coding not in INPUT_CODINGS:
        raise ConfigError(f"input_coding must be one of {', '.join(INPUT_CODINGS)}, got {input_coding!r}")
    T_values = sorted({int(t) for t in T_values})
    if not T_values or T_values[0] < 1:
        raise ConfigError(f"T values must be positive integers, got {T_values}")
    t_max = T_values[-1]
    if bundle.kind == "events" and bundle.time_steps is not None and t_max > bundle.time_steps:
        raise ConfigError(f"{bundle.name} has {bundle.time_steps} event frames; T up to {bundle.time_steps}, not {t_max}")
    model = getattr(model, "module", model)
    if max_samples is not None and max_samples < len(bundle.test):
        bundle = test_subset(bundle, max_samples, seed)
    was_training = model.training
    model.eval().to(device)
    batch = max(1, batch_frames // t_max)
    correct = torch.zeros(len(T_values))
    seen = 0
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor([t - 1 for t in T_values])
    try:
        for x, y in iterate_batches(bundle, bundle.test, batch, train=False):
            x, y = x.to(device), y.to(device)
            if input_coding == "rate" and bundle.kind == "static":
                x = rate_code(x, t_max, generator)
            outputs = outputs_at_each_T(model, x, t_max)
            predictions = outputs[index.to(outputs.device)].argmax(-1)  # [len(T_values), B]
            correct += (predictions == y.unsqueeze(0)).sum(1).cpu().float()
            seen += len(y)
    finally:
        model.train(was_training)
    return [(t, float(c) / max(seen, 1)) for t, c in zip(T_values, correct)]


def conversion_accuracy_curve(
    ann: nn.Module,
    bundle: DataBundle,
    T_values: Sequence[int],
    *,
    percentile: float = 99.9,
    input_coding: str = "direct",
    initial_membrane: float = 0.0,
    calibration_batches: int = 2,
    calibration_batch_size: int = 256,
    device: torch.device | str = "cpu",
    max_samples: int | None = None,
    seed: int = 0,
) -> list[tuple[int, float]]:
    """Convert ``ann`` (threshold balancing on ``calibration_batches`` training batches) and return
    ``[(T, accuracy), ...]`` on the test split."""
    calibration = list(draw_batches(bundle, calibration_batches, calibration_batch_size, seed))
    if not calibration:
        raise ConfigError(f"{bundle.name}: no training batch for calibration")
    snn = convert(ann, calibration, T=max(T_values), percentile=percentile, initial_membrane=initial_membrane,
                  calibration_samples=calibration_batches * calibration_batch_size, device=device)
    return accuracy_curve(snn, bundle, T_values, device=device, max_samples=max_samples,
                          input_coding=input_coding, seed=seed)


__all__ = [
    "INPUT_CODINGS",
    "IFSoftReset",
    "accuracy_curve",
    "conversion_accuracy_curve",
    "convert",
    "outputs_at_each_T",
    "rate_code",
    "test_subset",
]
