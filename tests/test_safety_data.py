"""Hostile datasets, conversions and exports (issue "Trust and safety"), each test written as the
attack: symlink loops, label files that point outside the dataset, system folders as --data,
decompression bombs (PNG and .npz), conversions into folders that are not their own, unbounded
parameters, a SIGKILL to a multi-process conversion, and an export over its own checkpoint."""
from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _layouts import write_nmnist_bin
from spikebridge.cli import main
from spikebridge.data.convert import convert_image_folder_odg
from spikebridge.data.datasets import open_dataset
from spikebridge.data.disk import open_path_dataset
from spikebridge.data.events import ESImageNetDataset, read_es_sample, read_label_file
from spikebridge.data.folders import ImageFolderDataset, load_image
from spikebridge.data.video import read_video_events
from spikebridge.errors import ConfigError, DataError
from spikebridge.utils import atomic_path, remove_stale_temps, temp_target

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")


def digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder`` (hidden ones included)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def photos(folder: Path, n: int, size: int = 40, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ------------------------------------------------------------------------------------------------
# folder scans: symlink loops
# ------------------------------------------------------------------------------------------------
def test_symlink_loops_scan_once_with_exact_counts(tmp_path, capsys):
    train = tmp_path / "ds" / "train"
    photos(train / "cat", 40, size=8)
    photos(train / "dog", 3, size=8)
    photos(train / "dog" / "sub", 2, size=8)
    (train / "cat" / "loop_a").symlink_to(".")  # two links back to the folder itself
    (train / "cat" / "loop_b").symlink_to(".")
    (train / "cat" / "whole_disk").symlink_to("/")  # a link to the root of the file system
    (train / "dog" / "sub" / "up").symlink_to("../..")  # a link to an ancestor (the split folder)
    (train / "dog" / "again").symlink_to("sub")  # the same folder twice: read once
    started = time.monotonic()
    dataset = ImageFolderDataset(train)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"the scan took {elapsed:.1f} s"
    counts = {name: dataset.targets.count(idx) for name, idx in dataset.class_to_idx.items()}
    assert counts == {"cat": 40, "dog": 5}
    assert len({p for p, _ in dataset.samples}) == len(dataset.samples) == 45
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("spikebridge: warning: skipped 3 symlinked folder(s)")
    assert "spikebridge: warning: skipped 2 symlinked folder(s)" in err
    # the dataset opened the way --data opens it: the same exact counts, quickly
    (tmp_path / "ds" / "val").symlink_to("train")
    started = time.monotonic()
    bundle = open_dataset(str(tmp_path / "ds"))
    assert time.monotonic() - started < 20
    assert len(bundle.train) == len(bundle.test) == 45


def test_event_folder_scan_skips_loops(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(5):
            folder = tmp_path / cls
            folder.mkdir(exist_ok=True)
            n = 200
            write_nmnist_bin(folder / f"{i}.bin", (rng.integers(0, 34, n), rng.integers(0, 34, n),
                                                   np.sort(rng.integers(0, 10**5, n)), rng.integers(0, 2, n)))
        (tmp_path / cls / "self").symlink_to(".")
        (tmp_path / cls / "root").symlink_to("/")
    bundle = open_path_dataset(tmp_path, time_steps=2)
    assert len(bundle.train) + len(bundle.test) == 10
    assert "spikebridge: warning: skipped 2 symlinked folder(s)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# label files and --data
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("escape", ["../../secret.npz", "../outside/secret.npz", "ABSOLUTE"])
def test_label_file_paths_cannot_leave_the_dataset(tmp_path, escape):
    secret = tmp_path / "outside" / "secret.npz"
    secret.parent.mkdir()
    np.savez(secret, pos=np.zeros((0, 3), np.uint8), neg=np.zeros((0, 3), np.uint8))
    root = tmp_path / "data" / "es"
    (root / "cls").mkdir(parents=True)
    np.savez(root / "cls" / "ok.npz", pos=np.zeros((0, 3), np.uint8), neg=np.zeros((0, 3), np.uint8))
    rel = str(secret) if escape == "ABSOLUTE" else escape
    (root / "labels.txt").write_text(f"cls/ok.npz 0 254 254\n{rel} 0 254 254\n")
    with pytest.raises(DataError, match="leaves the dataset folder") as info:
        read_label_file(root / "labels.txt", check_files=False)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="leaves the dataset folder"):
        ESImageNetDataset(root)
    (root / "labels.txt").write_text(f"{rel} 0 254 254\n")  # the first entry decides the layout
    with pytest.raises(DataError, match="leaves the dataset folder"):
        open_dataset(str(root))


@pytest.mark.parametrize("folder", ["/", "/proc", "/proc/self", "/sys"])
def test_system_folders_as_data_are_one_line_errors(folder, tmp_path, capsys):
    started = time.monotonic()
    assert main(["pretrain", "--data", folder, "--out", str(tmp_path / "run")]) == 2
    assert time.monotonic() - started < 10
    line = one_line(capsys.readouterr().err)
    assert line.startswith("spikebridge: error:") and "not a dataset" in line


# ------------------------------------------------------------------------------------------------
# decompression bombs
# ------------------------------------------------------------------------------------------------
def png_bomb(path: Path, side: int = 13000) -> None:
    """A grey ``side`` x ``side`` PNG of zeros, compressed chunk by chunk (a few hundred KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(comp.compress(row * 100) for _ in range(side // 100)) + comp.compress(row * (side % 100))
    body += comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def npz_bomb(path: Path, name: str, shape: tuple[int, ...], data_bytes: int) -> None:
    """An .npz whose ``name`` array claims ``shape`` uint8 and holds ``data_bytes`` zeros (streamed)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            block = b"\0" * (16 << 20)
            for start in range(0, data_bytes, len(block)):
                fh.write(block[: min(len(block), data_bytes - start)])


# the peak resident memory of this process's own address space (VmHWM; ru_maxrss would carry the
# parent's peak over vfork + exec)
BOUNDED = textwrap.dedent("""
    import sys, time
    from spikebridge.errors import DataError
    {imports}
    def peak_kb():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    before = peak_kb()
    started = time.monotonic()
    try:
        {call}
        print("ACCEPTED")
    except DataError as exc:
        print("REFUSED", exc)
    grown = (peak_kb() - before) / 1024
    print(f"GROWN_MB {{grown:.0f}} SECONDS {{time.monotonic() - started:.1f}}")
""")


def bounded(imports: str, call: str) -> tuple[str, float, float]:
    """Run ``call`` in a fresh process: (its one-line outcome, peak memory growth in MB, seconds)."""
    done = subprocess.run([sys.executable, "-c", BOUNDED.format(imports=imports, call=call)], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, numbers = done.stdout.strip().splitlines()[-2:]
    grown, seconds = re.fullmatch(r"GROWN_MB (\d+) SECONDS ([\d.]+)", numbers).groups()
    return outcome, float(grown), float(seconds)


def test_png_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "ds" / "train" / "cat" / "bomb.png"
    photos(bomb.parent, 4, size=32)
    photos(tmp_path / "ds" / "train" / "dog", 4, size=32)
    photos(tmp_path / "ds" / "val" / "cat", 2, size=32)
    photos(tmp_path / "ds" / "val" / "dog", 2, size=32)
    png_bomb(bomb)
    assert bomb.stat().st_size < 1 << 20
    # a 32 px dataset holding a 13000 x 13000 PNG (1.6 GB decoded)
    outcome, grown, seconds = bounded("from spikebridge.data.datasets import open_dataset",
                                      f"open_dataset({str(tmp_path / 'ds')!r})")
    assert outcome.startswith("REFUSED image ") and "13000x13000" in outcome and "bomb.png" in outcome
    assert grown < 150 and seconds < 20, (grown, seconds)
    # the converter reports it as unreadable and converts the rest
    outcome, grown, seconds = bounded(
        "from spikebridge.data.convert import convert_image_folder_odg",
        f"r = convert_image_folder_odg({str(tmp_path / 'ds' / 'train')!r}, {str(tmp_path / 'es')!r}, progress=False, "
        "odg_kwargs={'min_events': 0}); raise DataError(f'{r.failed} {r.converted}')")
    assert "cat/bomb.png" in outcome and "13000x13000" in outcome and outcome.endswith(" 8"), outcome
    assert grown < 150 and seconds < 30, (grown, seconds)
    with pytest.raises(DataError, match="13000x13000"):
        load_image(bomb, "RGB", need=32)


def test_large_jpeg_decodes_at_the_scale_needed(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2000, 1600, 3), dtype=np.uint8)).save(path)
    assert load_image(path, "RGB").size == (1600, 2000)
    assert load_image(path, "RGB", need=32).size == (200, 250)  # 1/8 scale: both sides still >= 32
    assert load_image(path, "L", need=500).size == (800, 1000)


def test_npz_bombs_are_refused_from_their_headers(tmp_path):
    # a genuine bomb: ~0.3 MB on disk, 300 MB unpacked (above the 256 MiB cap of one array)
    genuine = tmp_path / "clip.npz"
    npz_bomb(genuine, "events", (2, 30, 2240, 2240), 2 * 30 * 2240 * 2240)
    assert genuine.stat().st_size < 2 << 20
    # a lying header: 4.2 GB claimed, 1 KB stored
    liar = tmp_path / "liar.npz"
    npz_bomb(liar, "events", (2, 30, 8400, 8400), 1024)
    for path in (genuine, liar):
        outcome, grown, seconds = bounded("from spikebridge.data.video import read_video_events",
                                          f"read_video_events({str(path)!r})")
        assert outcome.startswith("REFUSED") and "would unpack to" in outcome, outcome
        assert grown < 50 and seconds < 10, (grown, seconds)
    # an ES-ImageNet sample is bounded by what it can hold: 256 x 256 x 8 distinct events
    sample = tmp_path / "sample.npz"
    npz_bomb(sample, "pos", (4_000_000, 3), 12_000_000)
    with zipfile.ZipFile(sample, "a") as archive:
        archive.writestr("neg.npy", b"")
    with pytest.raises(DataError, match="would unpack to"):
        read_es_sample(sample)
    # a header that claims more than the member holds is truncated, not allocated
    short = tmp_path / "short.npz"
    npz_bomb(short, "events", (2, 30, 100, 100), 1000)
    with pytest.raises(DataError, match="truncated"):
        read_video_events(short)
    # and every np.load in the package refuses pickles
    calls = [(p, line) for p in (ROOT / "src").rglob("*.py") for line in p.read_text().splitlines()
             if "np.load(" in line]
    assert calls and all("allow_pickle=False" in line for _, line in calls), calls


# ------------------------------------------------------------------------------------------------
# convert: only its own files
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def cats(tmp_path):
    src = tmp_path / "input"
    photos(src / "cat", 3, size=64, seed=1)
    photos(src / "dog", 3, size=64, seed=2)
    return src


def foreign_folder(out: Path) -> None:
    (out / ".git").mkdir(parents=True)
    (out / ".git" / ".index.lock.tmp").write_bytes(b"git's own lock")
    (out / "labels.txt").write_text("my own notes, not a label file\n")
    (out / "cat").mkdir()
    (out / "cat" / "0.npz").write_bytes(b"the user's precious array")
    (out / "cat" / ".0.npz.abc123.tmp").write_bytes(b"another program's temporary file")


def test_convert_refuses_a_foreign_folder_and_keeps_every_file(cats, tmp_path, capsys):
    out = tmp_path / "mine"
    foreign_folder(out)
    before = digest(out)
    with pytest.raises(DataError, match="not empty .* holds no earlier conversion"):
        convert_image_folder_odg(cats, out, progress=False)
    assert digest(out) == before
    assert main(["convert", "odg", "--input", str(cats), "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in one_line(capsys.readouterr().err)
    assert digest(out) == before
    # with --overwrite the user asked for same-named files to be replaced; foreign temporaries stay
    assert main(["convert", "odg", "--input", str(cats), "--out", str(out), "--no-progress", "--overwrite",
                 "--min-events", "0"]) == 0
    after = digest(out)
    for kept in (".git/.index.lock.tmp", "cat/.0.npz.abc123.tmp"):
        assert after[kept] == before[kept]
    assert after["cat/0.npz"] != before["cat/0.npz"] and len(read_label_file(out / "labels.txt")) == 6


def test_convert_resumes_its_own_folder_without_touching_foreign_files(cats, tmp_path):
    out = tmp_path / "es"
    first = convert_image_folder_odg(cats, out, progress=False, odg_kwargs={"min_events": 0})
    assert first.converted == 6
    (out / ".git").mkdir()
    (out / ".git" / ".index.lock.tmp").write_bytes(b"git's own lock")
    (out / "cat" / ".0.npz.abc123.tmp").write_bytes(b"another program's temporary file")
    (out / "cat" / ".spikebridge-tmp.1.npz.0123456789ab.tmp").write_bytes(b"our half-written file")
    (out / "cat" / "1.npz").unlink()  # a sample the killed run did not finish
    foreign = {k: v for k, v in digest(out).items() if k.startswith(".git") or k.endswith("abc123.tmp")}
    again = convert_image_folder_odg(cats, out, progress=False, odg_kwargs={"min_events": 0})
    assert (again.converted, again.reused, again.stale_temp_removed) == (1, 5, 1)
    after = digest(out)
    assert {k: after[k] for k in foreign} == foreign
    assert not (out / "cat" / ".spikebridge-tmp.1.npz.0123456789ab.tmp").exists()


def test_convert_refuses_nested_input_and_output(cats, tmp_path, capsys):
    with pytest.raises(ConfigError, match="inside --input"):
        convert_image_folder_odg(cats, cats / "events", progress=False)
    with pytest.raises(ConfigError, match="--input .* lies inside --out"):
        convert_image_folder_odg(cats, tmp_path, progress=False, overwrite=True)
    assert main(["convert", "odg", "--input", str(cats), "--out", str(tmp_path), "--overwrite"]) == 2
    assert "lies inside --out" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "conversion.json").exists() and not (cats / "events").exists()


def test_stale_temp_cleanup_matches_only_its_own_names(tmp_path):
    foreign = [".metrics.csv.abc123.tmp", "metrics.csv.tmp", ".spikebridge-tmp.metrics.csv.XYZ.tmp",
               ".spikebridge-tmp.other.csv.0123456789ab.tmp"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"not ours")
    (tmp_path / ".spikebridge-tmp.metrics.csv.0123456789ab.tmp").write_bytes(b"ours")
    assert remove_stale_temps(tmp_path, ("metrics.csv",)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(foreign)
    with atomic_path(tmp_path / "metrics.csv") as tmp:
        assert temp_target(tmp.name) == "metrics.csv"
        tmp.write_text("x")


# ------------------------------------------------------------------------------------------------
# convert: bounded parameters
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["odg", "--size", "30000"], "size must be an integer in 1..4096"),
    (["odg", "--threshold", "nan"], "threshold must be a finite number"),
    (["odg", "--threshold", "inf"], "threshold must be a finite number"),
    (["video", "--frames", "100000"], "n_frames must be an integer in 2..1000"),
    (["odg", "--workers", "100000"], "workers must be an integer in 0..256"),
])
def test_convert_parameters_are_bounded_before_any_work(cats, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    started = time.monotonic()
    assert main(["convert", argv[0], "--input", str(cats), "--out", str(out), *argv[1:]]) == 2
    assert time.monotonic() - started < 5
    line = one_line(capsys.readouterr().err)
    assert message in line and len(line) < 300
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# convert --workers 2: SIGKILL
# ------------------------------------------------------------------------------------------------
def _spawned_workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _start_conversion(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spikebridge", "convert", "odg", "--input", str(src), "--out",
                             str(out), "--workers", "2", "--no-progress", "--min-events", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def _wait_for_samples(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(out.rglob("*.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion finished before it could be killed"


def test_sigkill_to_a_multiprocess_conversion_prints_no_traceback(tmp_path, capsys):
    src = tmp_path / "input"
    for cls in range(2):
        photos(src / f"c{cls}", 60, size=300, seed=cls)
    # the parent killed: its workers leave quietly (stderr closes once they are all gone)
    proc = _start_conversion(src, tmp_path / "a")
    _wait_for_samples(proc, tmp_path / "a")
    workers = _spawned_workers(proc.pid)
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=60)
    assert stderr == ""
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and
                b"zombie" not in Path(f"/proc/{w}/status").read_bytes().lower()]
    # a worker killed: the parent reports it in one line, and a rerun resumes
    proc = _start_conversion(src, tmp_path / "b")
    _wait_for_samples(proc, tmp_path / "b")
    os.kill(_spawned_workers(proc.pid)[0], signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert re.fullmatch(r"spikebridge: error: a conversion worker \(process \d+\) was killed by SIGKILL; "
                        r"finished files are kept: rerun the same command to continue", one_line(stderr))
    assert main(["convert", "odg", "--input", str(src), "--out", str(tmp_path / "b"), "--workers", "0",
                 "--no-progress", "--min-events", "0"]) == 0
    assert re.match(r"Converted \d+ images, skipped [1-9]\d* already done", capsys.readouterr().out)
    assert len(read_label_file(tmp_path / "b" / "labels.txt")) == 120


# ------------------------------------------------------------------------------------------------
# export --out
# ------------------------------------------------------------------------------------------------
def test_export_never_overwrites_by_surprise_and_never_its_checkpoint(tmp_path, capsys):
    import spikebridge as sb
    from spikebridge.train.checkpoint import save_checkpoint

    neuron = sb.NeuronConfig(kind="lif")
    model = sb.create_model("cnn", num_classes=10, neuron=neuron, T=2, in_channels=1)
    ckpt = save_checkpoint(tmp_path / "ckpt", "last", model,
                           {"model": {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": 2},
                            "neuron": asdict(neuron), "data": "mnist5k"})
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    other = tmp_path / "notes.nir"
    other.write_bytes(b"someone's file")
    before = digest(tmp_path)
    export = ["export", str(ckpt), "--input-shape", "1,28,28", "--out"]
    for target, extra, message in [
        (ckpt, [], "already exists"),
        (ckpt, ["--overwrite"], "checkpoint's own file"),
        (weights, ["--overwrite"], "checkpoint's own file"),
        (other, [], "already exists"),
        (tmp_path / "ckpt", ["--overwrite"], "is a folder"),
    ]:
        assert main([*export, str(target), *extra]) == 2
        assert message in one_line(capsys.readouterr().err)
    assert digest(tmp_path) == before
    assert main([*export, str(other), "--overwrite"]) == 0
    assert other.read_bytes()[:4] == b"\x89HDF"
    assert main([*export, str(tmp_path / "new.nir")]) == 0
