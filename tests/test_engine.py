"""The training engine on a small real subset: curves, checkpoints, resume, warm-up freezing."""
import json

import pytest
import torch

import spikebridge as sb
from spikebridge.config import TrainConfig
from spikebridge.data.datasets import open_mnist5k
from spikebridge.data.static import TensorSplit
from spikebridge.errors import TrainingError
from spikebridge.train.engine import evaluate, fit


@pytest.fixture(scope="module")
def small_bundle():
    bundle = open_mnist5k(max_shift=1)
    bundle.train = TensorSplit(bundle.train.images[:256], bundle.train.labels[:256])
    bundle.test = TensorSplit(bundle.test.images[:128], bundle.test.labels[:128])
    return bundle


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=3e-3, optimizer="adam", schedule="onecycle")
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_and_records(tmp_path, small_bundle):
    torch.manual_seed(0)
    model = sb.create_model("cnn", neuron="relu", in_channels=1)
    before = evaluate(model, small_bundle)["acc"]
    result = fit(model, small_bundle, _cfg(epochs=3), name="ann", run_dir=tmp_path, progress=False, evaluate_first=True)
    assert result.curve[0][0] == 0.0 and result.curve[0][2] == pytest.approx(before)
    assert [p[1] for p in result.curve] == [0, 1, 2, 3]
    assert all(b[0] >= a[0] for a, b in zip(result.curve, result.curve[1:]))
    assert result.best_acc > max(0.5, before + 0.2)
    lines = (tmp_path / "ann" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,seconds") and len(lines) == 5
    record = json.loads((tmp_path / "ann" / "checkpoints" / "last.json").read_text())
    assert record["epoch"] == 3 and record["meta"]["curve"] == result.curve
    # the same curve in process CPU seconds: same epochs and accuracies, CPU time that only grows
    assert [p[1:] for p in result.cpu_curve] == [p[1:] for p in result.curve]
    assert result.cpu_curve[0][0] == 0.0 and all(b[0] > a[0] for a, b in zip(result.cpu_curve, result.cpu_curve[1:]))
    assert record["meta"]["cpu_curve"] == result.cpu_curve
    assert result.to_summary()["cpu_seconds"] == result.cpu_curve[-1][0]


def test_metrics_lr_is_the_rate_each_epoch_trained_with(small_bundle):
    """The ``lr`` of an epoch's record (metrics.csv) is the rate its steps started with: with the
    step schedule (LR x 0.1 at epoch 2) epoch 1 and 2 read the base rate, epoch 3 the decayed one
    (it logged the rate after the epoch: the next epoch's)."""
    torch.manual_seed(0)
    model = sb.create_model("cnn", neuron="relu", in_channels=1)
    cfg = _cfg(epochs=3, lr=0.01, optimizer="sgd", schedule="step", milestones=[2], gamma=0.1)
    result = fit(model, small_bundle, cfg, name="ann", run_dir=None, progress=False)
    assert [round(h["lr"], 6) for h in result.history] == [0.01, 0.01, 0.001]


def test_resume_equals_uninterrupted_run(tmp_path, small_bundle):
    torch.manual_seed(0)
    full = sb.create_model("cnn", neuron="relu", in_channels=1)
    fit(full, small_bundle, _cfg(epochs=2), name="m", run_dir=tmp_path / "full", progress=False, seed=1)
    # interrupt the same run in epoch 2 (after epoch 1's checkpoint), then resume it
    class Stop(Exception):
        pass

    def stop(record):
        if record["epoch"] == 2:
            raise Stop

    torch.manual_seed(0)
    part = sb.create_model("cnn", neuron="relu", in_channels=1)
    with pytest.raises(Stop):
        fit(part, small_bundle, _cfg(epochs=2), name="m", run_dir=tmp_path / "part", progress=False, seed=1, on_epoch=stop)
    assert json.loads((tmp_path / "part" / "m" / "checkpoints" / "last.json").read_text())["epoch"] == 1
    torch.manual_seed(123)  # resuming must not depend on the global RNG at restart
    resumed = sb.create_model("cnn", neuron="relu", in_channels=1)
    result = fit(resumed, small_bundle, _cfg(epochs=2), name="m", run_dir=tmp_path / "part", progress=False, seed=1, resume=True)
    assert result.epochs == 2
    assert [p[1] for p in result.cpu_curve] == [1, 2] and 0 < result.cpu_curve[0][0] < result.cpu_curve[1][0]  # kept
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_warmup_freezes_transferred_parameters(small_bundle):
    torch.manual_seed(0)
    model = sb.create_model("cnn", neuron="lif", T=2, in_channels=1)
    frozen = {k for k, _ in model.named_parameters() if not k.startswith("fc.")}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fit(model, small_bundle, _cfg(epochs=1, freeze_epochs=1), name="wu", run_dir=None, progress=False, frozen=frozen)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    fit(model, small_bundle, _cfg(epochs=2, freeze_epochs=1), name="wu2", run_dir=None, progress=False, frozen=frozen)
    assert not torch.equal(before["conv1.weight"], model.conv1.weight)


def test_nan_loss_stops_with_clear_error(small_bundle):
    model = sb.create_model("cnn", neuron="relu", in_channels=1)
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="step 1"):
        fit(model, small_bundle, _cfg(epochs=1), name="nan", run_dir=None, progress=False)


def test_precise_bn_changes_statistics_only(small_bundle):
    """precise_bn re-estimates BN statistics after each epoch: the parameters (trained on batch
    statistics, same random stream) are unchanged, and the running statistics become the exact
    mean / unbiased variance of the BN input over the sampled training images (here: all of them,
    without augmentation)."""
    def train(precise_bn):
        torch.manual_seed(0)
        model = sb.create_model("cnn", neuron="lif", T=2, in_channels=1)
        fit(model, small_bundle, _cfg(epochs=1, precise_bn=precise_bn), name="snn", run_dir=None, progress=False)
        return model

    plain, precise = train(0), train(256)
    for (name, a), (_, b) in zip(plain.named_parameters(), precise.named_parameters()):
        assert torch.equal(a, b), name
    assert not torch.allclose(plain.bn1.running_mean, precise.bn1.running_mean)
    # the first BN sees conv(x) of the static image at every step: its statistics are those of conv(x)
    conv, bn = precise.conv1, precise.bn1
    x = (small_bundle.train.images.float() / 255 - small_bundle.mean[0]) / small_bundle.std[0]
    with torch.no_grad():
        y = conv(x)
    dims = (0, 2, 3)
    torch.testing.assert_close(bn.running_mean, y.mean(dims), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, y.var(dims, unbiased=True), rtol=1e-4, atol=1e-5)
