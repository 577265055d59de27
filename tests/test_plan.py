"""The run plan: ``--plan`` for every recipe in configs/ with every command that accepts it, on tiny
data written in the recipe's layout. Each phase runs exactly what the recipe states (the library
defaults under it, never a command preset); bad input is caught by the plan, before any work,
with one line and no file left behind."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

import _layouts as layouts
from spikebridge import cli
from spikebridge.config import PipelineConfig
from spikebridge.pipelines.plan import BENCHMARK_PRESET, FINETUNE_PRESET, PHASE_FIELDS, PRESETS
from spikebridge.train.checkpoint import save_checkpoint

CONFIGS = Path(__file__).parent.parent / "configs"
LIBRARY = PipelineConfig()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    import spikebridge as sb

    root = tmp_path_factory.mktemp("plan")
    ann = root / "ann"
    save_checkpoint(ann, "last", sb.create_model("cnn", num_classes=3, neuron="relu"),
                    {"model": {"name": "cnn", "num_classes": 3, "in_channels": 3, "T": 1},
                     "neuron": asdict(sb.NeuronConfig(kind="relu")), "data": "photos"})
    return {**layouts.recipe_datasets(root), "ann": str(ann / "last.json")}


# recipe -> (static data, event data)
RECIPES = {
    "imagenet_pipes_resnet18.yaml": ("photos", None),
    "imagenet_pipes_resnet34.yaml": ("photos", None),
    "esimagenet_piped_resnet18_lif.yaml": ("photos", "es-imagenet"),
    "esimagenet_piped_resnet18_liaf.yaml": ("photos", "es-imagenet"),
    "esimagenet_piped_resnet18_liaf_selfpretrain.yaml": ("photos", "es-imagenet"),  # photos stand for the edge images
    "esimagenet_piped_resnet34_lif.yaml": ("photos", "es-imagenet"),
    "esimagenet_piped_resnet34_liaf.yaml": ("photos", "es-imagenet"),
    "esimagenet_2dcnn_resnet18.yaml": ("photos", "es-imagenet"),  # run as: benchmark --data ES --methods scratch
    "cifar10dvs_piped.yaml": ("photos", "dvs"),
    "esucf101_piped_crnn.yaml": ("clips", "es-ucf101"),
}


def test_every_recipe_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(RECIPES)


def _commands(recipe: str, d: dict) -> list[list[str]]:
    static, events = RECIPES[recipe]
    common = ["--data", d[static]]
    # the test's ANN is a cnn: the recipe's own model.name would be refused (the SNN takes the ANN's architecture)
    runs = [["pretrain", *common], ["pipes", *common, "--baseline"],
            ["finetune", *common, "--ann", d["ann"], "--set", "model.name=auto"],
            ["benchmark", *common, "--methods", "scratch,pretrained+wu,encoder"],
            ["benchmark", *common]]  # the default methods: on a LIAF recipe scratch+liaf is scratch (it was refused)
    if events:
        runs += [["piped", *common, "--events", d[events], "--baseline"], ["demo", *common, "--set", f"events.data={d[events]}"],
                 ["benchmark", "--data", d[events], "--ann-data", d[static], "--methods", "scratch,pretrained+wu"],
                 ["benchmark", "--data", d[events], "--methods", "scratch"]]  # the README's form: no ANN, no --ann-data
    else:
        runs.append(["demo", *common, "--no-events"])
    return runs


def _plan(argv: list[str], capsys) -> dict:
    assert cli.main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _section(plan: dict, phase: dict, recipe_tree: dict, events: bool) -> tuple[str, dict]:
    """The recipe section a phase trains with, and what the recipe states there."""
    name, role = phase["name"], phase["role"]
    if role == "ann":
        key = "ann"
    elif name.startswith("snn_events") or (plan["command"] == "benchmark" and events):
        key = "events.scratch" if role == "scratch" else "events.finetune"
    else:
        key = role
    stated = recipe_tree
    for part in key.split("."):
        stated = stated.get(part) or {}
    return key, stated


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_plan_runs_what_the_recipe_states(recipe, data, tmp_path, capsys):
    tree = yaml.safe_load((CONFIGS / recipe).read_text())
    for argv in _commands(recipe, data):
        out = tmp_path / argv[0]
        plan = _plan([argv[0], "--config", str(CONFIGS / recipe), "--out", str(out), "--plan", *argv[1:]], capsys)
        assert not out.exists(), f"{argv[0]} --plan wrote {out}"
        assert plan["command"] == argv[0] and plan["preset"] == {} and plan["phases"], argv
        events = argv[0] == "benchmark" and argv[2] == data.get(RECIPES[recipe][1])
        for phase in plan["phases"]:
            key, stated = _section(plan, phase, tree, events)
            library = asdict(LIBRARY)
            for part in key.split("."):
                library = library[part]
            for field in PHASE_FIELDS:
                expected = stated.get(field, library[field])
                if phase["name"].startswith("snn_events_") and phase["name"] not in (
                        "snn_events_pretrained", "snn_events_scratch") and field == "epochs":
                    expected = tree.get("events", {}).get("compare_epochs", LIBRARY.events.compare_epochs)
                if field == "freeze_epochs" and plan["command"] == "benchmark" and phase["role"] == "finetune":
                    expected = max(1, expected) if "+wu" in phase["name"] else 0  # the method decides
                assert phase[field] == pytest.approx(expected), (recipe, argv[0], phase["name"], field)
            assert phase["T"] >= 1 and phase["data"]
            section = "events" if phase["role"] != "ann" and (phase["name"].startswith("snn_events") or events) else "data"
            assert phase["image_size"] == tree.get(section, {}).get("image_size", getattr(LIBRARY, section).image_size)
        snn = [p for p in plan["phases"] if p["role"] != "ann"]
        if argv[0] != "benchmark":
            assert all(p["neuron"] == tree["neuron"]["kind"] for p in snn)


def test_benchmark_methods_that_train_the_same_snn(data, tmp_path, capsys):
    """The default methods on a LIAF recipe drop the +liaf twins (said in options.methods); methods
    the user names twice over are refused."""
    liaf = ["benchmark", "--config", str(CONFIGS / "esimagenet_piped_resnet18_liaf.yaml"), "--data", data["photos"],
            "--out", str(tmp_path / "b"), "--plan"]
    plan = _plan(liaf, capsys)
    assert plan["options"]["methods"] == "scratch,pretrained,pretrained+wu,encoder,encoder+wu,decoder"
    assert cli.main([*liaf, "--methods", "scratch,scratch+liaf"]) == 2
    assert "benchmark methods scratch and scratch+liaf train the same SNN" in capsys.readouterr().err


def test_presets_apply_without_a_recipe_only(data, tmp_path, capsys):
    bench = _plan(["benchmark", "--data", "mnist5k", "--out", str(tmp_path / "b"), "--plan"], capsys)
    assert bench["preset"] == BENCHMARK_PRESET
    phases = {p["name"]: p for p in bench["phases"]}
    # one budget for every method: its sharpening, and the library's phases under it
    assert bench["neuron"]["sharpen_epochs"] == 40 and phases["ann"]["epochs"] == 20
    assert phases["scratch"]["epochs"] == 10 and phases["scratch"]["until_plateau"] == 2
    demo = _plan(["demo", "--out", str(tmp_path / "d"), "--plan"], capsys)
    assert demo["preset"] == PRESETS["demo"]
    ann = next(p for p in demo["phases"] if p["role"] == "ann")
    assert (ann["epochs"], ann["lr"], demo["neuron"]["sharpen_epochs"]) == (8, 0.01, 16)  # the demo's short ANN
    events = next(p for p in demo["phases"] if p["name"] == "snn_events_pretrained")
    assert events["epochs"] == 8
    assert phases["pretrained"]["epochs"] == 3 and phases["pretrained+wu"]["freeze_epochs"] == 1
    ft = _plan(["finetune", "--data", "mnist5k", "--ann", data["ann"], "--out", str(tmp_path / "f"), "--plan",
                "--set", "finetune.lr=0.01"], capsys)
    assert ft["preset"] == FINETUNE_PRESET
    (phase,) = ft["phases"]
    assert phase["name"] == "snn_finetuned" and phase["epochs"] == 1 and phase["lr"] == 0.01  # --set over the preset
    flag = _plan(["finetune", "--data", "mnist5k", "--ann", data["ann"], "--out", str(tmp_path / "f"), "--plan",
                  "--set", "finetune.epochs=4", "--epochs", "2"], capsys)
    assert flag["phases"][0]["epochs"] == 2  # a flag over --set
    assert flag["checkpoint_blocks"] is False  # the plan shows it (it was only in the saved config.yaml)
    assert _plan(["pipes", "--checkpoint-blocks", "--out", str(tmp_path / "f"), "--plan"], capsys)["checkpoint_blocks"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "f").exists()


def test_demo_plan_lists_every_phase(tmp_path, capsys):
    plan = _plan(["demo", "--out", str(tmp_path / "d"), "--plan"], capsys)
    assert [p["name"] for p in plan["phases"]] == [
        "ann", "snn_pretrained", "snn_scratch", "snn_events_pretrained", "snn_events_signed_polarity",
        "snn_events_skip", "snn_events_scratch"]
    assert plan["phases"][3]["T"] == LIBRARY.events.time_bins and plan["phases"][3]["data"] == "es-mnist"
    assert not (tmp_path / "d").exists()


def test_event_phases_carry_the_stream_steps(data, tmp_path, capsys):
    """The plan knows each event layout's time steps: an event phase's T is events.time_bins, or
    the stream's own steps when it is 0; time bins that cannot merge the stream are refused there.
    A DVS-Gesture folder as Tonic extracts it is event data."""
    import numpy as np

    gesture = tmp_path / "DVSGesture"
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        (gesture / split / "user01_led").mkdir(parents=True)
        np.save(gesture / split / "user01_led" / "3.npy", np.array([[1, 2, 1, 10], [3, 4, 0, 20]], np.int32))
    out = tmp_path / "out"

    def event_T(events: str, *sets: str) -> set[int]:
        argv = ["piped", "--data", data["photos"], "--events", events, "--out", str(out), "--plan"]
        plan = _plan([*argv, *(x for key in sets for x in ("--set", key))], capsys)
        return {p["T"] for p in plan["phases"] if p["name"].startswith("snn_events")}

    assert event_T(str(gesture)) == {4} and event_T(str(gesture), "events.time_bins=0") == {8}
    assert event_T(data["dvs"], "events.time_bins=0") == {8} and event_T(data["es-imagenet"], "events.time_bins=2") == {2}
    assert event_T(data["es-ucf101"], "events.time_bins=0") == {15} and event_T("es-mnist", "events.time_bins=0") == {8}
    # --T is the event SNNs' T where every SNN reads events (piped, benchmark on events ignored it, keeping 4);
    # the demo's and pipes' --T stay model.T (the demo's event phases keep events.time_bins)
    plan = _plan(["piped", "--data", data["photos"], "--events", "es-mnist", "--T", "2", "--out", str(out), "--plan"],
                 capsys)
    assert {p["T"] for p in plan["phases"] if p["name"].startswith("snn_events")} == {2}
    plan = _plan(["benchmark", "--data", "es-mnist", "--T", "8", "--methods", "scratch", "--out", str(out), "--plan"],
                 capsys)
    assert [p["T"] for p in plan["phases"]] == [8]
    plan = _plan(["demo", "--T", "6", "--out", str(out), "--plan"], capsys)
    assert {p["name"]: p["T"] for p in plan["phases"]}["snn_events_pretrained"] == 4
    assert {p["name"]: p["T"] for p in plan["phases"]}["snn_pretrained"] == 6
    assert cli.main(["piped", "--T", "3", "--out", str(out), "--plan"]) == 2
    assert "--T 3: the 8 event frames of es-mnist merge into T = 1, 2, 4, 8" in capsys.readouterr().err
    bench = _plan(["benchmark", "--data", data["es-ucf101"], "--ann-data", data["clips"], "--out", str(out), "--plan",
                   "--set", "events.time_bins=5"], capsys)
    assert {p["T"] for p in bench["phases"] if p["role"] != "ann"} == {5}
    for argv in (["piped", "--data", data["clips"], "--events", data["es-ucf101"]],
                 ["benchmark", "--data", data["es-ucf101"], "--ann-data", data["clips"]]):
        assert cli.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "events.time_bins=4 must divide the 15 time steps" in err, err
    assert not out.exists()


def test_pipeD_pairs_other_static_data_only_with_events_the_request_names(data, tmp_path, capsys):
    """pipeD's default events are ES-MNIST, the embedded digits' ODG events. With the ANN trained on
    other images (``--data FOLDER``), ``demo`` ran its pipeD half on ES-MNIST and ``piped`` fine-tuned
    on it without a word: the demo now skips that half and says so; piped asks for ``--events``."""
    out = tmp_path / "out"
    demo = _plan(["demo", "--data", data["photos"], "--out", str(out), "--plan"], capsys)
    assert [p["name"] for p in demo["phases"]] == ["ann", "snn_pretrained", "snn_scratch"]
    assert demo["options"]["events"] is False and demo["notes"][0].startswith("pipeD skipped: its events (es-mnist)")
    for named in (["--set", "events.data=es-mnist"], ["--set", f"events.data={data['es-imagenet']}"]):
        demo = _plan(["demo", "--data", data["photos"], *named, "--out", str(out), "--plan"], capsys)
        assert "snn_events_pretrained" in [p["name"] for p in demo["phases"]] and demo["notes"] == []
    assert "snn_events_pretrained" in [p["name"] for p in _plan(["demo", "--out", str(out), "--plan"], capsys)["phases"]]
    assert cli.main(["piped", "--data", data["photos"], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name the events of those images with --events FOLDER" in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("events:\n  data: es-mnist\n")
    for argv in (["--events", "es-mnist"], ["--config", str(recipe)], ["--ann", data["ann"]]):
        plan = _plan(["piped", "--data", data["photos"], *argv, "--out", str(out), "--plan"], capsys)
        assert plan["phases"][-1]["data"] == "es-mnist"
    assert not out.exists()


def test_the_plan_refuses_a_model_that_cannot_read_a_folders_frames(tmp_path, capsys):
    """vgg11_bn_tv on a folder of 28 x 28 images passed --plan (only the built-in digits were
    checked); the run then refused it. The plan reads the frame size from the file headers."""
    digits = layouts.image_folders(tmp_path / "digits", size=(28, 28), classes=3)
    out = tmp_path / "out"
    for argv in (["pipes", "--model", "vgg11_bn_tv"], ["pipes", "--model", "vgg11_bn_tv", "--plan"]):
        assert cli.main([*argv, "--data", str(digits), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "model vgg11_bn_tv cannot read the 28x28 frames" in err
        assert "--set data.image_size=..." in err
    plan = _plan(["pipes", "--model", "vgg11_bn_tv", "--data", str(digits), "--set", "data.image_size=32",
                  "--out", str(out), "--plan"], capsys)
    assert plan["phases"][0]["model"] == "vgg11_bn_tv"
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["pipes", "--set", "neuron.backend=cupy"], "backend 'cupy'"),
    (["pipes", "--data", "/nonexistent/imagenet"], "not found"),
    (["piped", "--events", "mnist5k"], "no events"),
    (["pipes", "--data", "es-mnist"], "holds events"),
    (["pipes", "--model", "resnet19"], "unknown model"),
    (["pipes", "--ann", "/nonexistent/ann.json"], "ann.json"),
    (["pipes", "--ann-weights", "w.pth"], "--ann"),
    (["benchmark", "--methods", "pretrained+xyz"], "pretrained+xyz"),
    (["evaluate", "x.json", "--resume"], "--resume"),
    (["export", "x.json", "--checkpoint-blocks"], "--checkpoint-blocks"),
    (["demo", "--ann", "x.json"], "--ann"),
    (["piped", "--set", "events.image_size=16"], "es-mnist is 28 x 28: image_size=16"),
    (["pipes", "--device", "mps"], "mps requested but this PyTorch has no usable MPS device"),
    (["pipes", "--model", "crnn", "--checkpoint-blocks"], "crnn has no blocks to checkpoint"),
    (["benchmark", "--data", "es-mnist", "--set", "events.image_size=16"], "es-mnist is 28 x 28: image_size=16"),
    (["pipes", "--ann", ""], "--ann is empty"),  # it planned without the ANN
    (["pipes", "--model", "vgg11_bn_tv"], "model vgg11_bn_tv cannot read the 28x28 frames of 'mnist5k'"),  # once run
])
@pytest.mark.parametrize("plan_only", [False, True])
def test_bad_input_is_caught_by_the_plan(argv, words, plan_only, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main([*argv, "--out", str(out), *(["--plan"] if plan_only and argv[0] not in ("evaluate", "export") else [])])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.count("\n") == 1 and words in captured.err and "Traceback" not in captured.err
    assert captured.out == ""
    assert not out.exists()


def test_benchmark_refuses_a_user_class_and_a_checkpoint_of_one(tmp_path, capsys):
    """A checkpoint of a user's class passed benchmark's plan (with --trust-code: every method
    planned), while the class itself was refused; both are, and benchmark has no --trust-code."""
    import spikebridge as sb

    meta = {"model": {"name": "ann_class", "class": "Net", "file": str(tmp_path / "net.py"), "sha256": "0" * 64},
            "neuron": {"kind": "relu"}}
    ckpt = save_checkpoint(tmp_path / "ann", "last", sb.create_model("cnn", neuron="relu"), meta, epoch=1)
    (tmp_path / "net.py").write_text("import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    for ann in (str(ckpt), f"{tmp_path / 'net.py'}:Net"):
        assert cli.main(["benchmark", "--ann", ann, "--out", str(tmp_path / "b"), "--plan"]) == 2
        assert "benchmark --ann takes a spikebridge checkpoint of a registry model" in capsys.readouterr().err
    assert cli.main(["benchmark", "--ann", str(ckpt), "--trust-code", "--plan"]) == 2
    assert "unrecognized arguments: --trust-code" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["pipes", "--plan", "--out", ""], ["pipes", "--plan", "--out", " "],
                                  ["evaluate", "x.json", "--out", ""], ["inspect", "mnist5k", "--out", ""]])
def test_an_empty_out_is_refused_not_the_default_folder(argv, tmp_path, capsys, monkeypatch):
    """``--out ''`` (an unset shell variable) planned into runs/pipes; evaluate wrote beside the
    checkpoint, inspect nowhere."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert "--out is empty: give a folder path" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_home_relative_path_is_expanded_where_the_shell_did_not(data, tmp_path, capsys, monkeypatch):
    """``--out=~/x``, a quoted ``--config '~/r.yaml'`` or ``--data '~/photos'``: a folder named
    ``~`` was made in the working directory, and the recipe and data were not found."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(data["photos"], tmp_path / "home" / "photos")
    (tmp_path / "home" / "r.yaml").write_text("ann:\n  epochs: 2\n")
    plan = _plan(["pipes", "--out=~/run", "--config", "~/r.yaml", "--data", "~/photos", "--plan"], capsys)
    assert plan["out"] == str(tmp_path / "home" / "run") and plan["phases"][0]["epochs"] == 2
    assert plan["phases"][0]["data"] == str(tmp_path / "home" / "photos") and not (tmp_path / "~").exists()


def test_the_plan_refuses_what_the_run_would_refuse_writing_nothing(data, tmp_path, capsys):
    """``--plan`` exits 2 where the run would: a class folder without images, an ``--out`` with a
    file in the way, an ``--out`` holding another run or foreign files; and it writes nothing."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(data["photos"], photos)
    (photos / "train" / "n_empty").mkdir()
    (photos / "val" / "n_empty").mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for argv, words in [
        (["--data", str(photos), "--out", str(tmp_path / "out")], "class folder " + str(photos / "train" / "n_empty")),
        (["--data", data["photos"], "--out", str(a_file)], "Not a directory"),
        (["--data", data["photos"], "--out", str(a_file / "run")], "Not a directory"),
        (["--data", data["photos"], "--out", str(foreign)], "not empty and was not written by spikebridge pipes"),
        (["--data", data["photos"], "--out", str(foreign), "--resume", "--overwrite"], "give only one"),
    ]:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert cli.main(["pipes", *argv, "--plan"]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and words in captured.err, captured.err
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_no_progress_run_prints_plan_epochs_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["pretrain", "--data", "mnist5k", "--out", str(out), "--no-progress", "--epochs", "1",
                       "--set", "data.limit_train=64", "--set", "data.limit_test=32", "--set", "ann.batch_size=32",
                       "--set", "run.threads=1", "--set", "run.amp=bf16"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "ann: run.amp=bf16 applies on CUDA only; training in float32 on cpu" in printed  # notes too
    assert "[plan] pretrain" in printed and "[plan] ann" in printed
    assert "ann epoch 1:" in printed and "| ann | 1 |" in printed
    assert f"wrote {out}: " in printed and "summary.json" in printed
    assert (out / "ann" / "checkpoints" / "last.json").is_file()


@pytest.mark.parametrize("layout, command, image_size", [
    ("photos", "pipes", 0), ("photos", "pipes", 32), ("photos", "pipes", 224), ("clips", "pipes", 0),
    ("dvs", "benchmark", 0), ("dvs", "benchmark", 32), ("es-imagenet", "benchmark", 0), ("es-ucf101", "benchmark", 0),
    ("mnist5k", "pipes", 0), ("es-mnist", "benchmark", 0)])
def test_the_plan_shows_the_model_auto_picks_when_the_data_opens(data, layout, command, image_size, capsys):
    """``model.name: auto`` is shown as the registry model the run will pick, told from the layout
    and file headers; it is the model the opened data picks (one rule: disk.model_for)."""
    from spikebridge.data.datasets import open_dataset, resolve_model_name

    name = data.get(layout, layout)
    plan = _plan([command, "--data", name, "--plan", "--set", f"data.image_size={image_size}",
                  *(["--methods", "scratch", "--set", "events.time_bins=0"] if command == "benchmark" else [])], capsys)
    opened = resolve_model_name("auto", open_dataset(name, image_size=image_size))
    assert {p["model"] for p in plan["phases"]} == {opened}, (plan["phases"], opened)


def test_the_run_folder_comes_from_out_the_recipe_or_the_command_and_a_saved_config_does_not_resume(tmp_path, capsys):
    """``--out`` over ``--set run.out`` over the recipe's ``run.out`` over ``runs/COMMAND``; a run's
    saved ``config.yaml`` (``run.resume: true`` after a resume) used as a recipe starts a new run."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  out: from_recipe\n  resume: true\n")
    for argv, out in ((["pipes"], "runs/pipes"), (["piped"], "runs/piped"), (["pipes", "--config", str(recipe)], "from_recipe"),
                      (["pipes", "--config", str(recipe), "--set", "run.out=from_set"], "from_set"),
                      (["pipes", "--config", str(recipe), "--set", "run.out=from_set", "--out", "from_flag"], "from_flag")):
        assert cli.main([*argv, "--plan"]) == 0
        assert json.loads(capsys.readouterr().out)["out"] == out, argv
    from spikebridge.pipelines.plan import Request, build_plan

    assert build_plan(Request("pipes", str(recipe), [], {}, None, {})).config.run.resume is False


@pytest.mark.parametrize("command", ["pipes", "piped", "finetune", "benchmark"])
def test_an_ann_of_another_architecture_than_model_is_refused_by_the_plan(data, command, capsys):
    """``--ann`` a cnn checkpoint with ``--model vgg11``: refused before any work (it was found
    when the transfer failed, after the benchmark's scratch methods had trained)."""
    assert cli.main([command, "--ann", data["ann"], "--model", "vgg11", "--plan"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "is a cnn, not a vgg11: the SNN takes the ANN's architecture" in captured.err
    assert cli.main([command, "--ann", data["ann"], "--model", "cnn", "--plan",
                     *(["--data", data["photos"]] if command != "piped" else [])]) == 0, capsys.readouterr().err


def test_the_wrote_line_names_only_what_the_run_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    assert cli.main(["pretrain", "--data", "mnist5k", "--out", str(out), "--no-progress", "--epochs", "1", "--overwrite",
                     "--set", "data.limit_train=64", "--set", "data.limit_test=32", "--set", "ann.batch_size=32",
                     "--set", "run.threads=1"]) == 0
    *_, last, final = capsys.readouterr().out.splitlines()
    assert last.startswith(f"wrote {out}: ") and "summary.json" in last and "notes.txt" not in last, last
    summary = json.loads((out / "summary.json").read_text())["runs"][0]
    assert final.startswith(f"ANN test accuracy {summary['final_acc']:.4f} after 1 epoch (best {summary['best_acc']:.4f}")
    assert final.endswith(f"the last epoch's checkpoint: {out}/ann/checkpoints/last.json")
    assert (out / "notes.txt").read_text() == "the user's"


def test_video_clips_run_at_their_frames_and_size(tmp_path, capsys):
    """A folder of RGB clips: every phase reads the clips' 15 frames (the plan showed, and the
    checkpoint recorded, model.T, which changed nothing), at their own size (data.image_size was
    shown by the plan and ignored by the run: refused, by the plan and by the opener)."""
    from spikebridge.data.datasets import open_dataset
    from spikebridge.errors import ConfigError

    clips = layouts.video_clips(tmp_path / "clips")
    plan = _plan(["pipes", "--data", str(clips), "--model", "crnn", "--T", "2", "--plan", "--out", str(tmp_path / "o")],
                 capsys)
    assert [p["T"] for p in plan["phases"]] == [15, 15]
    assert cli.main(["pipes", "--data", str(clips), "--set", "data.image_size=64", "--plan"]) == 2
    assert "the video clips of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="read at their own frame size"):
        open_dataset(str(clips), image_size=64)
    photos = layouts.image_folders(tmp_path / "photos", size=(64, 64), classes=2, train_per_class=2, val_per_class=1)
    assert cli.main(["pipes", "--data", str(photos), "--model", "crnn", "--plan"]) == 2  # it failed once running
    assert "model crnn reads frame sequences (video clips, event streams);" in capsys.readouterr().err


def test_a_run_on_video_clips_records_the_frames_it_read(tmp_path, capsys):
    """pipes on RGB clips: the SNN's checkpoint records T = the clips' 15 frames, which it read (it
    recorded model.T's 4)."""
    from spikebridge.train.checkpoint import load_checkpoint

    clips = layouts.video_clips(tmp_path / "clips", size=(64, 86), clips_per_class=4)
    out = tmp_path / "run"
    assert cli.main(["pipes", "--data", str(clips), "--model", "crnn", "--out", str(out), "--no-progress",
                     "--device", "cpu", "--set", "ann.epochs=1", "--set", "finetune.epochs=1", "--set", "ann.batch_size=2",
                     "--set", "finetune.batch_size=2", "--set", "bridge.calibration_batch_size=2",
                     "--set", "finetune.precise_bn=0", "--set", "run.threads=1"]) == 0, capsys.readouterr().err
    meta = load_checkpoint(out / "snn_pretrained" / "checkpoints" / "last.json").meta
    assert meta["model"]["T"] == meta["time_steps"] == 15
