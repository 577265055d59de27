"""The pipelines' wiring, through the command line: no step of pipeS / pipeD can be dropped quietly.

* pipeS re-calibrates BN and matches firing rates (both recorded in ``summary.json``), and the
  calibration helps: the accuracy right after the transfer beats the same transfer without it.
* A run killed in the middle of an SNN phase and resumed (``--resume``) ends bit for bit where the
  same run left alone ends: during pipeD's warm-up (the transferred layers must stay frozen after
  the resume), with precise BN, and in pipeS with the ANN's optimizer state carried into the
  fine-tune (``bridge.transfer_optimizer``). The same for ``fit`` with all three at once.

Only stable surfaces are used: ``spikebridge.cli.main``, the files a run writes, and ``fit``.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import spikebridge.cli  # noqa: F401  (imported before forking: children start at once)
from spikebridge import create_model
from spikebridge.cli import main
from spikebridge.config import TrainConfig
from spikebridge.data.datasets import open_dataset
from spikebridge.train.checkpoint import load_checkpoint
from spikebridge.train.engine import fit

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["--device", "cpu", "--seed", "0", "--no-progress", "--set", "run.threads=1"]


def set_flags(values: dict) -> list[str]:
    return [flag for key, value in values.items() for flag in ("--set", f"{key}={json.dumps(value)}")]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def ann(tmp_path_factory) -> Path:
    """A sharpened-ReLU CNN trained 2 epochs on 1,024 digits (~50 % test accuracy): a checkpoint. Its
    sharpening spans 4 epochs, so it ends half-way to the step: BN re-calibration and rate matching
    then have a gap to close (an ANN that ends at the step transfers as well without them)."""
    out = tmp_path_factory.mktemp("ann")
    assert main(["pretrain", "--data", "mnist5k", "--model", "cnn", "--epochs", "2", "--out", str(out), *COMMON,
                 *set_flags({"data.limit_train": 1024, "data.limit_test": 256, "neuron.sharpen_epochs": 4})]) == 0
    return out / "ann" / "checkpoints" / "last.json"


# ------------------------------------------------------------------------------------------------
# pipeS: the calibration happened and helped
# ------------------------------------------------------------------------------------------------
def pipes_transfer(ann: Path, out: Path, **bridge) -> dict:
    """``pipes --ann CKPT`` without fine-tuning epochs: the summary of the transfer alone."""
    values = {"data.limit_train": 512, "data.limit_test": 256, "finetune.epochs": 0,
              "bridge.calibration_batch_size": 128, **{f"bridge.{k}": v for k, v in bridge.items()}}
    assert main(["pipes", "--data", "mnist5k", "--ann", str(ann), "--out", str(out), *COMMON, *set_flags(values)]) == 0
    return summary(out)


@pytest.mark.slow
def test_pipes_recalibrates_bn_and_matches_rates_and_it_helps(ann, tmp_path):
    full = pipes_transfer(ann, tmp_path / "full")
    bn_only = pipes_transfer(ann, tmp_path / "bn_only", match_rates=False)
    none = pipes_transfer(ann, tmp_path / "none", recalibrate_bn=False, match_rates=False)
    accs = {name: s["transfer_acc"] for name, s in (("full", full), ("bn_only", bn_only), ("none", none))}
    print(accs, "ANN", full["ann_acc"])

    # recorded: the CNN's 3 BN layers re-calibrated, its 3 spiking layers' rates matched to the ANN's
    assert full["transfer"]["recalibrated_bn"] == 3
    assert sorted(full["transfer"]["rate_errors"]) == ["act1", "blocks.2", "blocks.5"]
    assert all(0 <= e < 0.05 for e in full["transfer"]["rate_errors"].values()), full["transfer"]["rate_errors"]
    assert bn_only["transfer"]["recalibrated_bn"] == 3 and bn_only["transfer"]["rate_errors"] == {}
    assert none["transfer"]["recalibrated_bn"] == 0 and none["transfer"]["rate_errors"] == {}
    assert full["transfer"]["matched"] == 20 and full["transfer"]["match_fraction"] == 1.0

    # it helped: uncalibrated, the SNN keeps the ANN's BN statistics and loses ~half its accuracy
    # (measured: ANN 0.53; full 0.52, BN only 0.48, none 0.29 on 256 test digits)
    assert full["ann_acc"] > 0.4
    assert accs["full"] > accs["none"] + 0.1 and accs["bn_only"] > accs["none"] + 0.1, accs
    assert accs["full"] > full["ann_acc"] - 0.1, accs


def test_the_bridge_says_when_it_does_not_match_rates(ann, tmp_path, capsys):
    """bridge.match_rates does not apply to a LIAF SNN (its output is analog): the run says so
    (it skipped it without a word while the plan showed match_rates: true)."""
    values = {"data.limit_train": 128, "data.limit_test": 64, "finetune.epochs": 0, "bridge.calibration_batch_size": 64}
    out = tmp_path / "liaf"
    assert main(["pipes", "--data", "mnist5k", "--ann", str(ann), "--neuron", "liaf", "--out", str(out), *COMMON,
                 *set_flags(values)]) == 0
    transfer = summary(out)["transfer"]
    assert transfer["rate_errors"] == {} and transfer["rates_not_matched"] == "liaf's output is analog"
    assert "firing rates not matched (bridge.match_rates): liaf's output is analog" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# resume in the middle of an SNN phase == left alone, bit for bit
# ------------------------------------------------------------------------------------------------
def _own_progress_lock() -> None:
    """A forked child takes a tqdm lock of its own (one killed while holding the shared one would
    block this process at its next progress bar; see test_crash_safety.py)."""
    import threading

    import tqdm.auto
    import tqdm.std

    for cls in (tqdm.std.tqdm, tqdm.auto.tqdm):
        cls.set_lock(threading.RLock())


def _child(argv: list[str]) -> None:
    _own_progress_lock()
    torch.set_num_threads(1)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(argv)
    os._exit(code)


def kill_during_second_epoch(argv: list[str], checkpoint: Path) -> None:
    """Run ``spikebridge ARGV`` in a forked child and SIGKILL it as soon as ``checkpoint`` holds
    epoch 1 (the child is then inside epoch 2 of that phase)."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    deadline = time.monotonic() + 300
    try:
        while not checkpoint.exists():
            assert proc.is_alive(), f"the run ended (exit {proc.exitcode}) before {checkpoint} was written"
            assert time.monotonic() < deadline, f"no {checkpoint} after 300 s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode
    assert load_checkpoint(checkpoint).epoch == 1, "killed too late: not inside epoch 2"


def assert_same_run(a: Path, b: Path) -> None:
    """Two checkpoints of the same phase: equal weights, BN statistics, optimizer state, metrics."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.epoch == cb.epoch
    assert ca.model_state.keys() == cb.model_state.keys()
    for key in ca.model_state:
        assert torch.equal(ca.model_state[key], cb.model_state[key]), key
    oa, ob = ca.optimizer_state(), cb.optimizer_state()
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for index, state in oa["state"].items():
        for name, value in state.items():
            other = ob["state"][index][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, name)
    timeless = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert timeless(ca.meta["history"]) == timeless(cb.meta["history"])


@pytest.mark.slow
def test_resume_during_pipeds_warmup_keeps_the_transferred_layers_frozen(ann, tmp_path):
    """pipeD, the event fine-tune with a 2-epoch warm-up ("+WU") and precise BN, killed in epoch 2."""
    values = {"data.limit_train": 256, "data.limit_test": 64, "events.compare_first_layer": False,
              "events.finetune.epochs": 3, "events.finetune.freeze_epochs": 2, "events.finetune.precise_bn": 128,
              "events.finetune.batch_size": 32, "bridge.calibration_batches": 1,
              "bridge.calibration_batch_size": 64}
    argv = ["piped", "--data", "mnist5k", "--events", "es-mnist", "--ann", str(ann), *COMMON, *set_flags(values)]
    phase = Path("snn_events_pretrained", "checkpoints", "last.json")
    kill_during_second_epoch([*argv, "--out", str(tmp_path / "killed")], tmp_path / "killed" / phase)
    assert main([*argv, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert main([*argv, "--out", str(tmp_path / "alone")]) == 0
    assert_same_run(tmp_path / "killed" / phase, tmp_path / "alone" / phase)
    assert load_checkpoint(tmp_path / "alone" / phase).epoch == 3
    resumed, alone = summary(tmp_path / "killed"), summary(tmp_path / "alone")
    assert [r["curve"] for r in resumed["runs"]] and \
        [[p[1:] for p in r["curve"]] for r in resumed["runs"]] == [[p[1:] for p in r["curve"]] for r in alone["runs"]]


@pytest.mark.slow
def test_resume_during_pipes_finetune_with_the_anns_optimizer_state(tmp_path):
    """pipeS with the ANN trained in the run and its momentum carried into the fine-tune (SGD), precise
    BN; killed in epoch 2 of the fine-tune."""
    values = {"data.limit_train": 256, "data.limit_test": 64, "ann.epochs": 1, "ann.batch_size": 32,
              "ann.optimizer": "sgd", "finetune.optimizer": "sgd", "finetune.lr": 0.01, "finetune.epochs": 3,
              "finetune.batch_size": 32, "finetune.precise_bn": 128, "bridge.transfer_optimizer": True,
              "bridge.calibration_batches": 1, "bridge.calibration_batch_size": 64}
    argv = ["pipes", "--data", "mnist5k", "--model", "cnn", *COMMON, *set_flags(values)]
    phase = Path("snn_pretrained", "checkpoints", "last.json")
    kill_during_second_epoch([*argv, "--out", str(tmp_path / "killed")], tmp_path / "killed" / phase)
    first_bridge = load_checkpoint(tmp_path / "killed" / phase).meta["bridge_seconds"]
    assert main([*argv, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert main([*argv, "--out", str(tmp_path / "alone")]) == 0
    for name in ("ann", "snn_pretrained"):
        assert_same_run(tmp_path / "killed" / name / "checkpoints" / "last.json",
                        tmp_path / "alone" / name / "checkpoints" / "last.json")
    # the resumed run reports the first run's bridge, which it did not time again
    resumed = summary(tmp_path / "killed")
    assert [resumed["bridge_seconds"], resumed["bridge_cpu_seconds"]] == pytest.approx(first_bridge, abs=1e-3)
    assert resumed["transfer"]["bridge_seconds"] == resumed["bridge_seconds"]
    assert load_checkpoint(tmp_path / "killed" / phase).meta["bridge_seconds"] == first_bridge
    # its wall time is this session's alone, and it says so (it read as the whole run's)
    assert resumed["wall_seconds_session"] is True and "wall_seconds_session" not in summary(tmp_path / "alone")
    assert f"Wall time of this session: {resumed['wall_seconds']} s (resumed with --resume; earlier sessions are not" \
        in (tmp_path / "killed" / "report.md").read_text()


class Interrupted(Exception):
    pass


def test_fit_resumed_inside_the_warmup_equals_uninterrupted(tmp_path):
    """``fit`` with all three at once: a 2-epoch warm-up, precise BN and a transferred optimizer state
    (an ANN run's momentum), interrupted after epoch 2's training (epoch 1 is the last checkpoint)."""
    bundle = open_dataset("mnist5k", limit_train=128, limit_test=64)
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=0.02, schedule="cosine", batch_size=32, freeze_epochs=2,
                      precise_bn=64)

    def model(neuron: str, T: int) -> torch.nn.Module:
        torch.manual_seed(1)
        return create_model("cnn", num_classes=10, neuron=neuron, T=T, in_channels=1)

    ann = fit(model("relu", 1), bundle, TrainConfig(epochs=1, optimizer="sgd", lr=0.02, batch_size=32),
              name="ann", run_dir=None, progress=False)
    momentum = ann.optimizer_state
    frozen = {k for k in model("lif", 2).state_dict() if not k.startswith("fc")} & {
        k for k, _ in model("lif", 2).named_parameters()}
    assert momentum and frozen and len(frozen) < len(list(model("lif", 2).parameters()))

    def run(out: Path, *, resume: bool = False, interrupt_at: int | None = None) -> tuple[torch.nn.Module, list]:
        snn = model("lif", 2)
        start = {k: v.clone() for k, v in snn.state_dict().items() if k in frozen}
        seen = []

        def on_epoch(record: dict) -> None:
            state = snn.state_dict()
            seen.append((record["epoch"], all(torch.equal(state[k], start[k]) for k in frozen)))
            if record["epoch"] == interrupt_at:
                raise Interrupted

        with contextlib.suppress(Interrupted):
            fit(snn, bundle, cfg, name="snn", run_dir=out, seed=5, progress=False, resume=resume, frozen=frozen,
                optimizer_state=momentum, on_epoch=on_epoch)
        return snn, seen

    alone, seen_alone = run(tmp_path / "alone")
    assert seen_alone == [(1, True), (2, True), (3, False)]  # frozen for the warm-up, then trained
    run(tmp_path / "killed", interrupt_at=2)
    assert load_checkpoint(tmp_path / "killed" / "snn" / "checkpoints" / "last.json").epoch == 1
    # resuming at epoch 1 of the 2-epoch warm-up: the transferred tensors stay where the checkpoint has them
    resumed, seen_resumed = run(tmp_path / "killed", resume=True)
    assert seen_resumed[0] == (2, True) and [e for e, _ in seen_resumed] == [2, 3]
    assert_same_run(tmp_path / "killed" / "snn" / "checkpoints" / "last.json",
                    tmp_path / "alone" / "snn" / "checkpoints" / "last.json")
    for key, value in alone.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
