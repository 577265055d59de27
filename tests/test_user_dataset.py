"""Training on any torch Dataset of event frames (a Tonic dataset, say): ``sb.dataset_bundle`` +
``pipelines.piped(cfg, events=...)``. The test's dataset yields what Tonic's ``ToFrame`` yields:
numpy ``int16`` arrays ``[T, 2, H, W]`` and integer labels, with a ``classes`` list."""
import json

import numpy as np
import pytest
import torch

import spikebridge as sb
from spikebridge.config import PipelineConfig, load_config
from spikebridge.data.datasets import open_dataset
from spikebridge.errors import ConfigError, DataError
from spikebridge.pipelines import piped, pipes

pytestmark = pytest.mark.usefixtures("one_thread")


class TonicLike(torch.utils.data.Dataset):
    """ES-MNIST event frames as numpy int16 arrays (Tonic's ToFrame output type)."""

    classes = [str(d) for d in range(10)]

    def __init__(self, split) -> None:
        self.frames = split.images.numpy().astype(np.int16)
        self.labels = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.frames[index], self.labels[index]


@pytest.fixture(scope="module")
def es_mnist():
    return open_dataset("es-mnist", limit_train=320, limit_test=160)


def test_dataset_bundle_reads_frames_as_given(es_mnist):
    train, test = TonicLike(es_mnist.train), TonicLike(es_mnist.test)
    bundle = sb.dataset_bundle(train, test, name="tonic-like")
    assert (bundle.kind, bundle.num_classes, bundle.in_channels, bundle.time_steps) == ("events", 10, 2, train.frames.shape[1])
    x, y = bundle.train[3]
    assert x.dtype == torch.float32 and torch.equal(x, torch.as_tensor(train.frames[3]).float()) and y == train.labels[3]


def test_dataset_bundle_takes_tonics_polarity_order(es_mnist):
    """Tonic's ToFrame puts OFF events (polarity 0) in channel 0, spikebridge ON: ``polarity="off_on"``
    swaps them, so ``bridge.first_layer: signed_polarity`` gives ON the ANN's kernel (it got OFF)."""
    ours = TonicLike(es_mnist.train)
    tonic_order = TonicLike(es_mnist.train)
    tonic_order.frames = tonic_order.frames[:, :, ::-1].copy()  # OFF first, as ToFrame writes them
    bundle = sb.dataset_bundle(tonic_order, tonic_order, polarity="off_on")
    assert torch.equal(bundle.train[3][0], torch.as_tensor(ours.frames[3]).float())
    with pytest.raises(ConfigError, match="polarity must be 'on_off' or 'off_on'"):
        sb.dataset_bundle(ours, ours, polarity="on-off")
    with pytest.raises(DataError, match="orders the two channels of event frames; the samples are \\[1, 8, 8\\]"):
        sb.dataset_bundle([(np.zeros((1, 8, 8)), 0)], [(np.zeros((1, 8, 8)), 0)], num_classes=2, polarity="off_on")


def test_piped_trains_on_a_user_dataset(es_mnist, tmp_path):
    cfg = load_config(PipelineConfig, None, {
        "run.out": str(tmp_path / "run"), "run.device": "cpu", "run.progress": False, "data.limit_train": 320,
        "data.limit_test": 160, "ann.epochs": 2, "events.finetune.epochs": 1, "events.compare_first_layer": False,
        "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 64})
    events = sb.dataset_bundle(TonicLike(es_mnist.train), TonicLike(es_mnist.test), name="tonic-like")
    summary = piped(cfg, events=events, baseline=False)
    assert summary["dataset"] == "tonic-like" and summary["events_data"] == "tonic-like"
    run = {r["name"]: r for r in summary["runs"]}["snn_events_pretrained"]
    assert run["best_acc"] > 0.3  # chance: 0.1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["T"] == es_mnist.time_steps


def test_bad_user_datasets_are_one_line_errors(es_mnist):
    frames = TonicLike(es_mnist.train)
    with pytest.raises(DataError, match="give num_classes"):
        sb.dataset_bundle([(np.zeros((4, 2, 8, 8)), 0)], [(np.zeros((4, 2, 8, 8)), 0)])
    with pytest.raises(DataError, match=r"\[T, C, H, W\] event frames or \[C, H, W\] images, got shape \[8, 8\]"):
        sb.dataset_bundle([(np.zeros((8, 8)), 0)], [(np.zeros((8, 8)), 0)], num_classes=2)
    with pytest.raises(DataError, match="test split is empty"):
        sb.dataset_bundle(frames, [], num_classes=10)
    images = sb.dataset_bundle([(np.zeros((1, 8, 8)), 0)], [(np.zeros((1, 8, 8)), 0)], num_classes=2)
    with pytest.raises(ConfigError, match="not \\[T, C, H, W\\] event frames"):
        piped(load_config(PipelineConfig), events=images)


def test_pipes_trains_on_user_images(tmp_path):
    digits = open_dataset("mnist5k", limit_train=640, limit_test=160)

    class Images(torch.utils.data.Dataset):  # [1, 28, 28] float images in [0, 1], as a user's transform gives
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split.labels)

        def __getitem__(self, i):
            return self.split.images[i].float() / 255, int(self.split.labels[i])

    bundle = sb.dataset_bundle(Images(digits.train), Images(digits.test), num_classes=10, name="my-digits")
    assert (bundle.kind, bundle.in_channels) == ("static", 1)
    cfg = load_config(PipelineConfig, None, {
        "run.out": str(tmp_path / "run"), "run.device": "cpu", "run.progress": False, "ann.epochs": 3,
        "finetune.epochs": 1, "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 64})
    summary = pipes(cfg, bundle=bundle)  # no baseline unless asked for, as the CLI's --baseline
    runs = {r["name"]: r for r in summary["runs"]}
    assert list(runs) == ["ann", "snn_pretrained"]
    assert summary["dataset"] == "my-digits" and runs["ann"]["best_acc"] > 0.3 and runs["snn_pretrained"]["best_acc"] > 0.3


def test_python_runs_are_validated_and_guarded_as_the_cli_runs(tmp_path):
    """``pipes(cfg)`` from Python: a bad value is a one-line ConfigError before any work or file;
    a second run into the same ``cfg.run.out`` is refused (advice in Python terms) unless
    ``overwrite=True`` or ``cfg.run.resume``; a run that fails when its data opens leaves nothing."""
    from spikebridge.errors import ConfigError, DataError, OutputError

    def cfg(**values):
        return load_config(PipelineConfig, None, {
            "run.out": str(tmp_path / "run"), "run.device": "cpu", "run.progress": False, "run.threads": 1,
            "data.limit_train": 64, "data.limit_test": 32, "ann.epochs": 1, "ann.batch_size": 32, "finetune.epochs": 1,
            "finetune.batch_size": 32, "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 32, **values})

    for values, message in (({"model.T": 0}, "model.T must be an integer >= 1"),
                            ({"neuron.kind": "relu"}, "neuron.kind is the SNN's neuron and must spike")):
        with pytest.raises(ConfigError, match=message):
            pipes(cfg(**values))
        assert not (tmp_path / "run").exists()
    mine = cfg(**{"run.threads": 2})
    before = torch.get_num_threads()
    first = pipes(mine)
    assert mine == cfg(**{"run.threads": 2}) and mine.model.name == "auto"  # the caller's cfg is not changed
    assert torch.get_num_threads() == before  # run.threads applied to the run alone
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    with pytest.raises(OutputError, match=r"holds an earlier pipes run; cfg\.run\.resume=True continues it, "
                                          r"overwrite=True replaces it"):
        pipes(cfg())
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == written  # untouched
    assert pipes(cfg(**{"run.resume": True, "run.threads": 2}))["runs"] == first["runs"]  # resumed: nothing left to train
    assert pipes(cfg(**{"run.threads": 2}), overwrite=True)["runs"][-1]["best_acc"] == first["runs"][-1]["best_acc"]
    with pytest.raises(DataError):
        pipes(cfg(**{"run.out": str(tmp_path / "other"), "data.name": str(tmp_path / "no-such-data")}))
    assert not (tmp_path / "other").exists()


def test_python_pipes_takes_its_ann_module_s_architecture_and_refuses_mismatched_data(tmp_path):
    """``pipes(cfg, ann=create_model("vgg11", ...))`` fine-tunes a vgg11 SNN (not the model auto
    picks for the data); another module, an event bundle for pipeS, or splits of other T: one line."""
    from spikebridge.errors import ConfigError, DataError

    cfg = load_config(PipelineConfig, None, {
        "run.out": str(tmp_path / "run"), "run.device": "cpu", "run.progress": False, "run.threads": 1,
        "data.limit_train": 64, "data.limit_test": 32, "finetune.epochs": 1, "finetune.batch_size": 32,
        "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 32})
    summary = pipes(cfg, ann=sb.create_model("vgg11", num_classes=10, neuron="relu", in_channels=1))
    assert summary["ann"] == "vgg11" and summary["transfer"]["match_fraction"] == 1.0
    with pytest.raises(ConfigError, match="is not a registry model"):
        pipes(cfg, ann=torch.nn.Linear(784, 10), overwrite=True)
    frames = torch.zeros(8, 4, 2, 8, 8)
    pairs = [(frames[i], 0) for i in range(8)]
    events = sb.dataset_bundle(pairs, pairs, num_classes=2)
    with pytest.raises(ConfigError, match=r"holds events samples \[T, C, H, W\]; pipeS trains on static images"):
        pipes(cfg, bundle=events, overwrite=True)
    with pytest.raises(DataError, match=r"the test samples are \[8, 2, 8, 8\], the training samples \[4, 2, 8, 8\]"):
        sb.dataset_bundle(pairs, [(torch.zeros(8, 2, 8, 8), 0)] * 2, num_classes=2)


def test_a_dataset_of_one_class_is_refused_and_a_folder_around_one_is_no_video_set(tmp_path, capsys):
    """A folder holding one ImageNet-style image set without splits (``wrap/holiday/<class>/*.png``)
    was read as a video dataset of one class whose clips were the image classes: a CRNN trained
    to 100% on nothing. One class of any layout is refused; the folder is read as the image set it
    holds (refused for its missing splits, as that set itself is), and beside another set it is
    not offered as one to pass."""
    import shutil

    import _layouts as layouts
    from spikebridge import cli

    one = layouts.image_folders(tmp_path / "one", size=(24, 24), classes=1, train_per_class=8)
    assert cli.main(["pipes", "--data", str(one), "--out", str(tmp_path / "r"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds 1 class (n00000000); a classifier needs 2 or more" in err, err
    photos = layouts.image_folders(tmp_path / "photos", size=(24, 24), classes=3)
    shutil.copytree(photos / "train", tmp_path / "wrap" / "holiday")
    for argv in (["inspect", str(tmp_path / "wrap")], ["pipes", "--data", str(tmp_path / "wrap"), "--plan"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "holiday: class folders without train/ and val/ splits" in err, err
    # beside an ImageNet-layout set it was a video dataset of 2 classes (the two folders); now the
    # set is the one dataset there, and with two sets only those two are offered (not holiday)
    from spikebridge.data.disk import locate_dataset

    shutil.copytree(photos, tmp_path / "wrap" / "photos")
    assert locate_dataset(tmp_path / "wrap") == (str(tmp_path / "wrap" / "photos"), "image-folders")
    shutil.copytree(photos, tmp_path / "wrap" / "more")
    with pytest.raises(DataError, match=r"holds 2 datasets: more \(image-folders\), photos \(image-folders\);"):
        locate_dataset(tmp_path / "wrap")
    shutil.copytree(one, tmp_path / "wrap" / "one")  # a one-class set is not offered either
    with pytest.raises(DataError, match=r"holds 2 datasets: more \(image-folders\), photos \(image-folders\);"):
        locate_dataset(tmp_path / "wrap")
    dvs = layouts.dvs_folder(tmp_path / "dvs", classes=["airplane"], per_class=4, n_events=50)
    with pytest.raises(DataError, match=r"holds 1 class \(airplane\); a classifier needs 2 or more"):
        open_dataset(str(dvs))
    # a video set stays one when a later class folder also holds a poster image or an annotation folder
    clips = layouts.video_clips(tmp_path / "clips", classes=2, clips_per_class=2, frames=3, size=(16, 16))
    later = sorted(p for p in clips.iterdir() if p.is_dir())[1]
    shutil.copy(next(later.rglob("*.jpg")), later / "poster.jpg")
    (later / "Annotations").mkdir()
    (later / "Annotations" / "notes.txt").write_text("x")
    assert locate_dataset(clips) == (str(clips), "video-clips")
    assert not (tmp_path / "r").exists()
