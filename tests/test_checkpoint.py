"""Checkpoints: safetensors + JSON, atomic, verified, resumable."""
import json

import pytest
import torch

import spikebridge as sb
from spikebridge.errors import CheckpointError
from spikebridge.train.checkpoint import load_checkpoint, save_checkpoint


def _model_and_optimizer():
    torch.manual_seed(0)
    model = sb.create_model("cnn", neuron="lif", T=2, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, "last", model, {"epoch_metric": 0.5}, optimizer=opt, epoch=3,
                           rng={"torch": torch.get_rng_state()})
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 3 and ckpt.meta["epoch_metric"] == 0.5
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[key], value)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt.optimizer_state())
    for p in model.parameters():
        assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    # weights load with safetensors alone; no pickle anywhere
    record = json.loads(path.read_text())
    assert record["weights"].endswith(".safetensors")


def test_new_save_replaces_old_weights(tmp_path):
    model, opt = _model_and_optimizer()
    save_checkpoint(tmp_path, "last", model, {}, epoch=1)
    save_checkpoint(tmp_path, "last", model, {}, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-e0002.safetensors", "last.json"]


def test_corruption_is_detected(tmp_path):
    model, _ = _model_and_optimizer()
    path = save_checkpoint(tmp_path, "last", model, {}, epoch=1)
    weights = tmp_path / json.loads(path.read_text())["weights"]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify=False)
    path.write_text(path.read_text()[:20])
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.json")


def test_a_plain_safetensors_state_dict_keeps_every_key(tmp_path):
    """A bare state dict whose keys happen to start with ``model.`` is not mistaken for a tensors
    file of spikebridge's own checkpoints (found by tests/test_fuzz.py)."""
    from safetensors.torch import save_file

    from spikebridge.train.checkpoint import load_checkpoint

    save_file({"": torch.zeros(1), "model.": torch.ones(1)}, str(tmp_path / "w.safetensors"))
    assert sorted(load_checkpoint(tmp_path / "w.safetensors").model_state) == ["", "model."]


def test_resume_state_defaults_and_refuses_a_bad_curve(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, "last", model, {}, optimizer=opt, epoch=1)
    assert load_checkpoint(path).resume_state() == {"history": [], "curve": [], "cpu_curve": [], "seconds": 0.0,
                                                    "cpu_seconds": 0.0, "grad_scaler": {}}
    record = json.loads(path.read_text())
    record["meta"]["curve"] = [[1.5, 1, "0.9"]]
    path.write_text(json.dumps(record))
    ckpt = load_checkpoint(path)  # loading for weights alone does not look at the training record
    with pytest.raises(CheckpointError, match=r"last\.json: checkpoint field 'meta\.curve' must be a list of "
                                              r"\[seconds, epoch, accuracy\] rows .*, got \[\[1\.5, 1, '0\.9'\]\]$"):
        ckpt.resume_state()
