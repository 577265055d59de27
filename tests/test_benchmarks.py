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
