"""Property-based fuzzing of every reader: random bytes, damaged valid files and random arrays.

Each reader must either return valid data (checked by a predicate, and usable by the next stage:
frames for events, a model-ready checkpoint, a validated config) or raise ``SpikebridgeError`` --
never another exception, a hang (an alarm interrupts any example running longer than
``HANG_SECONDS``) or a crash of the interpreter. The examples are derandomised (the same inputs on
every run) and bounded so the whole file stays under a minute on 2 cores.
"""
from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import pickle
import signal
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, scalar_dtypes
from safetensors.torch import save_file

from _layouts import write_aedat2, write_aedat31, write_nmnist_bin
from spikebridge.config import PipelineConfig, load_config
from spikebridge.data.cifar import load_cifar_pickle
from spikebridge.data.events import (EVENT_DTYPE, events_to_frames, make_events, read_aedat, read_es_sample,
                                     read_label_file, read_nmnist_bin, write_es_sample)
from spikebridge.data.odg import EventSample, events_to_dense
from spikebridge.data.video import read_video_events, write_video_events
from spikebridge.errors import SpikebridgeError
from spikebridge.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

HANG_SECONDS = 10
#: SPIKEBRIDGE_FUZZ_EXAMPLES=5000 runs a longer search with fresh random inputs every run.
LONG_RUN = int(os.environ.get("SPIKEBRIDGE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONG_RUN or 40,
    deadline=None,  # wall time is policed by the alarm below (a loaded machine makes deadlines flaky)
    derandomize=not LONG_RUN,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail (TimeoutError) instead of hanging when the body runs longer than ``seconds``."""

    def alarm(signum, frame):
        raise TimeoutError(f"the reader ran longer than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read, *args, **kwargs):
    """``(value, None)`` or ``(None, error)`` for a SpikebridgeError; any other exception fails."""
    with no_hang():
        try:
            return read(*args, **kwargs), None
        except SpikebridgeError as exc:
            message = str(exc)
            assert message.strip(), f"{type(exc).__name__} without a message"
            return None, exc


@st.composite
def damaged(draw, base: bytes) -> bytes:
    """``base`` after 1-4 random edits: bit flips, byte overwrites, truncation, insertion, deletion."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite" and data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# ES-ImageNet samples (.npz) and ES-UCF101 clips (.npz)
# ------------------------------------------------------------------------------------------------

def valid_es_sample_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rows = lambda n: np.column_stack([rng.integers(0, 250, (n, 2)), rng.integers(1, 9, n)]).astype(np.uint8)  # noqa: E731
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pos=rows(40), neg=rows(30))
    return buffer.getvalue()


def assert_valid_es_sample(sample) -> None:
    assert isinstance(sample, EventSample)
    for rows in (sample.pos, sample.neg):
        assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == 3
        assert rows.shape[0] == 0 or 1 <= rows[:, 2].min() <= rows[:, 2].max() <= 8
    frames = events_to_dense(sample)  # what ESImageNetDataset does next
    assert frames.shape == (8, 2, 224, 224)


def npz_of(arrays_by_key: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays_by_key)
    return buffer.getvalue()


any_array = arrays(dtype=scalar_dtypes(), shape=array_shapes(min_dims=0, max_dims=3, max_side=6))
event_rows = arrays(dtype=st.sampled_from([np.uint8, np.int64, np.float32]),
                    shape=st.tuples(st.integers(0, 6), st.integers(1, 4)))


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), damaged(valid_es_sample_bytes())))
def test_es_sample_reader_on_random_and_damaged_bytes(folder, data):
    sample, error = outcome(read_es_sample, write(folder, "sample.npz", data))
    if error is None:
        assert_valid_es_sample(sample)


@FUZZ
@given(pos=st.one_of(event_rows, any_array), neg=event_rows, extra=st.booleans(),
       height=st.integers(1, 600), width=st.integers(1, 600))
def test_es_sample_reader_on_random_arrays(folder, pos, neg, extra, height, width):
    content = {"pos": pos, "neg": neg, **({"other": np.zeros(2)} if extra else {})}
    path = write(folder, "arrays.npz", npz_of(content))
    sample, error = outcome(read_es_sample, path, height=height, width=width)
    if error is None:
        assert_valid_es_sample(sample)
        np.testing.assert_array_equal(sample.pos, pos)


def test_es_sample_round_trip(folder):
    sample = read_es_sample(write(folder, "ok.npz", valid_es_sample_bytes(3)))
    write_es_sample(folder / "again.npz", sample)
    again = read_es_sample(folder / "again.npz")
    np.testing.assert_array_equal(again.pos, sample.pos)
    np.testing.assert_array_equal(again.neg, sample.neg)


def valid_video_bytes() -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, events=(rng.random((2, 5, 6, 7)) < 0.2).astype(np.uint8))
    return buffer.getvalue()


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), damaged(valid_video_bytes())),
       events=st.one_of(any_array, arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(0, 3),
                                                             st.integers(0, 4), st.integers(0, 4)))))
def test_video_reader(folder, data, events):
    for path in (write(folder, "clip.npz", data), write(folder, "clip2.npz", npz_of({"events": events}))):
        clip, error = outcome(read_video_events, path)
        if error is None:
            assert clip.dtype == np.uint8 and clip.ndim == 4 and clip.shape[0] == 2 and clip.max(initial=0) <= 1
            torch.from_numpy(np.ascontiguousarray(clip.transpose(1, 0, 2, 3))).float()  # ESUCF101Dataset's view


def test_video_round_trip(folder):
    clip = read_video_events(write(folder, "v.npz", valid_video_bytes()))
    write_video_events(folder / "v2.npz", clip)
    np.testing.assert_array_equal(read_video_events(folder / "v2.npz"), clip)


# ------------------------------------------------------------------------------------------------
# N-MNIST .bin and AEDAT 2.0 / 3.1
# ------------------------------------------------------------------------------------------------

def assert_usable_events(events, sensor) -> None:
    """Valid events: Tonic's dtype, 1-D; then frames either build or fail with a DataError."""
    assert events.dtype == EVENT_DTYPE and events.ndim == 1
    frames, error = outcome(events_to_frames, events, sensor_size=sensor, n_time_bins=3, source="fuzz")
    if error is None:
        assert frames.shape == (3, 2, sensor[1], sensor[0]) and torch.isfinite(frames).all()


@st.composite
def event_streams(draw, width: int, height: int, t_max: int):
    n = draw(st.integers(0, 40))
    xs = draw(arrays(np.int64, n, elements=st.integers(0, width - 1)))
    ys = draw(arrays(np.int64, n, elements=st.integers(0, height - 1)))
    ts = np.sort(draw(arrays(np.int64, n, elements=st.integers(0, t_max))))
    ps = draw(arrays(np.bool_, n))
    return make_events(xs, ys, ts, ps)


def nmnist_bytes() -> bytes:
    rng = np.random.default_rng(2)
    events = make_events(rng.integers(0, 34, 50), rng.integers(0, 34, 50), np.sort(rng.integers(0, 300000, 50)),
                         rng.integers(0, 2, 50))
    out = np.empty((50, 5), np.uint8)
    x, y, t, on = (events[k].astype(np.int64) for k in ("x", "y", "t", "p"))
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = (on << 7) | ((t >> 16) & 0x7F)
    out[:, 3], out[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return out.tobytes()


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), damaged(nmnist_bytes())), events=event_streams(34, 34, 2**23 - 1))
def test_nmnist_reader(folder, data, events):
    got, error = outcome(read_nmnist_bin, write(folder, "digit.bin", data))
    if error is None:
        assert (got["x"] < 34).all() and (got["y"] < 34).all()
        assert_usable_events(got, (34, 34))
    write_nmnist_bin(folder / "round.bin", events)
    again = read_nmnist_bin(folder / "round.bin")
    np.testing.assert_array_equal(again, events)


def aedat_bytes(version: str) -> bytes:
    rng = np.random.default_rng(4)
    events = make_events(rng.integers(0, 128, 30), rng.integers(0, 128, 30), np.sort(rng.integers(0, 10**6, 30)),
                         rng.integers(0, 2, 30))
    path = Path(f"/tmp/spikebridge_fuzz_base_{version}.aedat")
    (write_aedat2 if version == "2" else write_aedat31)(path, events)
    data = path.read_bytes()
    path.unlink()
    return data


AEDAT_PREFIXES = [b"", b"#!AER-DAT2.0\r\n", b"#!AER-DAT3.1\r\n#!END-HEADER\r\n", b"#!AER-DAT9.9\n"]


@FUZZ
@given(prefix=st.sampled_from(AEDAT_PREFIXES), tail=st.binary(max_size=200),
       data=st.one_of(damaged(aedat_bytes("2")), damaged(aedat_bytes("3"))),
       camera=st.sampled_from(["dvs128", "davis240"]), orientation=st.sampled_from(["raw", "jaer", "cifar10dvs"]))
def test_aedat_reader(folder, prefix, tail, data, camera, orientation):
    sensor = (128, 128) if camera == "dvs128" else (240, 180)
    for blob in (prefix + tail, data):
        got, error = outcome(read_aedat, write(folder, "rec.aedat", blob), camera=camera, orientation=orientation)
        if error is None:
            assert_usable_events(got, sensor)


@FUZZ
@given(events=event_streams(128, 128, 2**32 - 1), orientation=st.sampled_from(["raw", "jaer", "cifar10dvs"]),
       packet=st.integers(1, 50))
def test_aedat_round_trips(folder, events, orientation, packet):
    write_aedat2(folder / "a2.aedat", events, orientation=orientation)
    np.testing.assert_array_equal(read_aedat(folder / "a2.aedat", orientation=orientation), events)
    write_aedat31(folder / "a3.aedat", events, packet_size=packet)
    np.testing.assert_array_equal(read_aedat(folder / "a3.aedat"), events)


# ------------------------------------------------------------------------------------------------
# label files
# ------------------------------------------------------------------------------------------------

label_line = st.builds(
    lambda path, numbers: f"{path} {' '.join(numbers)}",
    st.one_of(st.text(alphabet=string.ascii_letters + string.digits + "/._- \\:", max_size=20),
              st.sampled_from(["/", "//", ".", "..", "a/..", "a/", "n01/a.npz", "n01/a.JPEG", "/etc/x"])),
    st.lists(st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=4)), min_size=0, max_size=5),
)


@FUZZ
@given(text=st.one_of(st.lists(label_line, max_size=6).map("\n".join), st.text(max_size=200)),
       raw=st.binary(max_size=200), check_files=st.booleans())
def test_label_file_reader(folder, text, raw, check_files):
    (folder / "n01").mkdir(exist_ok=True)
    (folder / "n01" / "a.npz").write_bytes(valid_es_sample_bytes())
    for blob in (text.encode("utf-8", "surrogatepass"), raw):
        path = write(folder, "labels.txt", blob)
        entries, error = outcome(read_label_file, path, check_files=check_files)
        if error is None:
            for entry in entries:
                assert entry.label >= 0 and 0 < entry.height < 65536 and 0 < entry.width < 65536
                assert entry.path.suffix == ".npz"
                if check_files:
                    assert entry.path.is_file()


# ------------------------------------------------------------------------------------------------
# checkpoints (JSON + safetensors)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    json_path = save_checkpoint(folder, "last", model, {"history": [], "name": "fuzz"}, optimizer=optimizer,
                                rng={"torch": torch.get_rng_state()}, epoch=2)
    record = json.loads(json_path.read_text())
    return json_path.read_bytes(), record, (folder / record["weights"]).read_bytes()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**20), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def assert_usable_checkpoint(ckpt) -> None:
    assert isinstance(ckpt, Checkpoint)
    assert isinstance(ckpt.epoch, int) and isinstance(ckpt.meta, dict)
    assert all(isinstance(v, torch.Tensor) for v in ckpt.model_state.values())
    state = ckpt.optimizer_state()
    assert state is None or isinstance(state["param_groups"], list)
    assert ckpt.scheduler_state is None or isinstance(ckpt.scheduler_state, dict)


@FUZZ
@given(field=st.sampled_from(["format", "epoch", "meta", "weights", "sha256", "optimizer", "scheduler", "extra"]),
       value=json_values, json_blob=st.binary(max_size=300))
def test_checkpoint_json_damage(folder, checkpoint_files, field, value, json_blob):
    json_bytes, record, weights = checkpoint_files
    write(folder, record["weights"], weights)
    for blob in (json.dumps({**record, field: value}).encode(), json_blob):
        path = write(folder, "last.json", blob)
        ckpt, error = outcome(load_checkpoint, path)
        if error is None:
            assert_usable_checkpoint(ckpt)


@FUZZ
@given(draws=st.data(), verify=st.booleans())
def test_checkpoint_byte_damage(folder, checkpoint_files, draws, verify):
    json_bytes, record, weights = checkpoint_files
    broken_json = draws.draw(damaged(json_bytes))
    broken_weights = draws.draw(damaged(weights))
    write(folder, record["weights"], weights)
    ckpt, error = outcome(load_checkpoint, write(folder, "last.json", broken_json))
    if error is None:
        assert_usable_checkpoint(ckpt)
    write(folder, "last.json", json_bytes)
    write(folder, record["weights"], broken_weights)
    ckpt, error = outcome(load_checkpoint, folder / "last.json", verify=verify)
    if verify and broken_weights != weights:
        assert error is not None and "checksum" in str(error)
    if error is None:
        assert_usable_checkpoint(ckpt)
    bare, error = outcome(load_checkpoint, write(folder, "bare.safetensors", broken_weights))
    if error is None:
        assert_usable_checkpoint(bare)


@FUZZ
@given(tensors=st.dictionaries(st.text(max_size=10), arrays(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_]),
                                                               array_shapes(min_dims=0, max_dims=3, max_side=4)),
                               max_size=4))
def test_checkpoint_random_tensors(folder, tensors):
    """Any safetensors file of any tensors loads as weights (or is refused with a CheckpointError)."""
    path = folder / "random.safetensors"
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(path))
    ckpt, error = outcome(load_checkpoint, path)
    if error is None:
        assert_usable_checkpoint(ckpt)
        assert len(ckpt.model_state) == len(tensors)


# ------------------------------------------------------------------------------------------------
# YAML configs
# ------------------------------------------------------------------------------------------------

def config_keys() -> dict:
    from dataclasses import fields, is_dataclass

    tree = {}
    for f in fields(PipelineConfig()):
        value = getattr(PipelineConfig(), f.name)
        tree[f.name] = [g.name for g in fields(value)] if is_dataclass(value) else None
    return tree


CONFIG_KEYS = config_keys()
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**400), st.floats(), st.text(max_size=12),
                         st.sampled_from(["1e-3", "2024-13-45", "2024-01-01", ".nan", "-.inf", "0x1F", "~", "[", "{a: "]))


@st.composite
def config_trees(draw):
    tree = {}
    for section in draw(st.lists(st.sampled_from([*CONFIG_KEYS, "unknown_section"]), max_size=4, unique=True)):
        keys = CONFIG_KEYS.get(section)
        if keys is None:
            tree[section] = draw(yaml_scalars)
        else:
            names = st.sampled_from([*keys, "typo"])
            tree[section] = draw(st.dictionaries(names, st.one_of(yaml_scalars, st.lists(yaml_scalars, max_size=2)),
                                                 max_size=3))
    return tree


@FUZZ
@given(tree=config_trees(), raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_yaml_config_loader(folder, tree, raw):
    for blob in (yaml.safe_dump(tree, allow_unicode=True).encode(), raw):
        cfg, error = outcome(load_config, PipelineConfig, write(folder, "recipe.yaml", blob))
        if error is None:
            assert isinstance(cfg, PipelineConfig)
            cfg.validate()


@pytest.mark.parametrize("blob", [b"[" * 1000 + b"]" * 1000, b"a: " + b"{b: " * 1000, b"a: &x [1]\nb: *x\n"])
def test_yaml_nesting_and_aliases(folder, blob):
    cfg, error = outcome(load_config, PipelineConfig, write(folder, "deep.yaml", blob))
    assert error is not None and "deep.yaml" in str(error)


# ------------------------------------------------------------------------------------------------
# CIFAR pickles
# ------------------------------------------------------------------------------------------------

def cifar_bytes() -> bytes:
    rng = np.random.default_rng(6)
    batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4],
             "batch_label": "testing batch 1 of 1", "filenames": ["a.png", "b.png", "c.png", "d.png"]}
    return pickle.dumps(batch, protocol=2)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), damaged(cifar_bytes())))
def test_cifar_pickle_reader(folder, data):
    got, error = outcome(load_cifar_pickle, write(folder, "data_batch_1", data))
    if error is None:
        assert isinstance(got, dict) and all(isinstance(k, bytes) or not isinstance(k, str) for k in got)


def test_cifar_pickle_with_a_huge_memo_index_is_quick(folder):
    """A damaged file naming memo slot 2**31 - 1 (the C unpickler would allocate gigabytes)."""
    got, error = outcome(load_cifar_pickle, write(folder, "data_batch_2", b"\x80\x02}q\x00r\xff\xff\xff\x7f."))
    assert error is None and got == {}


def _load_in_child(path: str) -> None:
    try:
        load_cifar_pickle(path)
    except SpikebridgeError:
        os._exit(2)
    os._exit(0)


def test_cifar_pickle_with_a_damaged_dtype_state_does_not_crash(folder):
    """numpy's dtype.__setstate__ crashed the interpreter (SIGSEGV) on a state tuple that lost two
    items, as a damaged file gives; it is refused now. Run in a forked child: a crash is an exit code."""
    data = cifar_bytes()
    at = data.index(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff")  # dtype state (3, '|', None, None, None, -1, -1, 0)
    path = write(folder, "data_batch_3", data[:at] + data[at + 2:])  # -> (3, '|', None, -1, -1, 0)
    child = multiprocessing.get_context("fork").Process(target=_load_in_child, args=(str(path),))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 2, f"exit code {child.exitcode} (-11: segmentation fault)"


def test_cifar_pickle_refuses_code(folder):
    """A pickle that would run code (os.system) is refused, not executed."""
    evil = b"cos\nsystem\n(S'touch " + str(folder / "pwned").encode() + b"'\ntR."
    got, error = outcome(load_cifar_pickle, write(folder, "test_batch", evil))
    assert error is not None and "forbidden" in str(error)
    assert not (folder / "pwned").exists()
