"""The video CRNN: one definition for the ANN (RGB frames) and the SNN (event frames); per-frame
encoder + LSTM read out at the last step; encoder-only / decoder-only / full transfer; training
end to end on clips converted to events."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import spikebridge as sb
from spikebridge.config import TrainConfig
from spikebridge.data.convert import convert_video_folder
from spikebridge.data.loading import DataBundle
from spikebridge.data.video import ESUCF101Dataset
from spikebridge.errors import ConfigError, TransferError
from spikebridge.models.crnn import CRNN, filter_state_dict
from spikebridge.train.engine import evaluate, fit

SIZE = (40, 54)  # 40x54 -> 18x25 -> 8x12 -> 3x5 -> 1x2 (the paper's 256x342 is 14x20 at the end)
TINY = dict(input_size=SIZE, channels=(4, 8, 8, 8), fc_sizes=(32, 16), lstm_hidden=16)


def tiny(neuron="relu", in_channels=3, num_classes=5, **kw):
    return sb.create_model("crnn", num_classes=num_classes, neuron=neuron, in_channels=in_channels, **{**TINY, **kw})


def test_paper_layout_17920():
    """arXiv:2203.01158: 8-16-32-64 convs (k5 s2, then k3 s2) on 256x342 frames give 64x14x20 = 17920
    features, then FC 17920 -> 1024 -> 512, LSTM hidden 256."""
    ann = sb.create_model("crnn", num_classes=101, neuron="relu", in_channels=3)
    enc = ann.encoder
    assert [getattr(enc, f"conv{i}").out_channels for i in range(1, 5)] == [8, 16, 32, 64]
    assert [getattr(enc, f"conv{i}").kernel_size for i in range(1, 5)] == [(5, 5), (3, 3), (3, 3), (3, 3)]
    assert all(getattr(enc, f"conv{i}").stride == (2, 2) for i in range(1, 5))
    assert enc.feature_shape == (64, 14, 20)
    assert (enc.fc1.in_features, enc.fc1.out_features, enc.fc2.out_features) == (17920, 1024, 512)
    assert (ann.lstm.input_size, ann.lstm.hidden_size, ann.lstm.num_layers) == (512, 256, 1)
    with torch.no_grad():
        assert ann.eval()(torch.rand(2, 1, 3, 256, 342)).shape == (1, 101)
    # the FC input follows the frame size given at construction
    assert tiny().encoder.feature_shape == (8, 1, 2)
    assert sb.create_model("crnn", neuron="relu", input_size=(128, 171)).encoder.feature_shape == (64, 6, 9)


@pytest.mark.parametrize("neuron,channels", [("relu", 3), ("lif", 2), ("liaf", 2)])
def test_shapes_and_backward(neuron, channels):
    torch.manual_seed(0)
    model = tiny(neuron, channels)
    x = torch.rand(6, 3, channels, *SIZE)  # [T, B, C, H, W]
    out = model(x)
    assert out.shape == (3, 5)
    F.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder.conv1.weight.grad.abs().sum() > 0  # gradients reach the first conv through the neurons
    assert model.spiking == (neuron != "relu")


def test_encoder_neurons_are_spiking_and_decoder_analog():
    model = tiny("lif", 2).eval()
    seen = {}
    for name in ("act1", "fc_act1"):
        getattr(model.encoder, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    model(torch.rand(4, 2, 2, *SIZE))
    for out in seen.values():
        assert set(out.unique().tolist()) <= {0.0, 1.0}  # LIF spikes
    assert not hasattr(model.encoder, "fc_act2")  # the last FC is linear: the LSTM reads an analog embedding
    assert isinstance(model.lstm, torch.nn.LSTM) and isinstance(model.fc, torch.nn.Linear)
    assert not any(isinstance(m, (sb.LIF, sb.LIAF)) for m in [*model.lstm.modules(), *model.fc.modules()])


@pytest.mark.parametrize("neuron", ["relu", "lif"])
def test_readout_is_the_lstm_at_the_last_step(neuron):
    """The logits of frames 1..k equal the classifier on the LSTM's k-th output for the full clip:
    the model is causal, time-major, and classifies from the last step."""
    torch.manual_seed(1)
    model = tiny(neuron, 3 if neuron == "relu" else 2).eval()
    x = torch.rand(5, 2, model.encoder.conv1.in_channels, *SIZE)
    captured = {}
    model.lstm.register_forward_hook(lambda m, i, o: captured.__setitem__("seq", o[0]))
    with torch.no_grad():
        full = model(x)
        sequence = captured["seq"]
        assert sequence.shape == (5, 2, 16)
        for k in range(1, 6):
            torch.testing.assert_close(model(x[:k]), model.fc(sequence[k - 1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, model.fc(sequence[-1]))


def test_ann_and_snn_have_the_same_parameter_names():
    ann = tiny("relu", 3)
    snn = tiny("lif", 2)
    ann_state, snn_state = ann.state_dict(), snn.state_dict()
    assert list(ann_state) == list(snn_state)
    differ = [k for k in ann_state if ann_state[k].shape != snn_state[k].shape]
    assert differ == ["encoder.conv1.weight"]  # only the input channels: 3 colours vs 2 polarities
    assert sb.list_models(sequence=True) == ["crnn"] and "crnn" not in sb.list_models(sequence=False)
    # same channels: a strict load works both ways
    snn_rgb = tiny("liaf", 3)
    assert not snn_rgb.load_state_dict(ann_state, strict=True).missing_keys


def _trained_like(model):
    """Give every tensor a recognisable non-initial value (as after training)."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for name, b in model.named_buffers():
            if "running" in name:
                b.add_(torch.rand_like(b))
    return model


@pytest.mark.parametrize("parts", [("encoder", "decoder"), ("encoder",), ("decoder",)])
def test_transfer_parts(parts):
    ann = _trained_like(tiny("relu", 3))
    snn = tiny("lif", 2)
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    source = filter_state_dict(ann, parts)
    report = sb.transfer(source, snn, first_layer="signed_polarity", min_match=0.1)
    after, ann_state = snn.state_dict(), ann.state_dict()
    encoder_keys = [k for k in after if k.startswith("encoder.")]
    decoder_keys = [k for k in after if k.startswith(("lstm.", "fc."))]
    assert len(encoder_keys) + len(decoder_keys) == len(after)
    moved = [k for k in after if k != "encoder.conv1.weight" and k in source]
    assert set(report.matched) == set(moved) and not report.mismatched and not report.unexpected
    for key in after:
        if key == "encoder.conv1.weight":
            continue
        if key in source:
            assert torch.equal(after[key], ann_state[key]), key
        else:
            assert key in report.missing and torch.equal(after[key], before[key]), key
    if "encoder" in parts:  # the first conv: ON = grey-equivalent kernel, OFF = its negative
        grey = ann_state["encoder.conv1.weight"].sum(1)
        torch.testing.assert_close(after["encoder.conv1.weight"][:, 0], grey)
        torch.testing.assert_close(after["encoder.conv1.weight"][:, 1], -grey)
        assert report.adapted == ["encoder.conv1.weight"]
    else:
        assert torch.equal(after["encoder.conv1.weight"], before["encoder.conv1.weight"]) and not report.adapted
    expected = {("encoder", "decoder"): len(after), ("encoder",): len(encoder_keys), ("decoder",): len(decoder_keys)}
    assert len(report.transferred) == expected[parts]
    assert snn(torch.rand(3, 2, 2, *SIZE)).shape == (2, 5)


def test_transfer_full_skip_and_default_min_match():
    ann = _trained_like(tiny("relu", 3))
    snn = tiny("lif", 2)
    init_conv = snn.encoder.conv1.weight.detach().clone()
    report = sb.transfer(ann, snn, first_layer="skip")
    assert report.reinitialised == ["encoder.conv1.weight"] and torch.equal(snn.encoder.conv1.weight, init_conv)
    assert torch.equal(snn.lstm.weight_hh_l0, ann.lstm.weight_hh_l0)
    # the decoder alone is a small share of the tensors: the default min_match refuses it
    with pytest.raises(TransferError, match="match"):
        sb.transfer(filter_state_dict(ann.state_dict(), ("decoder",)), tiny("lif", 2))


def test_filter_state_dict():
    state = tiny().state_dict()
    enc, dec = filter_state_dict(state, ("encoder",)), filter_state_dict(state, "decoder")
    assert set(enc) | set(dec) == set(state) and not set(enc) & set(dec)
    assert set(dec) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0", "fc.weight", "fc.bias"}
    ddp = {f"module.{k}": v for k, v in state.items()}
    assert set(filter_state_dict(ddp, ("encoder",))) == set(enc)
    assert filter_state_dict(state) == dict(state)
    with pytest.raises(ConfigError, match="unknown transfer parts"):
        filter_state_dict(state, ("head",))
    assert CRNN.PART_PREFIXES == {"encoder": ("encoder.",), "decoder": ("lstm.", "fc.")}


def test_crnn_errors():
    model = tiny("lif", 2)
    with pytest.raises(ConfigError, match=r"\[T, B, C, H, W\]"):
        model(torch.rand(2, 2, *SIZE))
    with pytest.raises(ConfigError, match="40x54"):
        model(torch.rand(2, 1, 2, 32, 43))
    with pytest.raises(ConfigError, match="too small"):
        sb.create_model("crnn", neuron="relu", input_size=(32, 43))
    with pytest.raises(ConfigError, match="input_size"):
        sb.create_model("crnn", neuron="relu", input_size=(64,))


# ------------------------------------------------------------------------------------------------
# end to end: clips -> events (convert_video_folder) -> ES-UCF101 dataset -> engine.fit
# ------------------------------------------------------------------------------------------------

CLIP_SIZE = (64, 86)  # end to end: big enough a grid (2x4 after the convs) to learn where things move


def _moving_square_clip(rng, direction, n=36, h=CLIP_SIZE[0], w=CLIP_SIZE[1], side=14):
    """RGB frames of a coloured square moving left (-1) or right (+1) over a textured background."""
    background = rng.integers(10, 50, (h, w, 3)).astype(np.uint8)
    colour = rng.integers(170, 256, 3).astype(np.uint8)
    row = int(rng.integers(4, h - side - 4))
    start = int(rng.integers(4, 18)) if direction > 0 else int(rng.integers(w - side - 18, w - side - 4))
    frames = []
    for i in range(n):
        frame = background.copy()
        col = start + direction * (i * 36) // n
        frame[row:row + side, col:col + side] = colour
        frames.append(frame)
    return np.stack(frames)


@pytest.fixture(scope="module")
def clip_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rgb = {}
    for label, (cls, direction) in enumerate([("left", -1), ("right", 1)]):
        for i in range(12):
            frames = _moving_square_clip(rng, direction)
            clip = root / "jpegs" / cls / f"v_{cls}_g{i:02d}"
            clip.mkdir(parents=True)
            for j, frame in enumerate(frames):
                Image.fromarray(frame).save(clip / f"frame{j + 1:06d}.png")
            rgb[f"{cls}/v_{cls}_g{i:02d}"] = (frames, label)
    report = convert_video_folder(root / "jpegs", root / "events", progress=False)
    assert report.converted == 24 and not report.failed
    return root, rgb


def test_train_end_to_end_ann_rgb_then_snn_events(clip_tree):
    """ANN on RGB frames -> full transfer -> SNN fine-tuned on the events of the same clips with the
    engine; both learn the motion direction (chance is 50 %)."""
    root, rgb = clip_tree
    steps = 8
    torch.manual_seed(0)
    # the ANN: RGB frames 1..8 of the 31 sampled, [T, B, 3, H, W] in [0, 1]
    keys = sorted(rgb)
    idx = np.rint(np.linspace(0, 35, 31)).astype(int)[:steps]
    frames = torch.stack([torch.from_numpy(rgb[k][0][idx]).permute(0, 3, 1, 2).float() / 255 for k in keys], 1)
    labels = torch.tensor([rgb[k][1] for k in keys])
    ann = tiny("relu", 3, num_classes=2, input_size=CLIP_SIZE)
    opt = torch.optim.Adam(ann.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(ann(frames), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    ann.eval()
    with torch.no_grad():
        assert (ann(frames).argmax(1) == labels).float().mean() >= 0.9

    # the SNN on the converted events, through the dataset and the engine
    events = ESUCF101Dataset(root / "events", n_steps=steps)
    assert events[0][0].shape == (steps, 2, *CLIP_SIZE)
    half = len(events) // 2
    order = torch.randperm(len(events), generator=torch.Generator().manual_seed(0)).tolist()
    train = torch.utils.data.Subset(events, order[:half])
    test = torch.utils.data.Subset(events, order[half:])
    bundle = DataBundle(name="moving-squares", train=train, test=test, num_classes=2, in_channels=2, kind="events")
    snn = tiny("lif", 2, num_classes=2, input_size=CLIP_SIZE)
    report = sb.transfer(ann, snn, first_layer="signed_polarity")
    assert report.match_fraction == 1.0
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=4, schedule="constant")
    result = fit(snn, bundle, cfg, name="snn", run_dir=None, progress=False, evaluate_first=True)
    assert len(result.curve) == 4
    assert result.history[-1]["train_loss"] < result.history[1]["train_loss"]  # [0] is the pre-training point
    assert result.best_acc >= 0.75
    assert evaluate(snn, bundle)["acc"] == result.final_acc


def test_pipelines_build_the_crnn_for_the_datas_frame_size(tmp_path):
    """The CRNN's encoder depends on the frame size: the pipelines build it for the data's frames
    (not the paper's 256x342), store the size in the checkpoint, and rebuild it from there."""
    from spikebridge.config import PipelineConfig, load_config
    from spikebridge.data.static import TensorSplit
    from spikebridge.pipelines import build_model, model_meta
    from spikebridge.restore import load_model
    from spikebridge.train.checkpoint import save_checkpoint

    frames = torch.randint(0, 2, (6, 3, 2, 64, 86), dtype=torch.uint8)  # [N, T, 2, H, W]
    split = TensorSplit(frames, torch.arange(6) % 2)
    bundle = DataBundle(name="clips", train=split, test=split, num_classes=2, in_channels=2, kind="events")
    cfg = load_config(PipelineConfig, None, {"model.name": "crnn"})
    snn = build_model(cfg, bundle, cfg.neuron, 3)
    assert snn.input_size == (64, 86) and snn.encoder.feature_shape == (64, 2, 4)
    meta = model_meta(cfg, bundle, cfg.neuron, 3)
    assert meta["model"]["options"] == {"input_size": [64, 86]}
    save_checkpoint(tmp_path, "last", snn, meta)
    again = load_model(tmp_path / "last.json")
    assert again.input_size == (64, 86)
    for key, value in snn.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    x = frames[:2].transpose(0, 1).float()
    snn.eval(), again.eval()
    torch.testing.assert_close(snn(x), again(x))


def test_accuracy_at_each_T_runs_the_crnn_on_each_prefix_and_nir_export_refuses_its_lstm(tmp_path):
    """``evaluate``'s accuracy-vs-T of a CRNN SNN: one pass gives the logits of every prefix of
    frames, equal to running the model on that prefix (its readout is the LSTM's last step, not a
    mean over steps). NIR has no LSTM node: export refuses in one ConfigError."""
    from spikebridge.conversion import outputs_at_each_T
    from spikebridge.export import export_nir

    torch.manual_seed(0)
    snn = tiny("lif", 2, num_classes=3, input_size=CLIP_SIZE).eval()
    x = (torch.rand(5, 2, 2, *CLIP_SIZE) < 0.2).float()
    per_T = outputs_at_each_T(snn, x, 5)
    assert per_T.shape == (5, 2, 3)
    for t in range(1, 6):
        torch.testing.assert_close(per_T[t - 1], snn(x[:t]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="LSTM.*no NIR node"):
        export_nir(snn, (2, *CLIP_SIZE), tmp_path / "crnn.nir")


def test_activity_of_a_crnn_counts_its_clips_and_their_frames():
    """``evaluate``'s activity on a CRNN: its input [T, B, ...] holds B clips of T frames (the T
    frames were counted as samples and the model's T as the steps: wrong rates, SOPs and energy)."""
    from spikebridge.analysis.metrics import measure_activity

    torch.manual_seed(0)
    snn = tiny("lif", 2, num_classes=3, input_size=CLIP_SIZE).eval()
    x = (torch.rand(5, 2, 2, *CLIP_SIZE) < 0.3).float()
    spikes = []
    handle = snn.encoder.act1.register_forward_hook(lambda _m, _i, out: spikes.append(out))
    report = measure_activity(snn, [x])
    handle.remove()
    assert (report.samples, report.time_steps) == (2, 5)
    act1 = next(n for n in report.neuron_layers if n.name == "encoder.act1")
    assert act1.firing_rate == pytest.approx(float(spikes[0].mean()))
    conv1 = next(s for s in report.synaptic_layers if s.name == "encoder.conv1")
    assert conv1.frames_per_sample == 5
