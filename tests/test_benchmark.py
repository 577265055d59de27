"""``spikebridge benchmark``: every kind of method runs on the embedded data and the table, the JSON
and both figures come out; methods are parsed strictly."""
import json

import pytest
import torch
from safetensors.torch import save_file

from spikebridge import cli
from spikebridge.analysis.benchmark import parse_method, parse_methods
from spikebridge.pipelines.benchmark import DEFAULT_METHODS
from test_summary import assert_figure
from spikebridge.errors import ConfigError
from spikebridge.train.checkpoint import load_checkpoint

METHODS = "scratch,pretrained,pretrained+wu,encoder,decoder,pretrained+liaf,scratch+T2"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_method_grammar():
    m = parse_method("pretrained+liaf+T2")
    assert (m.base, m.neuron, m.T, m.warmup, m.transfers) == ("pretrained", "liaf", 2, False, True)
    assert parse_method("encoder+wu").warmup and not parse_method("scratch").transfers
    # the paper's method set (arXiv:2203.01158, Sec. 4): every base, with and without warm-up, LIF and LIAF
    default = parse_methods(DEFAULT_METHODS)
    assert {m.base for m in default} == {"scratch", "pretrained", "encoder", "decoder"}
    assert {(m.base, m.warmup) for m in default} >= {("pretrained", True), ("pretrained", False), ("encoder", True),
                                                      ("encoder", False)}
    assert {(m.base, m.neuron) for m in default} >= {("scratch", None), ("scratch", "liaf"), ("pretrained", None),
                                                      ("pretrained", "liaf")}
    for bad, match in (("bogus", "start with"), ("pretrained+fast", "unknown modifier"), ("scratch+wu", "warm-up"),
                       ("decoder+wu", "transfers none"),
                       ("scratch,scratch", "repeat"), ("pretrained+T0", r"T must be an integer >= 1, got 0"),
                       ("decoder+T2000", r"T must be an integer <= 1024"), ("pretrained+liaf+lif", "neuron more than once"),
                       ("pretrained+wu+wu", "warm-up more than once"), ("pretrained+Fast", "unknown modifier 'Fast'")):
        with pytest.raises(ConfigError, match=match):
            parse_methods(bad)


def test_benchmark_command_on_the_embedded_digits(tmp_path, capsys):
    out = tmp_path / "bench"
    status = cli.main([
        "benchmark", "--data", "mnist5k", "--out", str(out), "--no-progress", "--methods", METHODS,
        "--set", "data.limit_train=128", "--set", "data.limit_test=64", "--set", "ann.epochs=2",
        "--set", "finetune.epochs=1", "--set", "scratch.epochs=1", "--set", "scratch.until_plateau=0",
        "--set", "bridge.match_rates=false",
    ])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    summary = json.loads((out / "benchmark.json").read_text())
    runs = {r["method"]: r for r in summary["runs"]}
    assert list(runs) == METHODS.split(",")
    assert summary["ann"]["epochs"] == 2 and summary["ann"]["seconds"] > 0
    assert summary["target_method"] == "scratch" and summary["target_acc"] == runs["scratch"]["best_acc"]
    assert set(summary["time_to_target"]) == set(runs)
    for name, run in runs.items():
        assert run["epochs"] == 1 and run["snn_seconds"] > 0 and 0 <= run["best_acc"] <= 1
        transfers = name != "scratch" and not name.startswith("scratch")
        assert (run["ann_seconds"] > 0) == transfers and (run["transfer_acc"] is not None) == transfers
        # the ANN's and the bridge's seconds come before the SNN's, in wall and in CPU time
        assert (run["bridge_seconds"] > 0) == transfers  # decoder: building the SNN and loading its readout
        assert run["total_seconds"] == pytest.approx(run["ann_seconds"] + run["bridge_seconds"] + run["snn_seconds"],
                                                     abs=2e-3)
        assert [p[1:] for p in run["cpu_curve"]] == [p[1:] for p in run["curve"]] and (run["ann_cpu_seconds"] > 0) == transfers
        reach = summary["time_to_target"][name]
        if reach["total_seconds"] is not None:
            assert reach["total_cpu_seconds"] >= run["ann_cpu_seconds"] + run["bridge_cpu_seconds"] - 1e-3
        assert [p[1] for p in run["curve"]] == ([0, 1] if transfers else [1])
    assert (runs["pretrained+liaf"]["neuron"], runs["scratch+T2"]["T"], runs["pretrained"]["T"]) == ("liaf", 2, 4)
    full = runs["pretrained"]["transferred"]
    assert runs["encoder"]["transferred"] == full - 2 and runs["decoder"]["transferred"] == 2  # fc.weight, fc.bias
    # the console says what the summary counts (encoder's said 'starts from 18' after 'transferred 20 of 20')
    assert f"[benchmark] pretrained: starts from {full} of the ANN's tensors as they are" in printed.out
    assert f"[benchmark] encoder: keeps {full - 2} of the transferred tensors; the readout's 2 start new" in printed.out
    assert "[benchmark] decoder: starts from the ANN's readout (2 tensors) on a random SNN" in printed.out
    assert runs["pretrained+wu"]["warmup_epochs"] == 1
    # warm-up: during its one epoch the transferred encoder stayed as the ANN left it, the readout trained
    ann = load_checkpoint(out / "ann" / "checkpoints" / "last.json").model_state
    warm = load_checkpoint(out / "pretrained+wu" / "checkpoints" / "last.json").model_state
    assert torch.equal(warm["conv1.weight"], ann["conv1.weight"]) and torch.equal(warm["blocks.3.weight"], ann["blocks.3.weight"])
    assert not torch.equal(warm["fc.weight"], ann["fc.weight"])
    table = (out / "benchmark.md").read_text()
    assert all(f"| {name} |" in table for name in runs) and "accuracy_vs_time.png" in table
    header = next(line for line in printed.out.splitlines() if line.startswith("| method"))
    assert header in table  # the printed table is the report's
    for figure in ("accuracy_vs_time.png", "accuracy_vs_epochs.png"):
        assert_figure(out / figure)

    # --ann CKPT: the methods start from that ANN (no new one) and count its training seconds
    again = tmp_path / "again"
    ckpt = out / "ann" / "checkpoints" / "last.json"
    assert cli.main(["benchmark", "--data", "mnist5k", "--out", str(again), "--no-progress", "--ann", str(ckpt),
                     "--methods", "pretrained", "--set", "data.limit_train=128", "--set", "data.limit_test=64",
                     "--set", "finetune.epochs=1", "--set", "bridge.match_rates=false"]) == 0
    reused = json.loads((again / "benchmark.json").read_text())
    assert not (again / "ann").exists() and reused["ann"]["seconds"] == pytest.approx(summary["ann"]["seconds"], abs=1e-3)
    assert reused["runs"][0]["transfer_acc"] == runs["pretrained"]["transfer_acc"]  # the same ANN, the same bridge

    # --ann MODEL --ann-weights FILE: plain weights carry no training record, so no ANN time is counted
    weights = tmp_path / "ann.safetensors"
    save_file({k: v.contiguous() for k, v in load_checkpoint(ckpt).model_state.items()}, str(weights))
    plain = tmp_path / "plain"
    assert cli.main(["benchmark", "--data", "mnist5k", "--out", str(plain), "--no-progress", "--ann", "cnn",
                     "--ann-weights", str(weights), "--methods", "pretrained", "--set", "data.limit_train=128",
                     "--set", "data.limit_test=64", "--set", "finetune.epochs=1",
                     "--set", "bridge.match_rates=false"]) == 0
    loaded = json.loads((plain / "benchmark.json").read_text())
    assert loaded["runs"][0]["ann_seconds"] == 0.0 and loaded["runs"][0]["ann_cpu_seconds"] == 0.0
    assert "without a training record" in (plain / "benchmark.md").read_text()


def test_bad_method_is_a_one_line_error(tmp_path, capsys):
    status = cli.main(["benchmark", "--data", "mnist5k", "--out", str(tmp_path / "b"), "--methods", "pretrained+xyz"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "xyz" in err
    assert not (tmp_path / "b").exists()
    # two names of one SNN at the configured T and neuron: refused by the plan
    assert cli.main(["benchmark", "--plan", "--T", "4", "--methods", "scratch,pretrained,pretrained+T4"]) == 2
    assert "benchmark methods pretrained and pretrained+T4 train the same SNN (T=4, lif)" in capsys.readouterr().err


def test_scratch_methods_on_events_need_no_ann_data(tmp_path, capsys):
    """The README's event benchmark (``--methods scratch`` on an event folder): no ANN trains, so no
    static images are asked for; the SNN trains on the recordings."""
    import _layouts as layouts

    events = layouts.dvs_folder(tmp_path / "dvs", per_class=4, n_events=200)
    out = tmp_path / "bench"
    status = cli.main(["benchmark", "--data", str(events), "--methods", "scratch", "--out", str(out), "--no-progress",
                       "--model", "cnn", "--set", "data.image_size=32", "--set", "events.scratch.epochs=1",
                       "--set", "events.scratch.until_plateau=0", "--set", "events.scratch.batch_size=4"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    summary = json.loads((out / "benchmark.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["scratch"] and summary["ann"] is None
    assert summary["runs"][0]["epochs"] == 1 and not (out / "ann").exists()


def test_benchmark_on_event_frames_resizes_them_to_events_image_size(tmp_path, capsys):
    """benchmark on an event folder reads its frames at ``events.image_size``, as piped does (it
    used ``data.image_size``, the ANN's images' size, and trained at 224 px); the plan shows it."""
    import _layouts as layouts

    es = layouts.es_imagenet(tmp_path / "es", classes=2, train_per_class=2, val_per_class=1)
    argv = ["benchmark", "--data", str(es), "--methods", "scratch", "--out", str(tmp_path / "run"), "--no-progress",
            "--device", "cpu", "--set", "events.image_size=24", "--set", "data.image_size=64", "--set", "model.name=cnn",
            "--set", "events.scratch.epochs=1", "--set", "events.scratch.until_plateau=0",
            "--set", "events.scratch.batch_size=2", "--set", "events.scratch.precise_bn=0", "--set", "run.threads=1"]
    assert cli.main([*argv, "--plan"]) == 0
    (phase,) = json.loads(capsys.readouterr().out)["phases"]
    assert phase["image_size"] == 24
    assert cli.main(argv) == 0, capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "run" / "scratch" / "checkpoints" / "last.json").meta
    assert meta["image_size"] == 24 and meta["input_shape"] == [2, 24, 24]


def test_benchmark_T_methods_on_events_merge_the_frames_and_an_ann_checkpoint_counts_its_cpu_time(tmp_path, capsys):
    """On event frames a method's +T<n> merges the stream's 8 frames into n steps (it trained at
    events.time_bins' 4 while its table and checkpoint said n); an n that does not divide them is
    refused by the plan. An --ann checkpoint's recorded CPU seconds count in the CPU totals, as its
    wall seconds do (they were 0)."""
    ann_out = tmp_path / "ann"
    small = ["--set", "data.limit_train=64", "--set", "data.limit_test=32", "--set", "run.threads=1",
             "--no-progress", "--device", "cpu"]
    assert cli.main(["pretrain", "--data", "mnist5k", "--model", "cnn", "--out", str(ann_out), *small,
                     "--set", "ann.epochs=1"]) == 0
    ckpt = str(ann_out / "ann" / "checkpoints" / "last.json")
    argv = ["benchmark", "--data", "es-mnist", "--ann", ckpt, *small, "--set", "events.scratch.epochs=1",
            "--set", "events.scratch.until_plateau=0", "--set", "events.finetune.epochs=1",
            "--set", "events.scratch.precise_bn=0", "--set", "events.finetune.precise_bn=0"]
    capsys.readouterr()
    assert cli.main([*argv, "--methods", "scratch,scratch+T3", "--out", str(tmp_path / "b3"), "--plan"]) == 2
    assert "scratch+T3: T=3 must divide the 8 event frames of es-mnist" in capsys.readouterr().err
    out = tmp_path / "b"
    assert cli.main([*argv, "--methods", "scratch,scratch+T2,pretrained", "--out", str(out)]) == 0
    for method, steps in (("scratch", 4), ("scratch+T2", 2)):
        meta = load_checkpoint(out / method / "checkpoints" / "last.json").meta
        assert meta["time_steps"] == steps and meta["model"]["T"] == steps, method
    summary = json.loads((out / "benchmark.json").read_text())
    recorded = load_checkpoint(ckpt).meta["cpu_seconds"]
    pretrained = next(r for r in summary["runs"] if r["method"] == "pretrained")
    assert recorded > 0 and pretrained["ann_cpu_seconds"] == pytest.approx(recorded)
