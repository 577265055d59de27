"""Issue "Trust and safety", items 6, 7 and 10 through the command line: one run per folder, a rerun
does not silently replace an earlier one, ``--resume`` is exact or refused (changing no file), and
``spikebridge --debug CMD`` shows the traceback of an internal error."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from spikebridge import cli
from spikebridge.pipelines.ann import RegistryFamily

TINY = ["--data", "mnist5k", "--no-progress", "--device", "cpu", "--epochs", "1", "--set", "data.limit_train=64",
        "--set", "data.limit_test=32", "--set", "ann.batch_size=32", "--set", "run.threads=1"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ann"
    assert cli.main(["pretrain", "--out", str(out), *TINY]) == 0
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, words", [
    ([], "--resume"),  # a rerun without --resume would replace the run silently
    (["--resume", "--set", "ann.lr=0.1"], "ann.lr"),
    (["--resume", "--set", "ann.optimizer=sgd"], "ann.optimizer"),
    (["--resume", "--set", "data.limit_train=48"], "data.limit_train"),
    (["--resume", "--set", "model.T=2", "--set", "neuron.kind=liaf"], "neuron.kind"),
])
def test_a_changed_rerun_is_refused_and_changes_no_file(run, extra, words, capsys):
    before = snapshot(run)
    assert cli.main(["pretrain", "--out", str(run), *TINY, *extra]) == 2
    assert words in one_line_error(capsys)
    assert snapshot(run) == before


def test_an_exact_resume_runs(run, capsys):
    assert cli.main(["pretrain", "--out", str(run), *TINY, "--resume"]) == 0
    assert "[plan] pretrain" in capsys.readouterr().out


def test_another_command_into_the_folder_is_refused(run, capsys):
    before = snapshot(run)
    assert cli.main(["pipes", "--out", str(run), "--data", "mnist5k", "--device", "cpu"]) == 2
    assert "pretrain" in one_line_error(capsys)
    assert snapshot(run) == before


def test_a_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["pretrain", "--out", str(tmp_path), *TINY]) == 2
    assert "not empty" in one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_debug_before_the_command_shows_the_traceback(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("planted")

    monkeypatch.setattr(RegistryFamily, "pretrain", broken)
    assert cli.main(["pretrain", "--out", str(tmp_path / "a"), *TINY]) == 1
    assert "internal error" in capsys.readouterr().err
    for argv in (["--debug", "pretrain", "--out", str(tmp_path / "b"), *TINY],
                 ["pretrain", "--debug", "--out", str(tmp_path / "c"), *TINY]):
        with pytest.raises(KeyError, match="planted"):
            cli.main(argv)


def write_digits(root: Path, classes: int = 3, per_class: int = 8) -> None:
    """A tiny ImageNet-layout folder of 28x28 grey PNGs (train/ and val/)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for c in range(classes):
            folder = root / split / f"n{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"{i}.png")


def test_a_run_that_fails_when_its_data_opens_leaves_nothing_behind(tmp_path, capsys):
    """A problem found when the run opens the data (frames too small for the model: the plan reads
    no image) fails with one line and leaves no file, so the corrected command reruns into the same
    --out without --overwrite; foreign files in an --overwrite folder stay."""
    data, out = tmp_path / "digits", tmp_path / "runs" / "r1"
    write_digits(data)
    argv = ["pretrain", "--out", str(out), "--data", str(data), "--no-progress", "--device", "cpu", "--epochs", "1",
            "--set", "ann.batch_size=4", "--set", "run.threads=1", "--model", "vgg11_bn_tv"]
    assert cli.main(argv) == 2
    assert "cannot read the 28x28 frames" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # the claim made runs/ and runs/r1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert cli.main([*argv[:1], "--out", str(mine), *argv[3:], "--overwrite"]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    argv = argv[:-2]  # fixed (the default model for small frames): it runs into the same --out
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert (out / "ann" / "checkpoints" / "last.json").is_file() and (out / "config.yaml").is_file()
    assert cli.main([*argv, "--set", "ann.lr=0.5"]) == 2  # a real earlier run is still protected
    assert "--resume" in one_line_error(capsys)


def test_time_bins_that_do_not_divide_the_event_stream_fail_before_the_ann_trains(tmp_path, capsys):
    """ES-UCF101 clips have 15 steps; the default events.time_bins (4) cannot merge them. The run
    says so, with the fix, before the ANN's epochs (the plan knows the layout's steps), leaving no file."""
    import _layouts as layouts

    clips = layouts.video_clips(tmp_path / "clips", size=(48, 64), clips_per_class=4)
    events = layouts.es_ucf101(clips, tmp_path / "es")
    out = tmp_path / "run"
    argv = ["piped", "--data", str(clips), "--events", str(events), "--out", str(out), "--no-progress", "--device",
            "cpu", "--set", "ann.epochs=1", "--set", "ann.batch_size=2", "--set", "run.threads=1"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "events.time_bins=4 must divide the 15 time steps" in err and "--set events.time_bins=0" in err, err
    assert "ann epoch" not in captured.out and not out.exists()


def test_a_run_whose_first_epoch_fails_leaves_nothing_behind(tmp_path, capsys):
    """NaN weights in epoch 1 (an LR far too high): the ANN's checkpoint folder made at the start
    holds no checkpoint yet, so nothing is kept and the corrected command runs into the same --out.
    The parent folders the run made for ``--out a/b/r`` go too (they stayed)."""
    out = tmp_path / "a" / "b" / "r"
    argv = ["pretrain", "--out", str(out), *TINY, "--set", "data.limit_train=256", "--set", "ann.optimizer=sgd"]
    assert cli.main([*argv, "--set", "ann.lr=1e30"]) == 2
    assert "NaN/Inf" in one_line_error(capsys)
    assert not (tmp_path / "a").exists()
    assert cli.main(argv) == 0
    assert (out / "ann" / "checkpoints" / "last.json").is_file()


@pytest.mark.parametrize("command, key, phase", [("pipes", "scratch", "snn_scratch"),
                                                 ("piped", "events.finetune", "snn_events_pretrained"),
                                                 ("benchmark", "scratch", "scratch")])
def test_a_later_phases_batch_larger_than_the_split_fails_before_the_ann_trains(tmp_path, capsys, command, key,
                                                                              phase):
    """Every phase's batch is checked against its training split when the data opens, not when
    that phase starts (after the ANN's epochs)."""
    out = tmp_path / "r"
    tiny = [arg for arg in TINY if arg not in ("--epochs", "1")]
    extra = ["--methods", "pretrained,scratch"] if command == "benchmark" else ["--baseline"]
    assert cli.main([command, "--out", str(out), *tiny, *extra, "--set", f"{key}.batch_size=128"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert f"{phase}: the training split has 64 samples, fewer than one batch of 128" in captured.err
    assert "ann epoch" not in captured.out and not out.exists()


def test_a_resume_keeps_the_command_options(tmp_path, capsys):
    """``--baseline`` is part of what a run computes: resuming without it is refused, changing no
    file (it would rewrite summary.json without the baseline); with it the resume runs."""
    out = tmp_path / "p"
    argv = ["pipes", "--out", str(out), *TINY[:5], *TINY[7:], "--set", "ann.epochs=1", "--set", "finetune.epochs=1", "--set", "scratch.epochs=1",
            "--set", "scratch.until_plateau=0", "--set", "bridge.calibration_batches=1"]
    assert cli.main([*argv, "--baseline"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert cli.main([*argv, "--resume"]) == 2
    assert "options.baseline: true -> false" in one_line_error(capsys)
    assert snapshot(out) == before
    assert cli.main([*argv, "--baseline", "--resume"]) == 0


def test_an_ann_checkpoint_with_a_hand_edited_curve_is_one_line(run, tmp_path, capsys):
    """``--ann CKPT`` reads the checkpoint's training record (its curve and seconds go into the
    summary): a damaged one is named when the plan is made, not an internal error later."""
    import json
    import shutil

    folder = tmp_path / "ann"
    shutil.copytree(run / "ann" / "checkpoints", folder)
    record = json.loads((folder / "last.json").read_text())
    record["meta"]["curve"] = [["a"]]
    (folder / "last.json").write_text(json.dumps(record))
    assert cli.main(["pipes", "--ann", str(folder / "last.json"), "--out", str(tmp_path / "o"), *TINY[:5], "--plan"]) == 2
    assert "checkpoint field 'meta.curve' must be" in one_line_error(capsys)


def test_ann_may_be_a_run_folder_or_the_checkpoints_tensors_file(run, tmp_path, capsys):
    """``--ann RUN`` (a pretrain run), its phase folder and its checkpoint's ``.safetensors`` all
    name the ANN checkpoint ``RUN/ann/checkpoints/last.json``."""
    import json

    tensors = next((run / "ann" / "checkpoints").glob("last-e*.safetensors"))
    for ann in (run, run / "ann", tensors):
        assert cli.main(["pipes", "--ann", str(ann), "--out", str(tmp_path / "o"), *TINY[:5], "--plan"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert [p["name"] for p in plan["phases"]] == ["snn_pretrained"], ann


def test_a_resume_from_another_folder_reads_the_same_data_or_is_refused(tmp_path, monkeypatch, capsys):
    """``--data ds`` is stored as the folder's absolute path: a ``--resume`` from another working
    directory where ``ds`` names another folder is refused, naming both (it trained on that other
    folder); the same folder by any path resumes. A run saved with a relative path (before) still
    resumes from its own working directory."""
    import json
    import os

    from _layouts import image_folders

    for where in ("a", "b"):
        image_folders(tmp_path / where / "ds", size=(16, 16), classes=2, train_per_class=8, val_per_class=4)
    argv = ["pretrain", "--data", "ds", "--out", str(tmp_path / "run"), *TINY[2:], "--set", "ann.batch_size=8"]
    monkeypatch.chdir(tmp_path / "a")
    assert cli.main(argv) == 0
    manifest = tmp_path / "run" / ".spikebridge-run.json"
    assert json.loads(manifest.read_text())["config"]["data"]["name"] == str(tmp_path / "a" / "ds")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "b")
    before = snapshot(tmp_path / "run")
    assert cli.main([*argv, "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"data.name: {tmp_path / 'a' / 'ds'} -> {tmp_path / 'b' / 'ds'}" in err
    assert snapshot(tmp_path / "run") == before
    argv[2] = str(tmp_path / "a" / "ds")
    assert cli.main([*argv, "--resume"]) == 0
    os.symlink(tmp_path / "a" / "ds", tmp_path / "b" / "link")  # the same folder by another path
    argv[2] = str(tmp_path / "b" / "link")
    assert cli.main([*argv, "--resume"]) == 0
    record = json.loads(manifest.read_text())  # as written before: the path as given
    record["config"]["data"]["name"] = "ds"
    manifest.write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path / "a")
    argv[2] = "ds"
    assert cli.main([*argv, "--resume"]) == 0


def test_a_resume_from_another_folder_names_the_same_ann(run, tmp_path, monkeypatch, capsys):
    """``--ann`` given relative to another working directory, or as the run's ``ann`` phase folder or
    its checkpoint file, names the same checkpoint: the resume continues (it was refused, 'ann_source:
    ../x -> ../../x', 'RUN -> RUN/ann'); another checkpoint is refused."""
    import os
    import shutil

    import yaml

    (tmp_path / "a" / "deeper").mkdir(parents=True)
    argv = ["pipes", *TINY[:5], *TINY[7:], "--set", "finetune.epochs=1", "--set", "bridge.calibration_batches=1"]
    monkeypatch.chdir(tmp_path / "a")
    assert cli.main([*argv, "--out", "../p", "--ann", os.path.relpath(run, tmp_path / "a")]) == 0
    monkeypatch.chdir(tmp_path / "a" / "deeper")
    argv += ["--out", "../../p"]
    assert cli.main([*argv, "--ann", os.path.relpath(run, tmp_path / "a" / "deeper"), "--resume"]) == 0
    # config.yaml names the run folder wherever the resume ran (it held '../../p')
    assert yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())["run"]["out"] == str(tmp_path / "p")
    shutil.copytree(run, tmp_path / "other")
    capsys.readouterr()
    assert cli.main([*argv, "--ann", "../../other", "--resume"]) == 2
    assert f"ann_source: {run} -> {tmp_path / 'other'}" in one_line_error(capsys)
    kept = run / "ann" / "checkpoints"
    for spelling in (run / "ann", kept, kept / "last.json", *kept.glob("*.safetensors")):
        assert cli.main([*argv, "--ann", str(spelling), "--resume"]) == 0, spelling  # the same ANN, named another way
