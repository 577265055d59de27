"""The bridge: carry a trained ANN's parameters into an SNN of the same layout.

Because one model definition serves both (same parameter names), the transfer is a
``load_state_dict`` of every tensor whose name and shape match, plus:

* a report of matched / missing / unexpected / shape-mismatched keys (and a refusal, with a clear
  error, when too little matches: a checkpoint of another architecture is not silently half-loaded);
* first-layer adaptation when the input channels change (3 colours or 1 grey -> 2 event
  polarities): ``signed_polarity`` (ON gets the grey-equivalent kernel, OFF its negative: ODG's ON/OFF
  events are the signed temporal derivative of intensity), ``mean`` (the colour-mean kernel copied to
  every new channel), or ``skip`` (re-initialised, as the reference code does);
* optional BatchNorm re-calibration: the running statistics are re-estimated with the SNN itself on a
  few training batches, so BN normalises what the spiking layers really produce.

Sources accepted: an ``nn.Module``, a state dict, a spikebridge checkpoint (``.json``), a
``.safetensors`` file, or a torchvision-style ``.pth``/``.pt`` state dict (loaded with
``weights_only=True``; ``module.`` prefixes from DDP are stripped).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .errors import CheckpointError, TransferError

FIRST_LAYER_MODES = ("signed_polarity", "mean", "skip")


@dataclass
class TransferReport:
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the SNN, not in the source
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the SNN
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, source, snn)
    adapted: list[str] = field(default_factory=list)  # first-layer keys adapted to new channels
    reinitialised: list[str] = field(default_factory=list)
    recalibrated_bn: int = 0
    rate_errors: dict[str, float] = field(default_factory=dict)  # per layer, after match_firing_rates

    @property
    def match_fraction(self) -> float:
        total = len(self.matched) + len(self.missing) + len(self.mismatched) + len(self.adapted)
        return (len(self.matched) + len(self.adapted)) / max(total, 1)

    @property
    def transferred(self) -> set[str]:
        """Names of the SNN's tensors that came from the ANN (for warm-up freezing)."""
        return set(self.matched) | set(self.adapted)

    def summary(self) -> str:
        lines = [
            f"transferred {len(self.matched) + len(self.adapted)} tensors "
            f"({self.match_fraction:.0%} of the SNN's), adapted {len(self.adapted)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"
        ]
        for key, src, dst in self.mismatched:
            lines.append(f"  shape mismatch {key}: source {list(src)} vs SNN {list(dst)}")
        if self.missing:
            lines.append(f"  missing (kept as initialised): {', '.join(self.missing[:8])}{' ...' if len(self.missing) > 8 else ''}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {', '.join(self.unexpected[:8])}{' ...' if len(self.unexpected) > 8 else ''}")
        if self.recalibrated_bn:
            lines.append(f"  re-calibrated {self.recalibrated_bn} BatchNorm layers on spiking activity")
        if self.rate_errors:
            worst = max(self.rate_errors.values())
            lines.append(f"  matched firing rates to the ANN in {len(self.rate_errors)} layers (worst mean error {worst:.4f})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "matched": len(self.matched),
            "adapted": self.adapted,
            "reinitialised": self.reinitialised,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
            "match_fraction": self.match_fraction,
            "recalibrated_bn": self.recalibrated_bn,
            "rate_errors": self.rate_errors,
        }


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a spikebridge checkpoint, ``.safetensors`` or ``.pth``/``.pt`` file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".json" or path.is_dir() or path.suffix == ".safetensors":
        from .train.checkpoint import load_checkpoint

        return load_checkpoint(path).model_state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/pickled-object files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable state-dict file ({first[:200]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def as_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        source = getattr(source, "module", source)
        return source.state_dict()
    if isinstance(source, (str, Path)):
        source = load_state_dict_file(source)
    if not isinstance(source, dict):
        raise TransferError(f"cannot transfer from {type(source).__name__}: give a module, state dict or file")
    if source and all(k.startswith("module.") for k in source):
        source = {k[len("module."):]: v for k, v in source.items()}
    return source


def _adapt_first_layer(weight: torch.Tensor, in_channels: int, mode: str) -> torch.Tensor:
    """Map a conv kernel ``[out, c_src, kh, kw]`` onto ``in_channels`` input channels."""
    grey = weight.sum(dim=1, keepdim=True)  # response to a grey image (all colours equal)
    if mode == "mean":
        return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1).clone()
    if mode == "signed_polarity":
        if in_channels != 2:
            raise TransferError(f"first_layer='signed_polarity' needs 2 input channels (ON/OFF), the SNN has {in_channels}")
        return torch.cat([grey, -grey], dim=1)
    raise TransferError(f"unknown first_layer mode {mode!r}; expected one of {', '.join(FIRST_LAYER_MODES)}")


def transfer(
    source,
    snn_model: nn.Module,
    first_layer: str = "signed_polarity",
    *,
    min_match: float = 0.5,
    strict_shapes: bool = False,
) -> TransferReport:
    """Load every tensor of ``source`` whose name and shape fit ``snn_model``; report the rest.

    Raises :class:`TransferError` when less than ``min_match`` of the SNN's tensors can be loaded
    (a checkpoint of another architecture), or when ``strict_shapes`` and any shape differs.
    """
    if first_layer not in FIRST_LAYER_MODES:
        raise TransferError(f"unknown first_layer mode {first_layer!r}; expected one of {', '.join(FIRST_LAYER_MODES)}")
    source_state = as_state_dict(source)
    target = getattr(snn_model, "module", snn_model)
    target_state = target.state_dict()
    report = TransferReport()
    new_state: dict[str, torch.Tensor] = {}
    first_conv = next((k for k, v in target_state.items() if v.dim() == 4), None)
    for key, dst in target_state.items():
        if key not in source_state:
            report.missing.append(key)
            continue
        src = source_state[key]
        if tuple(src.shape) == tuple(dst.shape):
            new_state[key] = src.to(dst.dtype)
            report.matched.append(key)
        elif key == first_conv and src.dim() == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]:
            if first_layer == "skip":
                report.reinitialised.append(key)
            else:
                new_state[key] = _adapt_first_layer(src, dst.shape[1], first_layer).to(dst.dtype)
                report.adapted.append(key)
        else:
            report.mismatched.append((key, tuple(src.shape), tuple(dst.shape)))
    report.unexpected = [k for k in source_state if k not in target_state]
    if strict_shapes and report.mismatched:
        raise TransferError("shape mismatch: " + "; ".join(f"{k} {list(a)} vs {list(b)}" for k, a, b in report.mismatched[:3]))
    if not new_state or report.match_fraction < min_match:
        example = report.mismatched[0] if report.mismatched else None
        hint = f" (e.g. {example[0]}: {list(example[1])} vs {list(example[2])})" if example else ""
        raise TransferError(
            f"only {report.match_fraction:.0%} of the SNN's tensors match the source (need {min_match:.0%}): "
            f"is it a checkpoint of another architecture or class count?{hint}"
        )
    target.load_state_dict(new_state, strict=False)
    return report


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of a ``[N, C, ...]`` activation (N = B for the ANN, T*B for the SNN)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).float().mean(1) if x.dim() > 1 else x.float().mean()


def _activation_pairs(ann: nn.Module, snn: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, ANN activation, SNN neuron) for every time-folded neuron whose name exists in the ANN."""
    from .layers import TimeFolded

    ann_modules = dict(getattr(ann, "module", ann).named_modules())
    return [
        (name, ann_modules[name], module)
        for name, module in getattr(snn, "module", snn).named_modules()
        if isinstance(module, TimeFolded) and name in ann_modules
    ]


def _feeding_batchnorms(snn: nn.Module, pairs, example: torch.Tensor) -> dict[str, nn.Module]:
    """For each neuron, the BatchNorm that ran last before it in a forward pass (the one whose
    bias shifts the neuron's input current: ``bn2`` for a residual block's final neuron)."""
    last_bn: list[nn.Module | None] = [None]
    feeding: dict[str, nn.Module] = {}
    hooks = []
    for module in snn.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            hooks.append(module.register_forward_hook(lambda m, i, o: last_bn.__setitem__(0, m)))
    def note_feeder(name: str) -> None:
        if last_bn[0] is not None and name not in feeding:
            feeding[name] = last_bn[0]

    for name, _ann_act, neuron in pairs:
        hooks.append(neuron.register_forward_pre_hook(lambda m, i, name=name: note_feeder(name)))
    try:
        snn(example)
    finally:
        for hook in hooks:
            hook.remove()
    return feeding


@torch.no_grad()
def match_firing_rates(
    ann: nn.Module,
    snn: nn.Module,
    batches: list[torch.Tensor],
    *,
    iterations: int = 10,
    max_shift: float = 1.0,
    device: torch.device | str = "cpu",
    ann_batches: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Threshold-aware calibration: layer by layer (in forward order), shift the bias of the
    BatchNorm feeding each spiking neuron so that every channel's firing rate (mean over time,
    batch and positions) equals the mean output of the ANN's activation at the same place.

    Meant for ANNs whose activation is spike-like and bounded in [0, 1] (the sharpened ReLU): the
    LIF's leak makes inputs a little below threshold fire on later steps, which a step-like ANN
    never does; this moves each channel's effective threshold back to where the ANN learned it.
    Per channel the rate is monotone in the bias, so a vectorised bisection over
    ``[-max_shift, max_shift]`` (``iterations`` halvings) finds the shift. BN running statistics
    are re-estimated before each layer. ``ann_batches`` (default: ``batches``) are what the ANN
    sees of the same samples when the SNN's input differs (pipeD: the static images of the digits
    whose events are in ``batches``). Returns, per layer, the mean absolute rate error after
    calibration.
    """
    pairs = _activation_pairs(ann, snn)
    if not pairs or not batches:
        return {}
    was_training = (ann.training, snn.training)
    ann.eval()
    batches = [b.to(device) for b in batches]
    targets: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in pairs}
    hooks = [act.register_forward_hook(lambda m, i, o, name=name: targets[name].append(_channel_mean(o)))
             for name, act, _ in pairs]
    try:
        for batch in ann_batches or batches:
            ann(batch.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    target = {name: torch.stack(values).mean(0) for name, values in targets.items()}
    feeding = _feeding_batchnorms(snn.eval(), pairs, batches[0])
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


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var from ``batches`` run through ``model``.

    Uses a cumulative average (momentum None) over all given batches, then restores each layer's
    momentum and the model's train/eval mode. Returns the number of BN layers updated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x.to(device))
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise TransferError("BatchNorm re-calibration got no batches")
    return len(norms)
