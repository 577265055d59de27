"""Model registry: names -> builders. ``create_model(name, neuron="relu")`` is the ANN and
``create_model(name, neuron="lif", T=6)`` the SNN; both have identical ``state_dict`` keys."""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable

from torch import nn

from ..errors import ConfigError
from ..neurons import NeuronConfig
from .cnn import SmallCNN
from .crnn import CRNN
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG, VGG_STAGES

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_SEQUENCE_MODELS: set[str] = set()  # models taking only frame sequences [T, B, C, H, W] (video)


def register_model(name: str, *, sequence: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """``sequence=True``: the model takes only time-major frame sequences ``[T, B, C, H, W]``
    (no static ``[B, C, H, W]`` images), e.g. the video CRNN."""
    def wrap(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        if sequence:
            _SEQUENCE_MODELS.add(name)
        return builder

    return wrap


def list_models(sequence: bool | None = None) -> list[str]:
    """Registered names; ``sequence=False``/``True`` keeps only image / sequence-only models."""
    return sorted(n for n in _REGISTRY if sequence is None or (n in _SEQUENCE_MODELS) == sequence)


def as_neuron_config(neuron: str | NeuronConfig, **overrides) -> NeuronConfig:
    if isinstance(neuron, NeuronConfig):
        return replace(neuron, **overrides) if overrides else neuron
    if not isinstance(neuron, str):
        raise ConfigError(f"neuron must be a name or a NeuronConfig, got {type(neuron).__name__}")
    return NeuronConfig(kind=neuron, **overrides)


def create_model(
    name: str,
    num_classes: int = 10,
    neuron: str | NeuronConfig = "lif",
    T: int = 4,
    in_channels: int = 3,
    **kwargs,
) -> nn.Module:
    """Build a registered model. ``neuron`` is a registered kind (``relu``, ``sharpened_relu``,
    ``lif``, ``liaf``: ``spikebridge.neurons.neuron_names()``) or a :class:`NeuronConfig`; ``T`` is the SNN's number of time steps (ANNs use 1)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    model = _REGISTRY[name](
        num_classes=num_classes, in_channels=in_channels, neuron=as_neuron_config(neuron), T=T, **kwargs
    )
    # what it was built as (pipelines.pipes(cfg, ann=model) takes its architecture from it)
    model.registry_model = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    return model


register_model("resnet18")(partial(ResNet, BasicBlock, [2, 2, 2, 2], torchvision_layout=False))
register_model("resnet34")(partial(ResNet, BasicBlock, [3, 4, 6, 3], torchvision_layout=False))
register_model("resnet18_tv")(partial(ResNet, BasicBlock, [2, 2, 2, 2], torchvision_layout=True))
register_model("resnet34_tv")(partial(ResNet, BasicBlock, [3, 4, 6, 3], torchvision_layout=True))
register_model("resnet50_tv")(partial(ResNet, Bottleneck, [3, 4, 6, 3], torchvision_layout=True))
register_model("vgg11")(partial(VGG, VGG_STAGES["vgg11"]))
register_model("vgg16")(partial(VGG, VGG_STAGES["vgg16"]))
register_model("vgg11_bn_tv")(partial(VGG, VGG_STAGES["vgg11"], torchvision_layout=True))
register_model("vgg16_bn_tv")(partial(VGG, VGG_STAGES["vgg16"], torchvision_layout=True))
register_model("cnn")(SmallCNN)
register_model("crnn", sequence=True)(CRNN)
