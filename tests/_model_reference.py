"""Plain reference forms of fast paths in the package, kept out of it: the tests check the fast
forms against them (and ``benchmarks/bridge_cost.py`` times the fast form against them)."""
from __future__ import annotations

import torch
from torch import nn

from spikebridge.bridge import _activation_pairs, _ann_targets, _channel_mean, _feeding_layers, recalibrate_batchnorm


@torch.no_grad()
def match_firing_rates_reference(
    ann: nn.Module,
    snn: nn.Module,
    batches: list[torch.Tensor],
    *,
    iterations: int = 10,
    max_shift: float = 1.0,
    device: torch.device | str = "cpu",
    ann_batches: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """The plain form of :func:`spikebridge.bridge.match_firing_rates` (same arguments, same
    result): before each layer every BatchNorm is re-estimated and every bisection step is a full
    forward of the SNN. Its cost grows with the square of the depth."""
    pairs = _activation_pairs(ann, snn)
    if not pairs or not batches:
        return {}
    was_training = (ann.training, snn.training)
    batches = [b.to(device) for b in batches]
    target = _ann_targets(ann, pairs, ann_batches or batches, device)
    feeding = _feeding_layers(snn.eval(), pairs, batches[0])
    errors: dict[str, float] = {}
    for name, _act, neuron in pairs:
        norm = feeding.get(name)
        if norm is None or norm.bias is None or target[name].numel() != norm.bias.numel():
            continue
        recalibrate_batchnorm(snn, batches, device)
        snn.eval()
        base = norm.bias.detach().clone()
        low = torch.full_like(base, -max_shift)
        high = torch.full_like(base, max_shift)
        goal = target[name].to(base.device, base.dtype)

        def rate_at(shift: torch.Tensor) -> torch.Tensor:
            norm.bias.copy_(base + shift)
            seen: list[torch.Tensor] = []
            hook = neuron.register_forward_hook(lambda m, i, o: seen.append(_channel_mean(o)))
            try:
                for batch in batches:
                    snn(batch)
            finally:
                hook.remove()
            return torch.stack(seen).mean(0).to(base.dtype)

        for _ in range(iterations):
            middle = (low + high) / 2
            too_high = rate_at(middle) > goal
            high = torch.where(too_high, middle, high)
            low = torch.where(too_high, low, middle)
        errors[name] = float((rate_at((low + high) / 2) - goal).abs().mean())
    recalibrate_batchnorm(snn, batches, device)
    ann.train(was_training[0])
    snn.train(was_training[1])
    return errors
