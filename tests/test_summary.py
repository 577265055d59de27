"""summary.json's comparison numbers from hand-made curves: target, time to target, ratio."""
from spikebridge.analysis.summary import PIPED, PIPES, build_summary


def run(name, curve, seconds=None):
    accs = [p[2] for p in curve]
    return {"name": name, "epochs": curve[-1][1], "seconds": seconds or curve[-1][0], "best_acc": max(accs),
            "final_acc": accs[-1], "curve": curve}


def test_targets_times_and_ratios():
    runs = [
        run("ann", [[10.0, 1, 0.9], [20.0, 2, 0.97]]),
        run("snn_pretrained", [[0.0, 0, 0.93], [5.0, 1, 0.955], [10.0, 2, 0.962]]),
        run("snn_scratch", [[8.0, 1, 0.5], [16.0, 2, 0.95], [24.0, 3, 0.96], [32.0, 4, 0.958]]),
        run("snn_events_pretrained", [[0.0, 0, 0.8], [7.0, 1, 0.9]]),
        run("snn_events_scratch", [[9.0, 1, 0.7], [18.0, 2, 0.91]]),
    ]
    summary = build_summary("mnist5k", 4, runs, comparisons=(PIPES, PIPED), extra={"note": 1})
    assert summary["target_acc"] == 0.96 and summary["events_target_acc"] == 0.91
    assert summary["time_to_target"] == {
        "snn_scratch": 24.0, "snn_pretrained": 10.0, "snn_pretrained_total": 30.0,  # + the ANN's 20 s
        "snn_events_scratch": 18.0, "snn_events_pretrained": None, "snn_events_pretrained_total": None,
    }
    assert summary["time_ratio"] == {"snn_pretrained": round(10 / 24, 4), "snn_events_pretrained": None}
    assert summary["note"] == 1 and summary["runs"] == runs
