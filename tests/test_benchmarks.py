"""The benchmark harness itself (benchmarks/): workloads build and train, memory child reports."""
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from workloads import Workload, build  # noqa: E402


def test_workload_json_roundtrip_and_labels():
    w = Workload(impl="ours", model="cnn", T=3, batch=2, compact_spikes=False, checkpoint_blocks=True)
    assert Workload.from_json(w.to_json()) == w
    assert w.label() == "ours/rect/float-spikes/ckpt"


def test_ours_and_ann_workloads_train():
    for impl in ("ours", "ann"):
        w = Workload(impl=impl, model="cnn", T=2, batch=2, input="events" if impl == "ours" else "static")
        train_step, infer_step, model = build(w)
        before = [p.detach().clone() for p in model.parameters()]
        loss = train_step()
        assert math.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        infer_step()


def test_memory_child_reports_a_peak():
    w = Workload(impl="ours", model="cnn", T=2, batch=2)
    proc = subprocess.run(
        [sys.executable, str(BENCH / "memory_child.py"), "--workload", w.to_json()],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["peak_bytes"] > 0 and math.isfinite(report["loss"])
    assert report["workload"]["T"] == 2


def test_byo_ann_script_runs_end_to_end(tmp_path):
    """benchmarks/byo_ann_mnist.py (the README's bring-your-own-ANN numbers): it stopped with a
    traceback once the fine-tune was done (its checkpoint of the user's class needs the code named)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "byo_ann_mnist.py"), "--out", str(tmp_path / "byo"), "--ann-epochs", "1",
         "--T-values", "1,2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "byo" / "byo_ann_result.json").read_text())
    assert 0.5 < result["ann_acc"] <= 1 and 0.5 < result["snn_acc_after_1_epoch"] <= 1
    assert (tmp_path / "byo" / "accuracy_vs_T.png").is_file()
