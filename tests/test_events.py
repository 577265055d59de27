"""Event arrays -> frames, and the event file formats (byte-exact files written by hand)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from _layouts import write_aedat2, write_aedat31, write_nmnist_bin
from spikebridge.data.events import (EVENT_DTYPE, ESImageNetDataset, events_to_frames, make_events, read_aedat,
                                     read_es_sample, read_label_file, read_nmnist_bin, write_es_sample,
                                     write_label_file)
from spikebridge.data.odg import EventSample, events_to_dense, odg
from spikebridge.errors import ConfigError, DataError

# tonic (GPL-3.0) is a dev/test extra only, never a runtime dependency: our readers and binning are
# compared with it here


def random_stream(rng, n=2000, w=34, h=34, t_max=300_000):
    t = np.sort(rng.integers(0, t_max, n))
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n))


# ------------------------------------------------------------------------------------------------
# events_to_frames
# ------------------------------------------------------------------------------------------------

def test_frames_count_per_bin_and_polarity():
    # t = 0..99 (one event each), x = t % 5, y = 0, ON for even t
    t = np.arange(100)
    ev = make_events(t % 5, np.zeros(100, int), t, t % 2 == 0)
    frames = events_to_frames(ev, sensor_size=(5, 2), n_time_bins=4)
    assert frames.shape == (4, 2, 2, 5) and frames.dtype == torch.float32
    # Tonic's bins: window = 99 // 4 = 24 -> [0,24), [24,48), [48,72), [72,96); t = 96..99 fall after
    assert frames.sum().item() == 96
    assert frames[0].sum().item() == 24 and frames[3].sum().item() == 24
    assert frames[:, 0].sum().item() == 48  # channel 0 = ON (even t)
    assert frames[0, 0, 0, 0].item() == 3  # t = 0, 10, 20 are ON at x = 0
    assert frames[:, :, 1].sum().item() == 0
    tonic_order = events_to_frames(ev, sensor_size=(5, 2), n_time_bins=4, polarity_order="off_on")
    assert torch.equal(tonic_order, frames.flip(1))


def test_time_window_bins():
    t = np.array([0, 5, 10, 19, 20, 29, 30, 41])
    ev = make_events(np.zeros(8, int), np.zeros(8, int), t, np.ones(8, bool))
    f = events_to_frames(ev, sensor_size=(1, 1), time_window=10)
    # duration 41: floor((41 - 10) / 10) + 1 = 4 windows [0,10) [10,20) [20,30) [30,40)
    assert f[:, 0, 0, 0].tolist() == [2, 2, 2, 1]
    f = events_to_frames(ev, sensor_size=(1, 1), time_window=10, include_incomplete=True)
    assert f[:, 0, 0, 0].tolist() == [2, 2, 2, 1, 1]
    f = events_to_frames(ev, sensor_size=(1, 1), time_window=10, overlap=5)
    # stride 5: floor(31 / 5) + 1 = 7 windows starting at 0, 5, ..., 30
    assert f[:, 0, 0, 0].tolist() == [2, 2, 2, 2, 2, 2, 1]


def test_input_forms_and_polarity_encodings():
    rng = np.random.default_rng(0)
    ev = random_stream(rng, 500)
    ref = events_to_frames(ev, sensor_size=(34, 34), n_time_bins=5)
    assert ref.sum().item() > 0
    as_dict = {k: ev[k] for k in ("x", "y", "t", "p")}
    assert torch.equal(events_to_frames(as_dict, sensor_size=(34, 34, 2), n_time_bins=5), ref)
    signed = (ev["x"], ev["y"], ev["t"], np.where(ev["p"], 1, -1))
    assert torch.equal(events_to_frames(signed, sensor_size=(34, 34), n_time_bins=5), ref)
    zero_one = dict(as_dict, p=ev["p"].astype(np.uint8), t=ev["t"].astype(np.uint32))
    assert torch.equal(events_to_frames(zero_one, sensor_size=(34, 34), n_time_bins=5), ref)
    floats = dict(as_dict, t=ev["t"].astype(np.float64))
    assert torch.equal(events_to_frames(floats, sensor_size=(34, 34), n_time_bins=5), ref)


def test_frames_validation():
    ev = make_events([1, 2, 3], [0, 1, 2], [0, 10, 20], [1, 0, 1])
    with pytest.raises(DataError, match=r"x outside the sensor \[0, 3\)"):
        events_to_frames(ev, sensor_size=(3, 4), n_time_bins=2)
    with pytest.raises(DataError, match="y outside"):
        events_to_frames(ev, sensor_size=(4, 2), n_time_bins=2)
    with pytest.raises(DataError, match="rec.bin: .*not sorted"):
        events_to_frames(make_events([0, 0], [0, 0], [5, 4], [1, 1]), sensor_size=(2, 2), n_time_bins=1,
                         source="rec.bin")
    with pytest.raises(DataError, match="empty"):
        events_to_frames(np.empty(0, EVENT_DTYPE), sensor_size=(2, 2), n_time_bins=1)
    with pytest.raises(DataError, match="polarity"):
        events_to_frames({"x": [0], "y": [0], "t": [0], "p": [2]}, sensor_size=(2, 2), n_time_bins=1)
    with pytest.raises(DataError, match="field"):
        events_to_frames({"x": [0], "y": [0], "t": [0]}, sensor_size=(2, 2), n_time_bins=1)
    with pytest.raises(DataError, match="integers"):
        events_to_frames({"x": [0.5], "y": [0], "t": [0], "p": [1]}, sensor_size=(2, 2), n_time_bins=1)
    with pytest.raises(ConfigError):
        events_to_frames(ev, sensor_size=(4, 4), n_time_bins=2, time_window=5)
    with pytest.raises(ConfigError):
        events_to_frames(ev, sensor_size=(4, 4))
    with pytest.raises(ConfigError):
        events_to_frames(ev, sensor_size=(4, 4), time_window=5, overlap=5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_time_bins=8), dict(n_time_bins=3, overlap=0.25), dict(time_window=20_000),
     dict(time_window=30_000, overlap=10_000), dict(time_window=70_000, include_incomplete=True),
     dict(n_time_bins=1)],
)
def test_binning_matches_tonic(kwargs):
    from tonic.transforms import ToFrame

    rng = np.random.default_rng(len(repr(kwargs)))
    for n in (1, 7, 3000):
        ev = random_stream(rng, n)
        theirs = ToFrame(sensor_size=(34, 34, 2), **kwargs)(ev.copy())
        if "n_time_bins" in kwargs and ev["t"][-1] - ev["t"][0] < kwargs["n_time_bins"]:  # one event
            assert not theirs.any()  # Tonic's frames are all empty; ours are not (the test below)
            continue
        ours = events_to_frames(ev, sensor_size=(34, 34), polarity_order="off_on", **kwargs)
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.numpy(), theirs.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# N-MNIST .bin
# ------------------------------------------------------------------------------------------------

def nmnist_record(x, y, on, ts):
    return bytes([x, y, (on << 7) | (ts >> 16), (ts >> 8) & 0xFF, ts & 0xFF])


def test_nmnist_read_write_byte_exact(tmp_path):
    raw = nmnist_record(3, 30, 1, 0) + nmnist_record(33, 0, 0, 0x12345) + nmnist_record(0, 7, 1, 0x7FFFFF)
    path = tmp_path / "00001.bin"
    path.write_bytes(raw)
    ev = read_nmnist_bin(path)
    assert ev.dtype == EVENT_DTYPE
    assert ev["x"].tolist() == [3, 33, 0] and ev["y"].tolist() == [30, 0, 7]
    assert ev["t"].tolist() == [0, 0x12345, 0x7FFFFF] and ev["p"].tolist() == [True, False, True]
    out = tmp_path / "copy.bin"
    write_nmnist_bin(out, ev)
    assert out.read_bytes() == raw


def test_nmnist_overflow_marker(tmp_path):
    raw = nmnist_record(1, 1, 1, 100) + nmnist_record(0, 240, 0, 0) + nmnist_record(2, 2, 0, 5)
    (tmp_path / "o.bin").write_bytes(raw)
    ev = read_nmnist_bin(tmp_path / "o.bin")
    assert ev["t"].tolist() == [100, 5 + 2 ** 13] and ev["x"].tolist() == [1, 2]


def test_nmnist_matches_tonic_reader(tmp_path):
    from tonic.io import read_mnist_file

    rng = np.random.default_rng(1)
    ev = random_stream(rng, 1000, t_max=2 ** 23)
    write_nmnist_bin(tmp_path / "r.bin", ev)
    theirs = read_mnist_file(str(tmp_path / "r.bin"), dtype=EVENT_DTYPE)
    ours = read_nmnist_bin(tmp_path / "r.bin")
    for k in ("x", "y", "t", "p"):
        np.testing.assert_array_equal(ours[k], theirs[k])
        np.testing.assert_array_equal(ours[k], ev[k])


def test_nmnist_bad_files(tmp_path):
    good = nmnist_record(3, 30, 1, 0) * 4
    (tmp_path / "t.bin").write_bytes(good[:-2])
    with pytest.raises(DataError, match="t.bin.*5-byte"):
        read_nmnist_bin(tmp_path / "t.bin")
    (tmp_path / "r.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="outside the 34x34"):
        read_nmnist_bin(tmp_path / "r.bin")
    with pytest.raises(DataError, match="not found"):
        read_nmnist_bin(tmp_path / "missing.bin")


# ------------------------------------------------------------------------------------------------
# AEDAT 2.0 / 3.1
# ------------------------------------------------------------------------------------------------

AEDAT2_HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 timestamp (8 bytes total)\r\n"


def test_aedat2_dvs128_byte_exact(tmp_path):
    # address = y_field << 8 | x_field << 1 | polarity bit (0 = ON)
    records = [((5 << 8) | (100 << 1) | 0, 10), ((127 << 8) | (0 << 1) | 1, 20), ((0 << 8) | (127 << 1) | 0, 4_000_000_000)]
    raw = AEDAT2_HEADER + b"".join(struct.pack(">II", a, t) for a, t in records)
    path = tmp_path / "cifar_airplane_0.aedat"
    path.write_bytes(raw)
    rawev = read_aedat(path, orientation="raw")
    assert rawev["x"].tolist() == [100, 0, 127] and rawev["y"].tolist() == [5, 127, 0]
    assert rawev["p"].tolist() == [True, False, True] and rawev["t"].tolist() == [10, 20, 4_000_000_000]
    jaer = read_aedat(path)
    assert jaer["x"].tolist() == [27, 127, 0] and jaer["y"].tolist() == [5, 127, 0]
    c10 = read_aedat(path, orientation="cifar10dvs")
    assert c10["x"].tolist() == [122, 0, 127] and c10["y"].tolist() == [27, 127, 0]
    for orientation in ("raw", "jaer", "cifar10dvs"):
        out = tmp_path / f"{orientation}.aedat"
        write_aedat2(out, read_aedat(path, orientation=orientation), orientation=orientation)
        assert out.read_bytes()[-24:] == raw[-24:]
        assert np.array_equal(read_aedat(out, orientation=orientation), read_aedat(path, orientation=orientation))


def test_aedat_parsing_agrees_with_tonic(tmp_path):
    """Tonic's low-level AEDAT parser (header skip + address/timestamp words) sees the same events."""
    from tonic.io import get_aer_events_from_file, read_aedat_header_from_file

    rng = np.random.default_rng(2)
    ev = random_stream(rng, 500, w=128, h=128)
    write_aedat2(tmp_path / "r2.aedat", ev, orientation="raw")
    write_aedat31(tmp_path / "r3.aedat", ev, packet_size=128)
    ours = read_aedat(tmp_path / "r2.aedat", orientation="raw")
    version, start, _ = read_aedat_header_from_file(str(tmp_path / "r2.aedat"))
    theirs = get_aer_events_from_file(str(tmp_path / "r2.aedat"), version, start)
    addr = theirs["address"].astype(np.int64)
    np.testing.assert_array_equal(ours["x"], (addr >> 1) & 0x7F)
    np.testing.assert_array_equal(ours["y"], (addr >> 8) & 0x7F)
    np.testing.assert_array_equal(ours["p"], (addr & 1) == 0)
    np.testing.assert_array_equal(ours["t"], theirs["timeStamp"])
    version, start, _ = read_aedat_header_from_file(str(tmp_path / "r3.aedat"))
    theirs = get_aer_events_from_file(str(tmp_path / "r3.aedat"), version, start)
    data = theirs["address"].astype(np.int64)
    ours = read_aedat(tmp_path / "r3.aedat")
    np.testing.assert_array_equal(ours["x"], (data >> 17) & 0x7FFF)
    np.testing.assert_array_equal(ours["y"], (data >> 2) & 0x7FFF)
    np.testing.assert_array_equal(ours["p"], ((data >> 1) & 1) == 1)
    np.testing.assert_array_equal(ours["t"], theirs["timeStamp"])
    np.testing.assert_array_equal(ours, ev)


def test_aedat2_davis240(tmp_path):
    dvs = (179 << 22) | (239 << 12) | (1 << 11)
    aps = (1 << 31) | (3 << 22) | (4 << 12)
    dvs_off = (0 << 22) | (5 << 12)
    raw = AEDAT2_HEADER + struct.pack(">IIIIII", dvs, 1, aps, 2, dvs_off, 3)
    (tmp_path / "d.aedat").write_bytes(raw)
    ev = read_aedat(tmp_path / "d.aedat", camera="davis240")
    assert ev["x"].tolist() == [239, 5] and ev["y"].tolist() == [179, 0]
    assert ev["p"].tolist() == [True, False] and ev["t"].tolist() == [1, 3]
    # jAER's external-input (trigger) events, bit 10, are not pixels (they were OFF events at (0, 0))
    triggered = AEDAT2_HEADER + struct.pack(">IIIIII", dvs, 1, 0x400 | 3, 2, 0x400, 3)
    (tmp_path / "t.aedat").write_bytes(triggered)
    ev = read_aedat(tmp_path / "t.aedat", camera="davis240")
    assert ev["x"].tolist() == [239] and ev["t"].tolist() == [1]


def test_frames_of_events_spanning_fewer_time_units_than_bins_are_not_empty():
    """Tonic's whole-unit bins leave every frame empty when the events span fewer time units than
    bins (one event, one timestamp): ours are at least one unit long, so each event has its bin."""
    for t, counts in (([5], [1, 0, 0, 0]), ([7, 7, 7], [3, 0, 0, 0]), ([3, 4, 5], [1, 1, 1, 0])):
        events = make_events(np.zeros(len(t)), np.zeros(len(t)), np.asarray(t), np.ones(len(t)))
        frames = events_to_frames(events, sensor_size=(4, 4), n_time_bins=4, source="rec.bin")
        assert frames.sum(dim=(1, 2, 3)).tolist() == counts
    events = make_events(np.zeros(4), np.zeros(4), np.asarray([0, 1, 2, 4]), np.ones(4))
    assert events_to_frames(events, sensor_size=(4, 4), n_time_bins=4).sum() == 3  # Tonic: the last unit is cut


def aedat3_packet(ptype, size, overflow, payload_events):
    n = len(payload_events)
    head = struct.pack("<hhiiiiii", ptype, 1, size, 4, overflow, n, n, n)
    return head + b"".join(payload_events)


def test_aedat31_byte_exact(tmp_path):
    def pol(x, y, on, valid, ts):
        return struct.pack("<Ii", (x << 17) | (y << 2) | (on << 1) | valid, ts)

    header = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"
    packets = [
        aedat3_packet(1, 8, 0, [pol(10, 20, 1, 1, 100), pol(11, 21, 0, 0, 150), pol(127, 0, 0, 1, 2 ** 31 - 1)]),
        aedat3_packet(0, 8, 0, [struct.pack("<Ii", 0xFFFFFFFF, 160)]),  # a special event: skipped
        aedat3_packet(1, 8, 1, [pol(0, 127, 1, 1, 5)]),
    ]
    path = tmp_path / "user01_fluorescent.aedat"
    path.write_bytes(header + b"".join(packets))
    ev = read_aedat(path)
    assert ev["x"].tolist() == [10, 127, 0] and ev["y"].tolist() == [20, 0, 127]
    assert ev["p"].tolist() == [True, False, True]
    assert ev["t"].tolist() == [100, 2 ** 31 - 1, 2 ** 31 + 5]
    write_aedat31(tmp_path / "copy.aedat", ev, packet_size=2)
    assert np.array_equal(read_aedat(tmp_path / "copy.aedat"), ev)
    frames = events_to_frames(ev, sensor_size=(128, 128), n_time_bins=1, source=path)
    assert frames.shape == (1, 2, 128, 128)


def test_aedat_bad_files(tmp_path):
    ev = random_stream(np.random.default_rng(3), 300, w=128, h=128)
    write_aedat2(tmp_path / "v2.aedat", ev)
    write_aedat31(tmp_path / "v3.aedat", ev, packet_size=64)
    v2, v3 = (tmp_path / "v2.aedat").read_bytes(), (tmp_path / "v3.aedat").read_bytes()
    cases = {
        "truncated2": v2[:-3],
        "truncated3": v3[:-3],
        "truncated3_header": v3[: v3.index(b"#!END-HEADER") + 14 + 10],
        "magic": b"#!NOT-AEDAT\r\n" + v2[20:],
        "version": v2.replace(b"AER-DAT2.0", b"AER-DAT1.0", 1),
        "no_header_end": b"#!AER-DAT2.0 and no newline",
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.aedat").write_bytes(data)
        with pytest.raises(DataError, match=f"{name}.aedat"):
            read_aedat(tmp_path / f"{name}.aedat")


def test_readers_never_raise_other_exceptions_on_garbage(tmp_path):
    rng = np.random.default_rng(4)
    ev = random_stream(rng, 200, w=34, h=34)
    write_nmnist_bin(tmp_path / "n.bin", ev)
    write_aedat2(tmp_path / "a2.aedat", ev)
    write_aedat31(tmp_path / "a3.aedat", ev, packet_size=50)
    originals = {p: p.read_bytes() for p in (tmp_path / "n.bin", tmp_path / "a2.aedat", tmp_path / "a3.aedat")}
    target = tmp_path / "fuzz"
    for trial in range(300):
        src, data = list(originals.items())[trial % 3]
        data = bytearray(data)
        kind = trial % 4
        if kind == 0:
            data = data[: rng.integers(0, len(data))]
        elif kind == 1:
            for i in rng.integers(0, len(data), 8):
                data[i] = rng.integers(0, 256)
        elif kind == 2:
            data = bytearray(rng.integers(0, 256, rng.integers(0, 400), dtype=np.uint8).tobytes())
        else:
            data[40:40] = rng.integers(0, 256, rng.integers(1, 12), dtype=np.uint8).tobytes()
        target.write_bytes(bytes(data))
        reader = read_nmnist_bin if src.suffix == ".bin" else read_aedat
        try:
            out = reader(target)
        except DataError:
            continue
        assert out.dtype == EVENT_DTYPE
        try:
            events_to_frames(out, sensor_size=(128, 128) if src.suffix == ".aedat" else (34, 34), n_time_bins=4)
        except DataError:
            pass


# ------------------------------------------------------------------------------------------------
# ES-ImageNet samples, label files, dataset
# ------------------------------------------------------------------------------------------------

def photo(rng, h, w):
    from PIL import Image

    small = rng.integers(0, 256, (max(h // 10, 2), max(w // 10, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def test_es_sample_round_trip(tmp_path):
    s = odg(photo(np.random.default_rng(0), 300, 400), min_events=0)
    write_es_sample(tmp_path / "a" / "x.npz", s)
    back = read_es_sample(tmp_path / "a" / "x.npz", height=s.height, width=s.width)
    np.testing.assert_array_equal(back.pos, s.pos)
    np.testing.assert_array_equal(back.neg, s.neg)
    assert (back.height, back.width) == (s.height, s.width)
    with np.load(tmp_path / "a" / "x.npz") as data:
        assert sorted(data.files) == ["neg", "pos"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.npz"]


def test_es_sample_bad_files(tmp_path):
    s = odg(photo(np.random.default_rng(1), 200, 200), min_events=0)
    write_es_sample(tmp_path / "good.npz", s)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"\x00" * 100)
    np.savez(tmp_path / "dtype.npz", pos=s.pos.astype(np.int16), neg=s.neg)
    np.savez(tmp_path / "missing.npz", pos=s.pos)
    np.savez(tmp_path / "shape.npz", pos=s.pos[:, :2], neg=s.neg)
    bad_t = s.pos.copy()
    bad_t[0, 2] = 9
    np.savez(tmp_path / "trange.npz", pos=bad_t, neg=s.neg)
    np.save(tmp_path / "plain.npy", s.pos)
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    (tmp_path / "short.npz").write_bytes(b"garbage")  # numpy takes a file that is no zip for a pickle
    expectations = {"truncated": "not an .npz archive .no zip directory: truncated", "garbage": "not an .npz archive",
                    "short": "not an .npz archive .*starts with b'garbage'", "dtype": "uint8", "missing": "missing",
                    "shape": "shape", "trange": "t outside", "plain": "a plain .npy array", "nonexistent": "not found"}
    for name, message in expectations.items():
        with pytest.raises(DataError, match=f"{name}.npz: .*{message}") as caught:
            read_es_sample(tmp_path / f"{name}.npz")
        assert "pickle" not in str(caught.value)


def test_label_file_errors(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"")
    cases = {
        "fields": "a.npz 1 254\n",
        "integer": "a.npz 1 254 2x5\n",
        "negative": "a.npz -1 254 254\n",
        "missingfile": "a.npz 0 254 254\n\nb.npz 0 254 254\n",
    }
    lines = {"fields": 1, "integer": 1, "negative": 1, "missingfile": 3}
    for name, text in cases.items():
        (tmp_path / f"{name}.txt").write_text(text)
        with pytest.raises(DataError, match=f"{name}.txt:{lines[name]}:"):
            read_label_file(tmp_path / f"{name}.txt")
    with pytest.raises(DataError, match="not found"):
        read_label_file(tmp_path / "nope.txt")


def test_dataset_our_layout_and_released_layout(tmp_path):
    rng = np.random.default_rng(2)
    samples = [odg(photo(rng, h, w), min_events=0) for h, w in ((300, 400), (400, 300), (256, 256))]
    # ours: labels.txt beside class folders, paths relative to it (one path with a space)
    entries = []
    for i, s in enumerate(samples):
        rel = f"class {i % 2}/img{i}.npz"
        write_es_sample(tmp_path / "ours" / rel, s)
        entries.append((rel, i % 2, s.height, s.width))
    write_label_file(tmp_path / "ours" / "labels.txt", entries)
    ds = ESImageNetDataset(tmp_path / "ours")
    assert len(ds) == 3 and ds.labels == [0, 1, 0] and ds.num_classes == 2
    for i, s in enumerate(samples):
        frames, label = ds[i]
        assert frames.shape == (8, 2, 224, 224) and frames.dtype == torch.float32 and label == i % 2
        assert torch.equal(frames, events_to_dense(s, dtype=torch.float32))
    assert len(ESImageNetDataset(tmp_path / "ours" / "labels.txt", transform=lambda f: f[:4])[0][0]) == 4
    # the released layout: root/trainlabel.txt listing image names relative to root/train
    lines = []
    for i, s in enumerate(samples):
        write_es_sample(tmp_path / "rel" / "train" / f"n0{i}" / f"n0{i}_{i}.npz", s)
        lines.append(f"n0{i}/n0{i}_{i}.JPEG {i} {s.height} {s.width}\n")
    (tmp_path / "rel" / "trainlabel.txt").write_text("".join(lines))
    rel = ESImageNetDataset(tmp_path / "rel", split="train")
    assert rel.labels == [0, 1, 2]
    assert torch.equal(rel[1][0], ds[1][0])
    with pytest.raises(DataError, match="no label file"):
        ESImageNetDataset(tmp_path / "rel", split="val")
    # a file that went bad after construction: the error names the label file line
    (tmp_path / "ours" / "class 1" / "img1.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"labels.txt:2"):
        ds[1]


def test_events_to_dense_centres_like_the_released_loader():
    """The released loader: dx = (254 - height)//2 added to the first coordinate, crop [16:240]."""
    s = EventSample(pos=np.array([[20, 30, 1], [200, 17, 8]], np.uint8), neg=np.array([[100, 239, 3]], np.uint8),
                    height=100, width=254)
    dense = events_to_dense(s)
    expected = torch.zeros(8, 2, 256, 256)
    dx, dy = (254 - 100) // 2, 0
    for ch, rows in ((0, s.pos), (1, s.neg)):
        for r, c, t in rows.astype(int):
            if r + dx < 256:
                expected[t - 1, ch, r + dx, c + dy] = 1
    assert torch.equal(dense.float(), expected[:, :, 16:240, 16:240])


def test_a_label_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    from spikebridge.data.events import read_label_file

    (tmp_path / "n01").mkdir()
    (tmp_path / "n01" / "s0.npz").write_bytes(b"")
    label_file = tmp_path / "labels.txt"
    label_file.write_bytes("\ufeffn01/s0.npz 0 254 254\r\n".encode("utf-8"))
    (entry,) = read_label_file(label_file)
    assert entry.path == tmp_path / "n01" / "s0.npz" and entry.label == 0
