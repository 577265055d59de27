"""``evaluate`` / ``export`` as a new user meets them: a wrong ``--input-shape``, a checkpoint of a
spikified user class (the advice names evaluate's own flag; a refusal leaves no folder), a run or
phase folder or a tensors file as CKPT, and what ``--help`` says about the outputs."""
import json
import re
import shutil

import nir
import numpy as np
import pytest
import torch

import spikebridge as sb
from test_byo_cli import NET_SOURCE
from spikebridge.cli import main
from spikebridge.errors import CheckpointError, ConfigError, DataError
from spikebridge.export import export_nir
from spikebridge.restore import import_ann, locate_checkpoint, model_from_checkpoint, spikified_meta
from spikebridge.train.checkpoint import load_checkpoint, save_checkpoint
from spikebridge.train.engine import checkpoint_path

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--data", "mnist5k", "--samples", "16", "--T-max", "1", "--no-progress", "--device", "cpu"]


def _registry(neuron: str, T: int):
    torch.manual_seed(0)
    model = sb.create_model("cnn", num_classes=10, neuron=neuron, T=T, in_channels=1)
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": T}, "neuron": {"kind": neuron},
            "data": "mnist5k"}
    return model, meta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as pipes --baseline leaves it: ``ann``, ``snn_pretrained``, ``snn_scratch``."""
    folder = tmp_path_factory.mktemp("run")
    for phase, neuron, T in (("ann", "relu", 1), ("snn_pretrained", "lif", 2), ("snn_scratch", "lif", 2)):
        save_checkpoint(checkpoint_path(folder, phase).parent, "last", *_registry(neuron, T), epoch=1)
    return folder


@pytest.fixture(scope="module")
def user_snn(tmp_path_factory):
    """A checkpoint of ``spikify(TinyNet())`` (as finetune --ann net.py:TinyNet writes it)."""
    folder = tmp_path_factory.mktemp("user")
    source = folder / "net.py"
    source.write_text(NET_SOURCE)
    spec = f"{source}:TinyNet"
    snn = sb.spikify(import_ann(spec), sb.NeuronConfig(), T=2, input_ndim=4)
    meta = spikified_meta(spec, {}, sb.NeuronConfig(), num_classes=10, in_channels=1, T=2, input_ndim=4, data="mnist5k")
    return save_checkpoint(folder / "snn", "last", snn, meta), spec


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spikebridge: error: "), err
    return err


# 1. export --input-shape that does not fit: one line naming the shape given and the one expected
@pytest.mark.parametrize("shape", ["3,28,28", "28,28", "1,28,28,1"])
def test_export_refuses_an_input_shape_of_other_channels_or_dims(run, tmp_path, capsys, shape):
    target = tmp_path / "net.nir"
    assert main(["export", str(checkpoint_path(run, "snn_pretrained")), "--input-shape", shape, "--out", str(target)]) == 2
    err = _one_line_error(capsys)
    assert f"input shape {shape} does not fit the model, which takes 1,H,W (its first layer 'conv1' reads 1" in err
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_export_input_shapes_a_layer_cannot_take_and_non_positive_ones(user_snn, tmp_path, capsys):
    path, spec = user_snn
    export = ["export", str(path), "--code", spec, "--out", str(tmp_path / "net.nir"), "--input-shape"]
    assert main([*export, "1,20,20"]) == 2  # TinyNet's fc1 needs 28x28
    assert "input shape 1,20,20 does not fit the model (mat1 and mat2 shapes cannot be multiplied" in _one_line_error(capsys)
    assert main([*export, "1,0,28"]) == 2
    assert "--input-shape must be positive integers like 1,28,28, got '1,0,28'" in _one_line_error(capsys)
    snn = model_from_checkpoint(path, code=spec)[0]
    with pytest.raises(ConfigError, match=r"input shape 3,28,28 does not fit the model, which takes 1,H,W"):
        export_nir(snn, (3, 28, 28), tmp_path / "lib.nir")
    assert list(tmp_path.iterdir()) == []
    assert main([*export, "1,28,28"]) == 0  # the right shape exports
    assert tuple(nir.read(tmp_path / "net.nir").nodes["input"].input_type["input"]) == (1, 28, 28)


# 2. a spikified user class: evaluate's advice names a flag evaluate has, and a refusal leaves no folder
def test_evaluate_advice_for_a_user_class_names_a_flag_that_works(user_snn, tmp_path, capsys):
    path, spec = user_snn
    out = tmp_path / "new" / "evaluation"
    assert main(["evaluate", str(path), *QUICK, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "needs Python code (TinyNet from" in err and "name it with --code FILE.py:Class or pass --trust-code" in err
    # --ann FILE.py:Class means the ANN to convert in evaluate: without its weights it is refused, pointing at --code
    assert main(["evaluate", str(path), *QUICK, "--out", str(out), "--ann", spec]) == 2
    assert "needs --ann-weights" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()  # neither refusal left a folder
    assert main(["evaluate", str(path), *QUICK, "--out", str(out), "--code", spec.replace("TinyNet", "Other")]) == 2
    assert "--code names class Other, but this checkpoint needs TinyNet" in _one_line_error(capsys)
    assert main(["evaluate", str(path), *QUICK, "--out", str(out), "--code", spec]) == 0  # the advice works
    assert json.loads((out / "evaluation.json").read_text())["checkpoint"] == str(path)


def test_a_failed_evaluation_removes_only_a_folder_it_made(run, tmp_path, monkeypatch, capsys):
    import spikebridge.cli.evaluate as evaluate

    def fail(model, bundle, out, **kwargs):
        (out / "accuracy_vs_T.png").write_bytes(b"half")  # a figure written before the failure
        raise DataError("sample 3 is damaged")

    monkeypatch.setattr(evaluate, "evaluate_model", fail)
    ckpt = str(checkpoint_path(run, "snn_pretrained"))
    assert main(["evaluate", ckpt, *QUICK, "--out", str(tmp_path / "a" / "b")]) == 2
    assert "sample 3 is damaged" in _one_line_error(capsys) and list(tmp_path.iterdir()) == []
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("keep")
    assert main(["evaluate", ckpt, *QUICK, "--out", str(kept)]) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["accuracy_vs_T.png", "notes.txt"]  # not ours to remove


# 3. CKPT: a phase folder, a run folder, a tensors file
def test_run_and_phase_folders_and_tensors_files_resolve_to_their_checkpoint(run, tmp_path):
    pretrained, scratch = checkpoint_path(run, "snn_pretrained"), checkpoint_path(run, "snn_scratch")
    assert locate_checkpoint(run / "snn_scratch") == scratch  # a phase folder: the checkpoint it keeps
    assert load_checkpoint(locate_checkpoint(scratch.parent)).path == scratch  # its checkpoints folder, as before
    with pytest.raises(CheckpointError, match=re.escape(f"{run} holds the checkpoints of 3 phases (ann, snn_pretrained, "
                                                        f"snn_scratch): give one of them, e.g. {run / 'snn_pretrained'}")):
        locate_checkpoint(run)
    single = tmp_path / "pipes"  # ann + one SNN phase: the SNN's
    for phase in ("ann", "snn_pretrained"):
        shutil.copytree(run / phase, single / phase)
    assert locate_checkpoint(single) == checkpoint_path(single, "snn_pretrained")
    shutil.copytree(run / "ann", tmp_path / "pretrain" / "ann")  # one phase (an ANN): that one
    assert locate_checkpoint(tmp_path / "pretrain") == checkpoint_path(tmp_path / "pretrain", "ann")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: expected one checkpoint \.json in the folder, found none; "
                                              r"give a checkpoint \.json, a run's phase folder"):
        locate_checkpoint(tmp_path / "empty")
    weights = pretrained.parent / "last-e0001.safetensors"  # a tensors file: its checkpoint's model
    model, meta, ckpt = model_from_checkpoint(weights)
    assert ckpt.path == pretrained and meta["model"]["T"] == 2 and model.spiking
    assert load_checkpoint(weights).meta == {}  # loaded as weights alone (--ann-weights), as before
    bare = tmp_path / "last-e0001.safetensors"  # the tensors without their JSON
    shutil.copy(weights, bare)
    with pytest.raises(CheckpointError, match=r"a tensors file without its checkpoint \.json, which records the model; "
                                              r"give the checkpoint's NAME\.json"):
        model_from_checkpoint(bare)


def test_evaluate_and_export_take_a_run_folder_and_a_tensors_file(run, tmp_path, capsys):
    single = tmp_path / "pipes"
    for phase in ("ann", "snn_pretrained"):
        shutil.copytree(run / phase, single / phase)
    assert main(["evaluate", str(single), *QUICK, "--out", str(tmp_path / "e1")]) == 0
    result = json.loads((tmp_path / "e1" / "evaluation.json").read_text())
    assert result["checkpoint"] == str(checkpoint_path(single, "snn_pretrained")) and result["spiking"]
    weights = single / "snn_pretrained" / "checkpoints" / "last-e0001.safetensors"
    assert main(["evaluate", str(weights), *QUICK]) == 0  # default --out: beside the checkpoint's .json
    assert (weights.parent / "evaluation" / "evaluation.json").is_file()
    assert main(["evaluate", str(run), *QUICK, "--out", str(tmp_path / "e2")]) == 2
    assert "holds the checkpoints of 3 phases (ann, snn_pretrained, snn_scratch)" in _one_line_error(capsys)
    assert not (tmp_path / "e2").exists()
    assert main(["export", str(single), "--input-shape", "1,28,28", "--out", str(tmp_path / "net.nir")]) == 0
    assert (tmp_path / "net.nir").is_file()


# 4. --help says what is written, and where by default
def test_help_says_what_is_written_and_where(capsys):
    def help_of(command: str) -> str:
        assert main([command, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())

    text = help_of("export")
    assert "--out FILE.nir the NIR file to write;" in text and "output folder" not in text
    assert "usage: spikebridge export [-h] --out FILE.nir" in text  # shown as required
    text = help_of("evaluate")
    assert ("--out DIR folder for evaluation.json, evaluation.md and the figures (default: an 'evaluation' folder "
            "beside the checkpoint's .json") in text and "default: None" not in text
    assert "--code FILE.py:ClassName" in text and "loads only with --code FILE.py:ClassName" in text


# 6. evaluate / export read what the run trained on: a folder at its --set data.image_size, found
#    by its absolute path from any working directory (before: 224 px, or "dataset not found")
def test_evaluate_and_export_use_the_image_size_and_folder_the_checkpoint_was_trained_on(tmp_path, monkeypatch, capsys):
    from _layouts import image_folders

    image_folders(tmp_path / "photos", size=(120, 120), classes=2, train_per_class=8, val_per_class=4)
    monkeypatch.chdir(tmp_path)
    assert main(["pipes", "--data", "photos", "--model", "cnn", "--set", "data.image_size=32", "--T", "2",
                 "--out", "run", "--device", "cpu", "--no-progress", "--set", "run.threads=1",
                 "--set", "ann.batch_size=8", "--set", "finetune.batch_size=8", "--set", "ann.epochs=1",
                 "--set", "finetune.epochs=1", "--set", "bridge.calibration_batch_size=8"]) == 0
    meta = load_checkpoint(tmp_path / "run/snn_pretrained/checkpoints/last.json").meta
    assert (meta["data_path"], meta["image_size"], meta["input_shape"]) == (str(tmp_path / "photos"), 32, [3, 32, 32])
    assert (meta["split_seed"], meta["time_steps"]) == (0, None)
    assert len(meta["mean"]) == len(meta["std"]) == 3  # the folder's own statistics, recorded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["export", "../run", "--out", "snn.nir"]) == 0
    out = capsys.readouterr().out
    assert "input [3, 32, 32]" in out and "the graph reads normalised images, (pixel / 255 - mean) / std" in out
    metadata = nir.read(str(elsewhere / "snn.nir")).metadata  # what a toolchain needs to feed it (it was not said)
    assert np.allclose(metadata["input_mean"], meta["mean"]) and np.allclose(metadata["input_std"], meta["std"])
    assert main(["evaluate", "../run", "--out", "ev", "--samples", "4", "--T-max", "1", "--no-progress"]) == 0
    result = json.loads((elsewhere / "ev/evaluation.json").read_text())
    assert result["data"] == str(tmp_path / "photos") and result["test_samples"] == 8
    from spikebridge.analysis.metrics import measure_activity

    at_32 = measure_activity(sb.load_model(tmp_path / "run/snn_pretrained/checkpoints/last.json"), [torch.zeros(1, 3, 32, 32)])
    assert result["activity"]["ann_macs_per_sample"] == at_32.ann_macs  # counted at 32 px, not 224
    shutil.rmtree(tmp_path / "photos")  # gone: the checkpoint's dataset is named in one line
    assert main(["export", "../run", "--out", "snn2.nir"]) == 0  # its stored shape suffices
    assert main(["evaluate", "../run", "--out", "ev2"]) == 2
    err = _one_line_error(capsys)
    assert f"the checkpoint's dataset {tmp_path / 'photos'} is not there; give --data DIR" in err


def test_evaluate_normalises_images_as_the_checkpoint_was_trained(tmp_path, capsys):
    """Small images are normalised by their folder's own statistics. ``evaluate --data OTHER``
    normalised them by OTHER's (silently another input scale); the checkpoint now records the
    statistics it was trained with and they are used. Checkpoints without them keep OTHER's.
    Streamed photos record the ImageNet statistics their transforms apply."""
    from _layouts import image_folders
    from PIL import Image

    from spikebridge.cli.export import open_checkpoint_data
    from spikebridge.data.datasets import open_dataset

    trained = open_dataset(str(image_folders(tmp_path / "a", size=(24, 24), classes=2)))
    other = image_folders(tmp_path / "b", size=(24, 24), classes=2, seed=1)
    for png in other.rglob("*.png"):  # a darker camera
        Image.fromarray((np.asarray(Image.open(png)) // 3).astype(np.uint8)).save(png)
    meta = trained.input_meta()
    assert meta["mean"] == list(trained.mean) and meta["std"] == list(trained.std)
    own = open_dataset(str(other))
    assert max(abs(a - b) for a, b in zip(own.mean, trained.mean)) > 0.05
    assert open_checkpoint_data(str(other), meta, "CKPT").mean == tuple(meta["mean"])
    old = {key: value for key, value in meta.items() if key not in ("mean", "std")}
    assert open_checkpoint_data(str(other), old, "CKPT").mean == own.mean
    for bad in ({**meta, "mean": "0.5"}, {**meta, "std": [0.0, 1.0, 1.0]}, {**meta, "mean": [0.1]},
                {**meta, "mean": [0.1], "std": [0.2]}):  # the last: 1 value for 3 channels (it was skipped)
        with pytest.raises(CheckpointError, match="checkpoint fields meta.mean and meta.std"):
            open_checkpoint_data(str(other), bad, "CKPT")
    # photos streamed from disk (over 64 px) are normalised by ImageNet's statistics in their
    # transforms: recorded too (the checkpoint held null, and its NIR graph no input_mean / input_std)
    from spikebridge.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    for grey in (False, True):
        photos = open_dataset(str(image_folders(tmp_path / f"photos{grey}", size=(80, 96), classes=2, grey=grey)),
                              image_size=72)
        meta = photos.input_meta()
        assert not photos.normalises_in_memory and len(meta["mean"]) == len(meta["std"]) == photos.in_channels
        if not grey:
            assert np.allclose(meta["mean"], IMAGENET_MEAN) and np.allclose(meta["std"], IMAGENET_STD)


def test_evaluate_reads_the_split_and_time_bins_the_checkpoint_was_trained_on(tmp_path, capsys):
    """A DVS folder without splits is split 90/10 by the split seed: evaluating with another seed
    would test on training recordings. The checkpoint records the seed and the merged time bins."""
    from _layouts import dvs_folder

    from spikebridge.cli.export import open_checkpoint_data
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.loading import with_time_bins

    root = dvs_folder(tmp_path / "dvs", per_class=10, n_events=60)

    def test_files(bundle) -> list[str]:
        split = bundle.test
        while not hasattr(split, "samples"):
            split = split.dataset
        return sorted(str(path) for path, _ in split.samples)

    trained = with_time_bins(open_dataset(str(root), split_seed=5), 4)  # as the run opened it
    meta = trained.input_meta()
    assert (meta["split_seed"], meta["time_steps"], meta["input_shape"]) == (5, 4, [2, 128, 128])
    reopened = open_checkpoint_data(None, meta, "CKPT")
    assert test_files(reopened) == test_files(trained) != test_files(open_dataset(str(root)))
    assert reopened.time_steps == 4 and open_dataset(str(root)).time_steps == 8
    # --data of another sensor is resized to the checkpoint's frames, and it is said (it was silent)
    small = with_time_bins(open_dataset(str(root), split_seed=5, image_size=34), 4).input_meta()
    other = open_checkpoint_data(str(root), small, "CKPT")
    assert other.first_sample().shape[-2:] == (34, 34)
    assert "note: the event frames of " in capsys.readouterr().out
    # frames trained as stored and not square (DAVIS 240 x 180: image_size records the shorter side)
    # are read as stored again (they were squeezed to 180 x 180)
    stored = {**meta, "image_size": 100, "input_shape": [2, 100, 128]}
    frames = open_checkpoint_data(str(root), stored, "CKPT").first_sample()
    assert frames.shape[-2:] == (128, 128) and "note" not in capsys.readouterr().out


def test_evaluate_of_an_ann_checkpoint_reports_no_snn_rows(run, tmp_path, capsys):
    """An ANN checkpoint: its top-1, MACs and energy; no neuron table, SOPs or 'SNN' rows (they
    read as an SNN of zero spikes with the ANN's cost)."""
    assert main(["evaluate", str(run / "ann"), *QUICK, "--out", str(tmp_path / "ev")]) == 0
    assert capsys.readouterr().out.startswith("top-1 ")
    text = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "an ANN: no spiking neurons" in text and "MACs per sample" in text
    assert "SOPs" not in text and "| SNN |" not in text and "firing rate" not in text
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    activity = result["activity"]
    assert set(activity) == {"samples", "ann_macs_per_sample", "energy", "layers"} and result["T"] is None  # no SNN fields
    assert activity["ann_macs_per_sample"] > 0 and set(activity["energy"]) == {"ann_uj", "pj_per_mac"}
    assert set(activity["layers"][0]) == {"name", "type", "macs_per_sample"}
    assert main(["evaluate", str(run / "ann"), *QUICK, "--T", "4", "--out", str(tmp_path / "ev4")]) == 2
    assert "--T 4: the checkpoint is an ANN" in _one_line_error(capsys)


def test_export_of_an_event_snn_says_it_reads_a_frame_per_step(tmp_path, capsys):
    """The NIR metadata said 'feed the input at every step' for every SNN; an event SNN reads one
    frame per step (and records no image normalisation)."""
    model = sb.create_model("cnn", num_classes=10, neuron="lif", T=4, in_channels=2)
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 2, "T": 4}, "neuron": {"kind": "lif"},
            "data": "es-mnist", "input_shape": [2, 28, 28], "time_steps": 4}
    ckpt = save_checkpoint(tmp_path / "snn_events_pretrained" / "checkpoints", "last", model, meta, epoch=1)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "ev.nir")]) == 0
    assert "normalised images" not in capsys.readouterr().out
    metadata = nir.read(str(tmp_path / "ev.nir")).metadata
    assert str(metadata["readout"]).startswith("feed one event frame per step (4 frames)") and "input_mean" not in metadata
    assert main(["export", str(ckpt), "--T", "2", "--out", str(tmp_path / "ev2.nir")]) == 0  # the T exported
    assert str(nir.read(str(tmp_path / "ev2.nir")).metadata["readout"]).startswith("feed one event frame per step (2 frames)")


def test_evaluate_with_an_empty_ann_is_refused(run, tmp_path, capsys):
    """``--ann ''`` (an unset shell variable) was ignored: the evaluation ran without the ANN."""
    assert main(["evaluate", str(run), "--ann", "", *QUICK, "--out", str(tmp_path / "ev")]) == 2
    assert "--ann is empty" in _one_line_error(capsys) and not (tmp_path / "ev").exists()


def test_evaluate_with_the_ann_of_an_event_snn_says_the_ann_reads_images(run, tmp_path, capsys):
    """pipeD's SNN reads events, its ANN static images: ``--ann`` is refused in one line (it was
    an internal error from the ANN's first convolution), and no evaluation folder is left."""
    model = sb.create_model("cnn", num_classes=10, neuron="lif", T=8, in_channels=2)
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 2, "T": 8}, "neuron": {"kind": "lif"},
            "data": "es-mnist"}
    events = save_checkpoint(tmp_path / "snn_events_pretrained" / "checkpoints", "last", model, meta, epoch=1)
    code = main(["evaluate", str(events), "--ann", str(run / "ann"), "--samples", "8", "--T-max", "1",
                 "--no-progress", "--out", str(tmp_path / "ev")])
    assert code == 2 and "holds events, and the ANN reads static images" in _one_line_error(capsys)
    assert not (tmp_path / "ev").exists()


def test_export_out_must_name_a_file(run, tmp_path, capsys):
    """``--out`` naming a folder (an existing one, or a new one written ``DIR/``) or an existing
    file without ``--overwrite``: one line, nothing written."""
    snn = str(run / "snn_pretrained")
    existing = tmp_path / "there.nir"
    existing.write_text("kept")
    for out, words in ((str(tmp_path / "newdir") + "/", "is a folder; give a file name"),
                       (str(tmp_path), "is a folder; give a file name"), (str(existing), "already exists")):
        assert main(["export", snn, "--out", out, "--input-shape", "1,28,28"]) == 2
        assert words in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.nir"] and existing.read_text() == "kept"


def test_evaluate_T_merges_event_frames_into_that_many_steps(tmp_path, capsys):
    """``evaluate --T N`` on an event SNN evaluates on frames merged into N steps (it was ignored:
    the report said the trained T); an N that does not divide the data's frames is refused in one
    line that names the ones that do, and nothing is written."""
    model = sb.create_model("cnn", num_classes=10, neuron="lif", T=4, in_channels=2)
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 2, "T": 4}, "neuron": {"kind": "lif"},
            "data": "es-mnist", "time_steps": 4}
    events = save_checkpoint(tmp_path / "snn_events_pretrained" / "checkpoints", "last", model, meta, epoch=1)
    args = ["evaluate", str(events), "--samples", "8", "--no-progress", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ev2"), "--T", "2"]) == 0
    result = json.loads((tmp_path / "ev2" / "evaluation.json").read_text())
    assert result["T"] == result["activity"]["T"] == 2 and [t for t, _ in result["accuracy_vs_T"]] == [1, 2]
    assert main([*args, "--out", str(tmp_path / "ev8"), "--T", "8", "--T-max", "12"]) == 0
    result = json.loads((tmp_path / "ev8" / "evaluation.json").read_text())
    assert result["T"] == 8 and [t for t, _ in result["accuracy_vs_T"]] == list(range(1, 9))
    # a --T-max past the data's steps is said, not silently cut
    assert "--T-max 12: the event frames are merged into 8 time steps (the checkpoint's T, or --T); accuracy vs T " \
        "runs T = 1..8" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "ev3"), "--T", "3"]) == 2
    assert "--T 3: the 8 event frames of es-mnist merge into T = 1, 2, 4, 8" in _one_line_error(capsys)
    assert not (tmp_path / "ev3").exists()


def test_evaluate_ann_takes_a_registry_model_and_its_weights(run, tmp_path, capsys):
    """``evaluate --ann MODEL --ann-weights W.pth`` reads the ANN as the training commands do (it
    said "checkpoint not found: MODEL"): classic conversion of it joins the accuracy-vs-T table."""
    torch.save(_registry("relu", 1)[0].state_dict(), tmp_path / "ann.pth")
    out = tmp_path / "ev"
    assert main(["evaluate", str(run / "snn_pretrained"), *QUICK, "--T-max", "2", "--out", str(out),
                 "--ann", "cnn", "--ann-weights", str(tmp_path / "ann.pth")]) == 0, capsys.readouterr().err
    result = json.loads((out / "evaluation.json").read_text())
    assert [t for t, _ in result["conversion_accuracy_vs_T"]] == [1, 2]
    torch.manual_seed(0)  # an ANN of another class count: its conversion cannot be scored on these labels
    torch.save(sb.create_model("cnn", num_classes=7, neuron="relu", in_channels=1).state_dict(), tmp_path / "w7.pth")
    capsys.readouterr()
    assert main(["evaluate", str(run / "snn_pretrained"), *QUICK, "--out", str(tmp_path / "ev7"),
                 "--ann", "cnn", "--ann-weights", str(tmp_path / "w7.pth")]) == 2
    assert "the ANN has 7 outputs, mnist5k 10 classes" in _one_line_error(capsys)
    assert not (tmp_path / "ev7").exists()


def test_a_checkpoint_trained_with_the_triton_backend_evaluates_and_exports_on_cpu(tmp_path, capsys, monkeypatch):
    """The neuron backend is how the op ran where the SNN trained (every backend gives the same
    numbers): a checkpoint rebuilds with the device's own (it refused: "the triton neuron backend
    needs CUDA tensors", with no way to override)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU without the interpreter
    model, meta = _registry("lif", 2)
    meta["neuron"] = {"kind": "lif", "backend": "triton"}
    path = save_checkpoint(tmp_path / "snn" / "checkpoints", "last", model, meta, epoch=1)
    assert main(["evaluate", str(path), *QUICK, "--out", str(tmp_path / "ev")]) == 0, capsys.readouterr().err
    assert main(["export", str(path), "--out", str(tmp_path / "snn.nir")]) == 0, capsys.readouterr().err
