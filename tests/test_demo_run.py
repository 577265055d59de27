"""``spikebridge demo`` end to end, tiny: every step of the main job runs and lands in its outputs.

One run through the command line (256 digits, 1 epoch per phase, one thread, ~20 s) is shared by
the tests below. They pin the wiring, not the accuracies: each phase ran (a run, a curve, a
checkpoint, a metrics row), the bridge re-calibrated BN and matched the firing rates, pipeD's
first-layer comparison ran all three modes, the conversion curve was computed, and ``summary.json``
/ ``report.md`` / the figures carry all of it.
"""
import csv
import contextlib
import io
import json
import math

import pytest
from test_summary import assert_line_plot

from spikebridge.cli import main
from spikebridge.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

TINY = {
    "run.threads": 1, "data.limit_train": 256, "data.limit_test": 128,
    "ann.epochs": 1, "finetune.epochs": 1, "scratch.epochs": 1, "scratch.until_plateau": 0,
    "events.finetune.epochs": 1, "events.scratch.epochs": 1, "events.scratch.until_plateau": 0,
    "events.compare_first_layer": True, "events.compare_epochs": 1, "demo_conversion_samples": 64,
    "finetune.precise_bn": 128, "scratch.precise_bn": 128,
    "events.finetune.precise_bn": 128, "events.scratch.precise_bn": 128,
    "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 64,
}
RUNS = ["ann", "snn_pretrained", "snn_scratch", "snn_events_pretrained", "snn_events_scratch"]
MODES = {"mean", "signed_polarity", "skip"}


def set_flags(values: dict) -> list[str]:
    return [flag for key, value in values.items() for flag in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--no-progress", "--device", "cpu", "--seed", "0", *set_flags(TINY)])
    assert code == 0, "spikebridge demo failed (see the captured stderr)"
    last = printed.getvalue().splitlines()[-1]  # the run names everything it wrote, read from the folder
    shown = [p for p in out.iterdir() if not p.name.startswith(".")]  # not the run folder's own marker
    assert last == f"wrote {out}: " + ", ".join(
        sorted(p.name for p in shown if p.is_file()) + sorted(p.name + "/" for p in shown if p.is_dir()))
    assert "accuracy_vs_T.png" in last and "config.yaml" in last, last
    return out, json.loads((out / "summary.json").read_text())


def is_acc(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_summary_has_every_key_of_the_main_job(demo):
    out, summary = demo
    required = {"dataset", "T", "runs", "target_acc", "events_target_acc", "time_to_target", "time_ratio",
                "transfer", "transfer_acc", "conversion_vs_bridge", "events_data", "events_transfer",
                "first_layer_comparison", "wall_seconds"}
    assert required <= set(summary), required - set(summary)
    assert summary["dataset"] == "mnist5k" and summary["T"] == 4 and summary["events_data"] == "es-mnist"
    assert isinstance(summary["wall_seconds"], float) and summary["wall_seconds"] > 0

    runs = {r["name"]: r for r in summary["runs"]}
    assert list(runs) == RUNS
    for name, r in runs.items():
        assert {"epochs", "seconds", "best_acc", "final_acc", "curve"} <= set(r), name
        assert r["epochs"] == 1 and r["seconds"] > 0 and is_acc(r["best_acc"]) and is_acc(r["final_acc"]), r
        # the fine-tuned SNNs start with their accuracy right after the transfer, at 0 s
        expected_points = 2 if name.endswith("pretrained") else 1
        assert len(r["curve"]) == expected_points and r["curve"][-1][1] == 1, (name, r["curve"])
        assert max(p[2] for p in r["curve"]) == r["best_acc"]
    assert runs["snn_pretrained"]["curve"][0][:2] == [0.0, 0]
    assert summary["transfer_acc"] == runs["snn_pretrained"]["curve"][0][2]

    assert summary["target_acc"] == runs["snn_scratch"]["best_acc"]
    assert summary["events_target_acc"] == runs["snn_events_scratch"]["best_acc"]
    assert set(summary["time_to_target"]) == {
        "snn_scratch", "snn_pretrained", "snn_pretrained_total",
        "snn_events_scratch", "snn_events_pretrained", "snn_events_pretrained_total"}
    assert set(summary["time_ratio"]) == set(summary["time_ratio_cpu"]) == {
        "snn_pretrained", "snn_pretrained_total", "snn_events_pretrained", "snn_events_pretrained_total"}

    # checkpoints and metrics of every phase
    for name in RUNS:
        ckpt = load_checkpoint(out / name / "checkpoints" / "last.json")
        assert ckpt.epoch == 1 and ckpt.meta["name"] == name
        assert [h["test_acc"] for h in ckpt.meta["history"]] == [p[2] for p in runs[name]["curve"]]
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == [n for n in RUNS for _ in runs[n]["curve"]]
    assert all(float(r["test_acc"]) == pytest.approx(p[2]) for r, p in
               zip(rows, [p for n in RUNS for p in runs[n]["curve"]]))
    assert (out / "config.yaml").is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_the_bridge_recalibrated_bn_and_matched_rates(demo):
    _out, summary = demo
    static, events = summary["transfer"], summary["events_transfer"]
    for t in (static, events):
        assert t["total"] == 20
        assert {"matched", "adapted", "reinitialised", "missing", "unexpected", "mismatched", "match_fraction",
                "recalibrated_bn", "rate_errors"} <= set(t)
        assert t["recalibrated_bn"] == 3 and t["match_fraction"] == 1.0 and not t["missing"] and not t["mismatched"]
    # pipeS (same data, sharpened-ReLU ANN, LIF): every spiking layer's rate matched to the ANN's
    assert static["matched"] == 20 and static["adapted"] == []
    assert len(static["rate_errors"]) == 3 and all(0 <= e < 0.05 for e in static["rate_errors"].values())
    # pipeD: the grey first layer adapted to 2 polarities; no rate matching on other data
    assert events["matched"] == 19 and events["adapted"] == ["conv1.weight"] and events["rate_errors"] == {}


def test_pipeds_first_layer_comparison_ran_every_mode(demo):
    _out, summary = demo
    comparison = summary["first_layer_comparison"]
    assert comparison["T"] == 4 and set(comparison["modes"]) == MODES
    for mode, entry in comparison["modes"].items():
        assert is_acc(entry["transfer_acc"]), mode
        assert len(entry["acc"]) == 1 and is_acc(entry["acc"][0]), (mode, entry)  # events.compare_epochs=1
        assert len(entry["seconds"]) == 1 and entry["seconds"][0] > 0, (mode, entry)
    # the configured mode (bridge.first_layer, "mean") is the fine-tuned run itself
    pretrained = next(r for r in summary["runs"] if r["name"] == "snn_events_pretrained")
    assert comparison["modes"]["mean"]["transfer_acc"] == pretrained["curve"][0][2]
    assert comparison["modes"]["mean"]["acc"] == [pretrained["curve"][1][2]]


def test_conversion_vs_bridge_covers_every_T(demo):
    out, summary = demo
    conv = summary["conversion_vs_bridge"]
    assert {"bridge", "conversion", "trained_T", "bridge_acc_at_trained_T", "conversion_T_to_match",
            "samples"} <= set(conv)
    assert [t for t, _ in conv["bridge"]] == [1, 2, 4, 8, 16, 32] == [t for t, _ in conv["conversion"]]
    assert all(is_acc(a) for _, a in conv["bridge"] + conv["conversion"])
    assert conv["trained_T"] == 4 and conv["samples"] == 64
    assert conv["bridge_acc_at_trained_T"] == dict(conv["bridge"])[4]
    assert_line_plot(out / "accuracy_vs_T.png", lines=[0, 2])  # bridge (C0, ringed at T=4: C1 skipped), conversion


def test_report_and_figure(demo):
    out, summary = demo
    report = (out / "report.md").read_text()
    assert report.startswith("# spikebridge demo on mnist5k")
    for name in RUNS:
        assert f"| {name} | 1 |" in report, name
    for needle in ("- **static**: target = best accuracy of `snn_scratch`",
                   "- **event**: target = best accuracy of `snn_events_scratch`",
                   f"accuracy right after the transfer, before any SNN training: {summary['transfer_acc']:.4f}",
                   "![accuracy vs training time](accuracy_vs_time.png)",
                   "## The bridge vs ANN-to-SNN conversion of the same ANN", "![accuracy vs T](accuracy_vs_T.png)",
                   f"On a seeded subset of {summary['conversion_vs_bridge']['samples']} test samples",
                   "## First-layer adaptation",
                   "Transfer (static): transferred 20 of the SNN's 20 tensors (100%), adapted 0,",
                   "BN layers re-calibrated: 3", "Transfer (event): transferred 20 of the SNN's 20 tensors (100%), adapted 1,",
                   f"Wall time of the whole run: {summary['wall_seconds']} s."):
        assert needle in report, needle
    for mode, entry in summary["first_layer_comparison"]["modes"].items():
        assert f"| {mode} | {entry['transfer_acc']:.4f} | {entry['acc'][0]:.4f} |" in report, mode
    for t, acc in summary["conversion_vs_bridge"]["bridge"]:
        assert f"| {t} | {acc:.4f} |" in report
    assert not any(math.isnan(r["best_acc"]) for r in summary["runs"])
    assert_line_plot(out / "accuracy_vs_time.png", lines=len(RUNS))


def test_the_time_figure_starts_a_bridged_snn_after_its_bridge(demo):
    from spikebridge.analysis.summary import PIPED, PIPES
    from spikebridge.pipelines.runs import curves_after_bridge

    _out, summary = demo
    plotted = {run["name"]: run["curve"] for run in curves_after_bridge(summary, (PIPES, PIPED))}
    runs = {run["name"]: run["curve"] for run in summary["runs"]}
    for name, bridge in (("snn_pretrained", summary["bridge_seconds"]), ("snn_events_pretrained",
                                                                        summary["events_bridge_seconds"])):
        assert bridge > 0 and plotted[name][0][0] == pytest.approx(runs[name][0][0] + bridge)
        assert [p[1:] for p in plotted[name]] == [p[1:] for p in runs[name]]
    assert plotted["snn_scratch"] == runs["snn_scratch"] and plotted["ann"] == runs["ann"]
