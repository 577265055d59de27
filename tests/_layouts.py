"""Tiny datasets written in the real on-disk layouts (shared by test_datasets / test_recipes).

Images carry their class as a colour and a bright square at a class-dependent place, so a model
can learn them in a step or two; every file is written in the format the real dataset uses.
"""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spikebridge.data.events import (_AEDAT3_HEADER, _AEDAT3_POLARITY, AEDAT2_SENSORS, _fields, _on_flags, make_events,
                                     write_es_sample, write_label_file)
from spikebridge.errors import ConfigError, DataError
from spikebridge.utils import atomic_write_bytes
from spikebridge.data.odg import EventSample

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_image(rng: np.random.Generator, label: int, height: int, width: int, grey: bool = False) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (or ``[H, W]``): noise + a class colour + a square whose place codes the class."""
    img = rng.integers(0, 60, (height, width, 3)).astype(np.int64)
    img[..., label % 3] += 90
    side = max(2, min(height, width) // 4)
    top = (label * side) % max(1, height - side)
    left = (label * 2 * side) % max(1, width - side)
    img[top : top + side, left : left + side] = 250
    img = img.clip(0, 255).astype(np.uint8)
    return img.mean(-1).astype(np.uint8) if grey else img


def image_folders(root: Path, *, size: tuple[int, int], classes: int = 3, train_per_class: int = 4,
                  val_per_class: int = 2, grey: bool = False, suffix: str = ".png", seed: int = 0) -> Path:
    """ImageNet layout: ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(rng, label, *size, grey=grey)).save(folder / f"img{i}{suffix}")
    return root


def cifar10(root: Path, *, per_batch: int = 4, test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta (pickles)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        labels = (np.arange(n) % 10).tolist()
        data = np.stack([class_image(rng, y, 32, 32).transpose(2, 0, 1).reshape(-1) for y in labels])
        return {b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": [b"f.png"] * n}

    for k in range(1, 6):
        with open(folder / f"data_batch_{k}", "wb") as fh:
            pickle.dump(batch(per_batch), fh, protocol=2)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(test), fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES]}, fh, protocol=2)
    return root


def _es_sample(rng: np.random.Generator, label: int, n_events: int = 300, size: int = 254) -> EventSample:
    def rows(offset: int) -> np.ndarray:
        r = rng.integers(17 + 20 * (label % 4), 80 + 20 * (label % 4), n_events)
        c = rng.integers(17 + offset, 200, n_events)
        t = rng.integers(1, 9, n_events)
        return np.stack([r, c, t], 1).astype(np.uint8)

    return EventSample(pos=rows(0), neg=rows(10), height=size, width=size)


def es_imagenet(root: Path, *, classes: int = 3, train_per_class: int = 3, val_per_class: int = 2,
                released: bool = True, seed: int = 0) -> Path:
    """ES-ImageNet: released layout (``trainlabel.txt`` + ``train/``; ``vallabel.txt`` + ``val/``,
    label-file paths with the images' ``.JPEG`` names) or ours (``train/labels.txt``...)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        entries = []
        for label in range(classes):
            for i in range(count):
                rel = f"n{label:08d}/img_{i}.JPEG" if released else f"n{label:08d}/img_{i}.npz"
                write_es_sample(root / split / Path(rel).with_suffix(".npz"), _es_sample(rng, label))
                entries.append((rel, label, 254, 254))
        label_file = root / f"{split}label.txt" if released else root / split / "labels.txt"
        write_label_file(label_file, entries)
    return root


def dvs_folder(root: Path, *, classes=CIFAR10_NAMES[:3], per_class: int = 5, n_events: int = 400, seed: int = 0) -> Path:
    """CIFAR10-DVS layout: ``root/<class>/cifar10_<class>_<i>.aedat`` (AEDAT 2.0, DVS128)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x = rng.integers(10 * label, 10 * label + 60, n_events)
            y = rng.integers(0, 128, n_events)
            t = np.sort(rng.integers(0, 1_000_000, n_events))
            p = rng.integers(0, 2, n_events).astype(bool)
            write_aedat2(folder / f"cifar10_{name}_{i}.aedat", make_events(x, y, t, p), orientation="cifar10dvs")
    return root


def video_clips(root: Path, *, classes: int = 2, clips_per_class: int = 4, frames: int = 20,
                size: tuple[int, int] = (256, 342), seed: int = 0) -> Path:
    """UCF101 ``jpegs_256`` layout: ``root/<class>/<clip>/frame000001.jpg`` (a square moving per class)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for label in range(classes):
        for c in range(clips_per_class):
            clip = root / f"Class{label}" / f"v_Class{label}_g01_c{c:02d}"
            clip.mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                img = np.full((h, w, 3), 40, dtype=np.uint8)
                top = (20 + f * (3 + 4 * label)) % (h - 40)
                img[top : top + 40, 60 + 40 * label : 100 + 40 * label] = 230
                img = (img.astype(np.int64) + rng.integers(0, 10, img.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(clip / f"frame{f + 1:06d}.jpg", quality=90)
    return root


def es_ucf101(clips_root: Path, out: Path) -> Path:
    """ES-UCF101 made from :func:`video_clips` by ``spikebridge convert video``'s function."""
    from spikebridge.data.convert import convert_video_folder

    convert_video_folder(clips_root, out, progress=False)
    return out


# ------------------------------------------------------------------------------------------------
# AEDAT 4.0 (DV / dv-processing): a header, an IOHeader flatbuffer, then size-prefixed EventPacket
# flatbuffers, uncompressed or in LZ4 frames. Written here byte by byte (the tests decode the files
# with the `aedat` package, an independent reader).
# ------------------------------------------------------------------------------------------------
def _xxh32(data: bytes, seed: int = 0) -> int:
    """xxHash32 (for the LZ4 frame header checksum); inputs shorter than 16 bytes suffice here."""
    p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    mask = 0xFFFFFFFF
    rotl = lambda v, r: ((v << r) | (v >> (32 - r))) & mask  # noqa: E731
    assert len(data) < 16
    h = (seed + p5 + len(data)) & mask
    i = 0
    while i + 4 <= len(data):
        h = (rotl((h + int.from_bytes(data[i:i + 4], "little") * p3) & mask, 17) * p4) & mask
        i += 4
    for b in data[i:]:
        h = (rotl((h + b * p5) & mask, 11) * p1) & mask
    h ^= h >> 15
    h = (h * p2) & mask
    h ^= h >> 13
    h = (h * p3) & mask
    return h ^ (h >> 16)


def _lz4_frame(payload: bytes) -> bytes:
    """An LZ4 frame holding ``payload`` in one stored (uncompressed) block: valid LZ4 frame format."""
    flg, bd = 0x60, 0x70  # version 01, independent blocks, no checksums; 4 MB max block
    header = b"\x04\x22\x4d\x18" + bytes([flg, bd, (_xxh32(bytes([flg, bd])) >> 8) & 0xFF])
    return header + (0x80000000 | len(payload)).to_bytes(4, "little") + payload + b"\x00\x00\x00\x00"


def _aedat4_description(width: int, height: int) -> bytes:
    return (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
        '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalModuleName" type="string">capture</attr>'
        '<attr key="originalOutputName" type="string">events</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        "</node></node></node></dv>"
    ).encode()


def _aedat4_ioheader(compression: int, description: bytes) -> bytes:
    buf = bytearray(24)
    buf[0:4] = (24).to_bytes(4, "little")                      # root table at 24
    buf[4:8] = b"IOHE"
    buf[8:18] = struct.pack("<5H", 10, 20, 4, 8, 16)           # vtable: 3 fields
    table = struct.pack("<iiqI", 24 - 8, compression, -1, 44 - 40)  # soffset, compression, data pos, -> string
    buf += table
    buf += struct.pack("<I", len(description)) + description + b"\x00"
    buf += b"\x00" * (-len(buf) % 4)
    return bytes(buf)


def _aedat4_event_packet(events: np.ndarray) -> bytes:
    body = bytearray(32)
    body[4:8] = (16).to_bytes(4, "little")                     # root table at 20 (relative to 4)
    body[8:12] = b"EVTS"
    body[12:18] = struct.pack("<3H", 6, 8, 4)                  # vtable: 1 field
    body[20:28] = struct.pack("<iI", 20 - 12, 28 - 24)         # soffset, -> vector at 28
    body[28:32] = struct.pack("<I", len(events))
    rows = np.zeros(len(events), dtype=np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")]))
    rows["t"], rows["x"], rows["y"], rows["on"] = events["t"], events["x"], events["y"], events["p"]
    body += rows.tobytes()
    body[0:4] = (len(body) - 4).to_bytes(4, "little")          # size prefix
    return bytes(body)


def write_aedat4(path: Path, events: np.ndarray, *, sensor: tuple[int, int] = (128, 128), lz4: bool = False,
                 packet_size: int = 1000) -> Path:
    """An AEDAT 4.0 file of polarity events (one event stream, id 0), uncompressed or LZ4-framed."""
    parts = [b"#!AER-DAT4.0\r\n"]
    header = _aedat4_ioheader(1 if lz4 else 0, _aedat4_description(*sensor))
    parts += [len(header).to_bytes(4, "little"), header]
    for start in range(0, len(events), packet_size):
        packet = _aedat4_event_packet(events[start:start + packet_size])
        if lz4:
            packet = _lz4_frame(packet)
        parts += [struct.pack("<iI", 0, len(packet)), packet]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def recipe_datasets(root: Path) -> dict[str, str]:
    """One tiny dataset in each on-disk layout the recipes in configs/ read (ImageNet folders,
    ES-ImageNet, CIFAR10-DVS recordings, UCF101 frame folders and their ES-UCF101 events)."""
    clips = video_clips(root / "clips", classes=2, clips_per_class=2, frames=16)
    return {
        "photos": str(image_folders(root / "imagenet", size=(48, 64), classes=3, train_per_class=4)),
        "es-imagenet": str(es_imagenet(root / "es-imagenet", classes=3, train_per_class=2, released=True)),
        "dvs": str(dvs_folder(root / "cifar10-dvs", per_class=4)),
        "clips": str(clips),
        "es-ucf101": str(es_ucf101(clips, root / "es-ucf101")),
    }


# ------------------------------------------------------------------------------------------------
# N-MNIST .bin, AEDAT 2.0 and 3.1 writers: the inverses of the package's readers
# ------------------------------------------------------------------------------------------------
def write_nmnist_bin(path: str | os.PathLike, events: Any) -> None:
    """Write events in the N-MNIST ``.bin`` format (atomically). Needs 0 <= x, y < 240 (240 is the
    overflow marker), timestamps in 0 .. 2**23 - 1 µs."""
    x, y, t, p = _fields(events, path)
    on = _on_flags(p, path)
    x, y, t = (np.asarray(v, dtype=np.int64) for v in (x, y, t))
    if x.size and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 239):
        raise DataError(f"{path}: N-MNIST stores 0 <= x <= 255 and 0 <= y <= 239")
    if t.size and (t.min() < 0 or t.max() >= 2 ** 23):
        raise DataError(f"{path}: N-MNIST timestamps must lie in 0 .. 2**23 - 1 µs")
    out = np.empty((x.shape[0], 5), dtype=np.uint8)
    out[:, 0] = x
    out[:, 1] = y
    out[:, 2] = (on.astype(np.int64) << 7) | ((t >> 16) & 0x7F)
    out[:, 3] = (t >> 8) & 0xFF
    out[:, 4] = t & 0xFF
    atomic_write_bytes(path, out.tobytes())


def write_aedat2(
    path: str | os.PathLike,
    events: Any,
    *,
    camera: str = "dvs128",
    orientation: str = "jaer",
) -> None:
    """Write events as an AEDAT 2.0 file (atomically); the inverse of :func:`read_aedat`."""
    x, y, t, p = _fields(events, path)
    on = _on_flags(p, path)
    x, y, t = (np.asarray(v, dtype=np.int64) for v in (x, y, t))
    if t.size and (t.min() < 0 or t.max() >= 2 ** 32):
        raise DataError(f"{path}: AEDAT 2.0 timestamps must fit uint32")
    if camera == "dvs128":
        if x.size and (min(x.min(), y.min()) < 0 or max(x.max(), y.max()) > 127):
            raise DataError(f"{path}: DVS128 coordinates must lie in 0..127")
        if orientation == "raw":
            xf, yf = x, y
        elif orientation == "jaer":
            xf, yf = 127 - x, y
        elif orientation == "cifar10dvs":
            xf, yf = 127 - y, 127 - x
        else:
            raise ConfigError(f"orientation must be 'raw', 'jaer' or 'cifar10dvs', got {orientation!r}")
        addr = (yf << 8) | (xf << 1) | (~on).astype(np.int64)
    elif camera == "davis240":
        if x.size and (min(x.min(), y.min()) < 0 or x.max() >= 240 or y.max() >= 180):
            raise DataError(f"{path}: DAVIS240 coordinates must lie in 240x180")
        addr = (y << 22) | (x << 12) | (on.astype(np.int64) << 11)
    else:
        raise ConfigError(f"camera must be one of {sorted(AEDAT2_SENSORS)}, got {camera!r}")
    records = np.empty(x.shape[0], dtype=np.dtype([("addr", ">u4"), ("t", ">u4")]))
    records["addr"], records["t"] = addr, t
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file created by spikebridge\r\n"
    atomic_write_bytes(path, header + records.tobytes())


def write_aedat31(path: str | os.PathLike, events: Any, *, packet_size: int = 4096) -> None:
    """Write polarity events as an AEDAT 3.1 file (atomically), ``packet_size`` events a packet.

    Timestamps (µs, >= 0) above 2**31 - 1 are split into the packets' overflow counter.
    """
    x, y, t, p = _fields(events, path)
    on = _on_flags(p, path)
    x, y, t = (np.asarray(v, dtype=np.int64) for v in (x, y, t))
    if t.size and t.min() < 0:
        raise DataError(f"{path}: AEDAT 3.1 timestamps must be >= 0")
    if x.size and (min(x.min(), y.min()) < 0 or max(x.max(), y.max()) > 0x7FFF):
        raise DataError(f"{path}: AEDAT 3.1 coordinates must lie in 0..32767")
    parts = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: spikebridge\r\n#!END-HEADER\r\n"]
    overflow = t >> 31
    i = 0
    while i < x.shape[0]:
        j = min(i + packet_size, x.shape[0])
        changes = np.flatnonzero(overflow[i:j] != overflow[i])
        if changes.size:  # one overflow counter per packet
            j = i + int(changes[0])
        head = np.zeros(1, dtype=_AEDAT3_HEADER)
        head["type"], head["source"], head["size"], head["ts_offset"] = 1, 1, 8, 4
        head["ts_overflow"], head["capacity"], head["number"], head["valid"] = overflow[i], j - i, j - i, j - i
        ev = np.empty(j - i, dtype=_AEDAT3_POLARITY)
        ev["data"] = (x[i:j] << 17) | (y[i:j] << 2) | (on[i:j].astype(np.int64) << 1) | 1
        ev["t"] = t[i:j] & 0x7FFFFFFF
        parts += [head.tobytes(), ev.tobytes()]
        i = j
    atomic_write_bytes(path, b"".join(parts))
