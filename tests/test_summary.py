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
    assert summary["time_ratio"] == {"snn_pretrained": round(10 / 24, 4), "snn_pretrained_total": round(30 / 24, 4),
                                     "snn_events_pretrained": None, "snn_events_pretrained_total": None}
    assert summary["note"] == 1 and summary["runs"] == runs


# -- figures: real content, not only a file size -------------------------------------------------
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]  # matplotlib's line colours C0..C5


def colour_pixels(path, hex_colour: str) -> int:
    """How many pixels of the PNG at ``path`` have ``hex_colour`` (within antialiasing noise)."""
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(str(path))[..., :3]
    want = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(rgb - want).max(axis=-1) < 0.04).sum())


def assert_figure(path):
    """``path`` is a readable, figure-sized PNG that is not blank (text, axes and data drawn)."""
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
    height, width = image.shape[:2]
    assert 150 <= height <= 2000 and 300 <= width <= 2500, (height, width)
    ink = (image[..., :3].min(axis=-1) < 0.9).mean()  # not white
    assert 0.01 < ink < 0.6, f"{path}: {ink:.1%} of the pixels are drawn"
    assert np.unique(image[..., :3].reshape(-1, 3), axis=0).shape[0] > 20  # text, grid, data, legend
    return image


def assert_line_plot(path, lines: int | list[int], *, min_pixels: int = 40) -> None:
    """``path`` is a readable PNG of a figure-sized plot that is not blank and draws lines in
    exactly the colours ``lines`` (indices into matplotlib's cycle C0.. C5; an int n: C0..C(n-1)),
    each with at least ``min_pixels``."""
    assert_figure(path)
    counts = [colour_pixels(path, c) for c in TAB10]
    drawn = set(range(lines)) if isinstance(lines, int) else set(lines)
    assert {i for i, n in enumerate(counts) if n >= min_pixels} == drawn, counts


def test_accuracy_vs_time_figure_draws_every_run_and_the_target(tmp_path):
    from spikebridge.analysis.plots import plot_accuracy_vs_time

    runs = [
        run("snn_pretrained", [[0.0, 0, 0.60], [5.0, 1, 0.80], [10.0, 2, 0.90]]),
        run("snn_scratch", [[8.0, 1, 0.30], [16.0, 2, 0.70], [24.0, 3, 0.85]]),
        {"name": "empty", "epochs": 0, "seconds": 0.0, "best_acc": 0.0, "final_acc": 0.0, "curve": []},
    ]
    plot_accuracy_vs_time(runs, tmp_path / "two.png", title="two runs", targets={"target": 0.85})
    assert_line_plot(tmp_path / "two.png", lines=2)  # the run without a curve draws nothing
    plot_accuracy_vs_time(runs[:1], tmp_path / "one.png", title="one run")
    assert_line_plot(tmp_path / "one.png", lines=1)
    # the dashed grey target line (grey is also in the text's antialiasing: compare with no target)
    assert colour_pixels(tmp_path / "two.png", "#808080") > colour_pixels(tmp_path / "one.png", "#808080") + 200


def test_accuracy_vs_time_shows_every_point_in_its_full_panel():
    """The left panel's range holds every evaluation (the single zoomed panel hid the bridge's
    first point and the scratch runs' first epochs); the right one zooms on the top."""
    from spikebridge.analysis.plots import accuracy_ranges

    demo = [68.4, 95.1, 96.9, 54.8, 87.6, 95.9, 56.8, 87.0, 96.4, 94.7, 96.3, 96.6]
    full_low, zoom_low, high = accuracy_ranges(demo)
    assert full_low <= min(demo) and high >= max(demo) and min(demo) < zoom_low < 96
    assert accuracy_ranges([]) == (0.0, 0.0, 100.5)
    full_low, zoom_low, _ = accuracy_ranges([95.0, 96.2, 96.8, 97.1])  # a fine-tune alone: the zoom is no wider
    assert zoom_low >= full_low == 92.0


def test_the_bridge_seconds_count_in_the_time_to_target():
    from spikebridge.analysis.summary import PIPED, PIPES, build_summary

    runs = [run("ann", [[10.0, 1, 0.9]]), run("snn_pretrained", [[0.0, 0, 0.5], [4.0, 1, 0.95]]),
            run("snn_scratch", [[8.0, 1, 0.6], [16.0, 2, 0.95]])]
    summary = build_summary("d", 4, runs, comparisons=(PIPES, PIPED), extra={"bridge_seconds": 2.5})
    assert summary["time_to_target"] == {"snn_scratch": 16.0, "snn_pretrained": 6.5, "snn_pretrained_total": 16.5}
    assert summary["time_ratio"]["snn_pretrained"] == round(6.5 / 16.0, 4) and summary["bridge_seconds"] == 2.5
    assert "time_to_target_cpu" not in summary  # runs without a CPU-time curve


def test_cpu_time_to_target_has_the_wall_keys():
    from spikebridge.analysis.summary import PIPES, build_summary

    runs = [run("ann", [[10.0, 1, 0.9]]), run("snn_pretrained", [[0.0, 0, 0.5], [4.0, 1, 0.95]]),
            run("snn_scratch", [[8.0, 1, 0.6], [16.0, 2, 0.95]])]
    for entry, cpu in zip(runs, ([[20.0, 1, 0.9]], [[0.0, 0, 0.5], [7.0, 1, 0.95]], [[16.0, 1, 0.6], [40.0, 2, 0.95]])):
        entry.update(cpu_curve=cpu, cpu_seconds=cpu[-1][0])
    summary = build_summary("d", 4, runs, comparisons=(PIPES,), extra={"bridge_seconds": 2.5, "bridge_cpu_seconds": 1.0})
    assert set(summary["time_to_target_cpu"]) == set(summary["time_to_target"])
    assert summary["time_to_target_cpu"] == {"snn_scratch": 40.0, "snn_pretrained": 8.0, "snn_pretrained_total": 28.0}
    assert summary["time_ratio_cpu"]["snn_pretrained"] == 0.2 and summary["time_ratio"]["snn_pretrained"] == round(6.5 / 16, 4)


def test_accuracy_vs_T_labels_ticks_that_do_not_run_together():
    """T = 1..12 on the log axis labelled every T ("9 101112"); beyond 8 values: the powers of
    two, the trained T and the last."""
    from spikebridge.analysis.figures import t_ticks

    assert t_ticks(range(1, 13), [6]) == [1, 2, 4, 6, 8, 12]
    assert t_ticks(range(1, 9)) == list(range(1, 9))


def test_an_ann_checkpoint_s_recorded_time_counts_in_the_total_and_the_report_says_what_it_counts():
    """With ``--ann CKPT`` no ANN trains in the run: ``*_total`` adds the checkpoint's recorded
    seconds (as benchmark does), and report.md says so; weights files record none, and the report
    no longer claims the total includes the ANN."""
    from spikebridge.analysis.summary import PIPES, build_summary
    from spikebridge.pipelines.runs import render_report

    runs = [run("snn_pretrained", [[0.0, 0, 0.5], [4.0, 1, 0.95]]), run("snn_scratch", [[8.0, 1, 0.6], [16.0, 2, 0.95]])]
    summary = build_summary("d", 4, runs, comparisons=(PIPES,), extra={"ann": "a.json", "ann_seconds": 10.0})
    assert summary["time_to_target"]["snn_pretrained_total"] == 14.0
    assert "(14.0 s including the 10.0 s the --ann checkpoint recorded for the ANN)" in render_report(summary, "", "t")
    weights = build_summary("d", 4, runs, comparisons=(PIPES,), extra={"ann": "resnet18_tv"})
    assert weights["time_to_target"]["snn_pretrained_total"] == 4.0
    assert "--ann weights record no training time for the ANN" in render_report(weights, "", "t")


def test_figures_leave_the_user_s_matplotlib_backend_alone(tmp_path):
    """Importing the pipelines and drawing a figure does not switch matplotlib's backend (it set
    Agg at import: a notebook's own plots stopped showing) and leaves no pyplot figure open."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; "
            "import spikebridge.pipelines; from spikebridge.analysis.plots import plot_accuracy_vs_time; "
            "plot_accuracy_vs_time([{'name': 'a', 'best_acc': 0.5, 'curve': [[0, 0, 0.1], [1, 1, 0.5]]}], "
            f"{str(tmp_path / 'f.png')!r}, title='t'); print(matplotlib.get_backend(), len(plt.get_fignums()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["svg", "0"], done.stderr[-2000:]
    assert_figure(tmp_path / "f.png")
