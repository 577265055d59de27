"""Every recipe in configs/ loads and runs: ANN step, bridge, SNN step, on a tiny dataset written
in the recipe's own on-disk layout (ImageNet folders, ES-ImageNet, CIFAR10-DVS AEDAT files, UCF101
frame folders + ES-UCF101). Only sizes change (epochs, batch, resolution; the event recipes'
ResNet-18 becomes the small CNN on 32-px event frames); every other value
(optimizers, schedules, neurons, the bridge, warm-up) is the recipe's."""
from pathlib import Path

import pytest
import torch

import _layouts as layouts
from spikebridge import cli
from spikebridge.config import PipelineConfig, load_config
from spikebridge.errors import ConfigError
import spikebridge as sb
from spikebridge.layers import TimeFolded, set_time_steps
from spikebridge.pipelines import piped, pipes
from spikebridge.pipelines.benchmark import benchmark
from spikebridge.train.checkpoint import load_checkpoint

CONFIGS = Path(__file__).parent.parent / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from spikebridge.data.convert import convert_es_to_edge_integral

    root = tmp_path_factory.mktemp("recipes")
    data = layouts.recipe_datasets(root)
    # the self-pretrain recipe's ANN data: edge-integral images of the ES-ImageNet set itself
    convert_es_to_edge_integral(data["es-imagenet"], root / "edge", progress=False)
    return {**data, "edge": str(root / "edge")}


def _one_step(section: str, batch: int) -> dict:
    return {f"{section}.epochs": 1, f"{section}.batch_size": batch}


def _common(out: Path) -> dict:
    return {"run.out": str(out), "run.device": "cpu", "run.progress": False, "data.workers": 0}


def _es_imagenet_piped(d: dict, ann_data: str, ann_batch: int = 12) -> dict:
    """An ES-ImageNet pipeD recipe on the tiny folders: the ANN on ``d[ann_data]``, a cnn at 32 px."""
    return {"data.name": d[ann_data], "data.image_size": 32, "events.data": d["es-imagenet"], "model.name": "cnn",
            "events.image_size": 32, **_one_step("ann", ann_batch), **_one_step("events.finetune", 6)}


# recipe -> (pipeline, overrides given the tiny data); sizes only
CASES = {
    "imagenet_pipes_resnet18.yaml": ("pipes", lambda d: {
        "data.name": d["photos"], "data.image_size": 32, **_one_step("ann", 12), **_one_step("finetune", 12)}),
    "imagenet_pipes_resnet34.yaml": ("pipes", lambda d: {
        "data.name": d["photos"], "data.image_size": 32, "model.T": 2, **_one_step("ann", 12),
        **_one_step("finetune", 12)}),
    "esimagenet_piped_resnet18_liaf.yaml": ("piped", lambda d: _es_imagenet_piped(d, "photos")),
    "esimagenet_piped_resnet18_lif.yaml": ("piped", lambda d: _es_imagenet_piped(d, "photos")),
    "esimagenet_piped_resnet18_liaf_selfpretrain.yaml": ("piped", lambda d: _es_imagenet_piped(d, "edge", 6)),
    "esimagenet_piped_resnet34_lif.yaml": ("piped", lambda d: _es_imagenet_piped(d, "photos")),
    "esimagenet_piped_resnet34_liaf.yaml": ("piped", lambda d: _es_imagenet_piped(d, "photos")),
    "esimagenet_2dcnn_resnet18.yaml": ("benchmark", lambda d: {
        "data.name": d["es-imagenet"], "events.data": d["es-imagenet"], "model.name": "cnn", "events.image_size": 32,
        **_one_step("events.scratch", 6)}),
    "cifar10dvs_piped.yaml": ("piped", lambda d: {
        "data.name": d["photos"], "data.image_size": 32, "events.data": d["dvs"], "model.name": "cnn",
        "events.image_size": 32,
        **_one_step("ann", 12), **_one_step("events.finetune", 9)}),
    "esucf101_piped_crnn.yaml": ("piped", lambda d: {
        "data.name": d["clips"], "events.data": d["es-ucf101"], **_one_step("ann", 3),
        **_one_step("events.finetune", 3)}),
}


def test_every_recipe_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "demo.yaml") == sorted(CASES)


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_runs_a_step(recipe, tiny, tmp_path):
    kind, sizes = CASES[recipe]
    plain = load_config(PipelineConfig, CONFIGS / recipe)
    cfg = load_config(PipelineConfig, CONFIGS / recipe, {**_common(tmp_path), **sizes(tiny)})
    for section in ("ann", "finetune", "neuron", "bridge"):  # the recipe's own choices survive
        keep = {k for k in vars(getattr(plain, section)) if k not in ("epochs", "batch_size", "calibration_batch_size")}
        assert {k: getattr(getattr(cfg, section), k) for k in keep} == {k: getattr(getattr(plain, section), k) for k in keep}
    if kind == "benchmark":  # the 2D-CNN: one scratch run on the event frames summed into one step
        summary = benchmark(cfg, "scratch")
        (run,) = summary["runs"]
        assert run["method"] == "scratch" and run["T"] == 1 and run["neuron"] == "liaf"
        ckpt = load_checkpoint(tmp_path / "scratch" / "checkpoints" / "last.json")
        assert ckpt.epoch == 1 and ckpt.meta["model"]["in_channels"] == 2
        # a LIAF neuron at T = 1 is LeakyReLU(0.2): the net is a plain 2D-CNN
        net = sb.create_model("cnn", num_classes=3, neuron=cfg.neuron, T=1, in_channels=2)
        act = next(m for m in net.modules() if isinstance(m, TimeFolded))
        set_time_steps([act], 1)
        x = torch.randn(4, 5, 6, 6)
        torch.testing.assert_close(act(x), torch.nn.functional.leaky_relu(x, 0.2))
        return
    if kind == "pipes":
        summary = pipes(cfg, baseline=False)
        names = ["ann", "snn_pretrained"]
    else:
        summary = piped(cfg, baseline=False)
        names = ["ann", "snn_events_pretrained"]
    runs = {run["name"]: run for run in summary["runs"]}
    assert sorted(runs) == sorted(names)
    for name in names:
        ckpt = load_checkpoint(tmp_path / name / "checkpoints" / "last.json")
        assert ckpt.epoch == 1 and len([h for h in ckpt.meta["history"] if h["train_loss"] is not None]) == 1
        assert torch.isfinite(torch.tensor(ckpt.meta["history"][-1]["train_loss"]))
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "report.md").is_file()
    if recipe.startswith("imagenet"):  # the paper's model at small resolution, optimizer state carried over
        ann = load_checkpoint(tmp_path / "ann" / "checkpoints" / "last.json")
        assert ann.meta["model"]["name"] == plain.model.name and cfg.bridge.transfer_optimizer
        assert ann.record["optimizer"]["param_groups"][0]["momentum"] == 0.9
    if recipe == "cifar10dvs_piped.yaml":  # warm-up: the transferred tensors did not move in epoch 1
        ann = load_checkpoint(tmp_path / "ann" / "checkpoints" / "last.json").model_state
        snn = load_checkpoint(tmp_path / "snn_events_pretrained" / "checkpoints" / "last.json").model_state
        assert torch.equal(ann["blocks.0.weight"], snn["blocks.0.weight"])
        assert torch.equal(ann["fc.weight"], snn["fc.weight"])


@pytest.mark.parametrize("text, key", [
    ("model:\n  nmae: resnet18\n", "model.nmae"),
    ("finetune:\n  lr: fast\n", "finetune.lr"),
    ("events:\n  finetune:\n    freeze_epochs: two\n", "events.finetune.freeze_epochs"),
    ("run:\n  amp: fp8\n", "run.amp"),
])
def test_bad_recipe_is_one_line_naming_the_key(text, key, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    status = cli.main(["pipes", "--config", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and key in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_transfer_optimizer_first_step_uses_the_ann_momentum(tmp_path):
    """bridge.transfer_optimizer: the SNN's first SGD step is p - lr * (momentum * ANN buffer + grad),
    with the fine-tune's own LR (the LR is reset, the buffers are kept)."""
    import torch.nn.functional as F

    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.loading import iterate_batches
    from spikebridge.pipelines.ann import RegistryFamily
    from spikebridge.pipelines.context import RunContext

    sgd = {"optimizer": "sgd", "momentum": 0.9, "schedule": "constant", "epochs": 1, "batch_size": 32}
    cfg = load_config(PipelineConfig, None, {
        "model.name": "cnn", "run.out": str(tmp_path), "run.progress": False, "bridge.transfer_optimizer": True,
        "bridge.recalibrate_bn": False, "bridge.match_rates": False,
        **{f"ann.{k}": v for k, v in sgd.items()}, "ann.lr": 0.05,
        **{f"finetune.{k}": v for k, v in sgd.items()}, "finetune.lr": 0.01,
    })
    bundle = open_dataset("mnist5k", max_shift=0, limit_train=32, limit_test=32)  # one batch: one step
    ctx, family = RunContext.from_config(cfg), RegistryFamily()
    ann, ann_result = family.pretrain(ctx, cfg, bundle)
    buffers = ann_result.optimizer_state
    names = [n for n, _ in ann.named_parameters()]
    assert sorted(buffers) == sorted(names) and all(buffers[n]["momentum_buffer"].abs().sum() > 0 for n in names)

    snn = family.to_snn(ctx, cfg, ann, bundle, same_data=True).snn
    before = {n: p.detach().clone() for n, p in snn.named_parameters()}
    x, y = next(iterate_batches(bundle, bundle.train, 32, train=False))
    snn.train()
    snn.zero_grad()
    F.cross_entropy(snn(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in snn.named_parameters()}
    snn.zero_grad(set_to_none=True)
    ctx.fit(snn, bundle, cfg.finetune, name="snn", optimizer_state=buffers)
    for n, p in snn.named_parameters():
        expected = before[n] - 0.01 * (0.9 * buffers[n]["momentum_buffer"] + grads[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=n)
    fresh = before["fc.weight"] - 0.01 * grads["fc.weight"]  # what a fresh optimizer would have done
    assert (snn.fc.weight.detach() - fresh).abs().max() > 1e-4

    with pytest.raises(ConfigError, match="must be the same"):  # Adam moments cannot seed SGD
        load_config(PipelineConfig, None, {"bridge.transfer_optimizer": True, "ann.optimizer": "adam",
                                           "finetune.optimizer": "sgd"})
