"""``--data PATH``: every supported on-disk layout opens as the right DataBundle (classes,
channels, kind, size, batches), the suggested model fits what was found, and
``spikebridge pipes --data PATH --out DIR`` with no other flag runs on an image folder."""
import json
from pathlib import Path

import pytest
import torch

import _layouts as layouts
from spikebridge import cli
from spikebridge.data.datasets import open_dataset, resolve_model_name
from spikebridge.data.disk import default_image_size, detect_layout, stratified_indices
from spikebridge.data.loading import iterate_batches
from spikebridge.errors import DataError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    clips = layouts.video_clips(root / "ucf101", classes=2, clips_per_class=4, frames=8, size=(64, 86))
    return {
        "digits": layouts.image_folders(root / "digits", size=(28, 28), grey=True, classes=3, train_per_class=22,
                                        val_per_class=5),
        "photos": layouts.image_folders(root / "photos", size=(120, 160), classes=3, train_per_class=2,
                                        val_per_class=1, suffix=".jpg"),
        "cifar": layouts.cifar10(root / "cifar"),
        "es-released": layouts.es_imagenet(root / "es-released", released=True),
        "es-converted": layouts.es_imagenet(root / "es-converted", released=False),
        "dvs": layouts.dvs_folder(root / "dvs"),
        "clips": clips,
        "es-ucf101": layouts.es_ucf101(clips, root / "es-ucf101"),
    }


def _first_batch(bundle, batch_size=2):
    return next(iterate_batches(bundle, bundle.train, batch_size, train=True, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name, layout, kind, classes, channels, size, model, shape", [
    ("digits", "image-folders", "static", 3, 1, 28, "cnn", (2, 1, 28, 28)),
    ("photos", "image-folders", "static", 3, 3, 224, "resnet18", (2, 3, 224, 224)),
    ("cifar", "cifar", "static", 10, 3, 32, "vgg11", (2, 3, 32, 32)),
    ("es-released", "es-imagenet-released", "events", 3, 2, 224, "resnet18", (8, 2, 2, 224, 224)),
    ("es-converted", "es-imagenet", "events", 3, 2, 224, "resnet18", (8, 2, 2, 224, 224)),
    ("dvs", "dvs", "events", 3, 2, 128, "resnet18", (8, 2, 2, 128, 128)),
    ("clips", "video-clips", "events", 2, 3, 64, "crnn", (15, 2, 3, 64, 86)),
    ("es-ucf101", "es-ucf101", "events", 2, 2, 64, "crnn", (15, 2, 2, 64, 86)),
])
def test_layouts_open_as_bundles(data, name, layout, kind, classes, channels, size, model, shape):
    path = str(data[name])
    assert detect_layout(path) == layout
    bundle = open_dataset(path)
    assert (bundle.kind, bundle.num_classes, bundle.in_channels, bundle.image_size) == (kind, classes, channels, size)
    assert resolve_model_name("auto", bundle) == model and resolve_model_name("vgg16", bundle) == "vgg16"
    x, y = _first_batch(bundle)
    assert tuple(x.shape) == shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < classes
    if kind == "events" and channels == 2:
        assert x.min() >= 0 and x.sum() > 0  # event counts


def test_static_images_are_normalised_and_augmented_like_the_paper(data):
    photos = open_dataset(str(data["photos"]))  # streamed: RandomResizedCrop 224 / resize 256 + crop 224
    assert not photos.info["in_memory"] and photos.workers == 0
    test_x, _ = next(iterate_batches(photos, photos.test, 3, train=False))
    again, _ = next(iterate_batches(photos, photos.test, 3, train=False))
    assert torch.equal(test_x, again)  # the test transform is deterministic
    torch.manual_seed(0)
    a, _ = _first_batch(photos)
    torch.manual_seed(1)
    b, _ = _first_batch(photos)
    assert not torch.equal(a, b)  # random crops
    digits = open_dataset(str(data["digits"]))  # in memory, normalised with its own statistics
    assert digits.info["in_memory"] and digits.max_shift == 2
    x = torch.cat([xb for xb, _ in iterate_batches(digits, digits.train, 66, train=False)])
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    sized = open_dataset(str(data["photos"]), image_size=48)
    assert sized.info["in_memory"] and tuple(_first_batch(sized)[0].shape) == (2, 3, 48, 48)
    assert resolve_model_name("auto", sized) == "vgg11"
    assert (default_image_size(28, 28), default_image_size(32, 40), default_image_size(375, 500)) == (28, 32, 224)


def test_event_frames_resize_and_video_split_is_shared(data):
    es = open_dataset(str(data["es-released"]), image_size=32)
    x, _ = _first_batch(es)
    assert tuple(x.shape) == (8, 2, 2, 32, 32) and es.image_size == 32
    assert resolve_model_name("auto", es) == "cnn"
    clips, events = open_dataset(str(data["clips"])), open_dataset(str(data["es-ucf101"]))
    names = lambda split, key: sorted(Path(str(split.dataset.clips[i][0] if key == "clips" else split.dataset.items[i][0]))
                                      .with_suffix("").name for i in split.indices)
    assert names(clips.test, "clips") == names(events.test, "events")  # the same clips, 75/25 seed 42
    assert len(clips.test) == 2 and len(clips.train) == 6
    train, test = stratified_indices([0] * 10 + [1] * 10, 0.1, seed=3)
    assert len(test) == 2 and not set(train) & set(test)


def test_bad_folders_are_one_line_data_errors(data, tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(str(tmp_path / "empty"))
    mismatched = layouts.image_folders(tmp_path / "mismatch", size=(28, 28), classes=3, train_per_class=1, val_per_class=1)
    (mismatched / "val" / "n00000002").rename(mismatched / "val" / "n00000009")
    with pytest.raises(DataError, match="class folders differ") as info:
        open_dataset(str(mismatched))
    assert "\n" not in str(info.value)


def test_pipes_with_only_data_and_out_runs_on_a_folder(data, tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["pipes", "--data", str(data["digits"]), "--out", str(out), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["ann", "snn_pretrained"]
    assert summary["dataset"] == str(data["digits"])
    assert (out / "report.md").read_text().startswith("# pipeS")
    meta = json.loads((out / "snn_pretrained" / "checkpoints" / "last.json").read_text())["meta"]
    assert meta["model"]["name"] == "cnn" and meta["model"]["in_channels"] == 1 and meta["model"]["num_classes"] == 3


def test_images_nested_in_class_folders_are_images_not_clips(tmp_path):
    """Tiny-ImageNet keeps train/<wnid>/images/*.JPEG: image folders at any depth, not video
    clips; clips in train/ and val/ (several clip folders a class) are still refused; its flat
    val/ with val_annotations.txt is named."""
    root = layouts.image_folders(tmp_path / "tiny", size=(64, 64), classes=3, train_per_class=3, val_per_class=2)
    for split in ("train", "val"):
        for folder in (root / split).iterdir():
            (folder / "images").mkdir()
            for image in list(folder.glob("*.png")):
                image.rename(folder / "images" / image.name)
            (folder / f"{folder.name}_boxes.txt").write_text("img0.png 0 0 10 10\n")
    assert detect_layout(root) == "image-folders"
    bundle = open_dataset(str(root))
    assert (bundle.num_classes, len(bundle.train), len(bundle.test)) == (3, 9, 6)
    (root / "val" / "val_annotations.txt").write_text("img0.png n00000000\n")
    with pytest.raises(DataError, match="Tiny-ImageNet's val/ lists the class of each image in val_annotations.txt"):
        open_dataset(str(root))
    clips = tmp_path / "clips"
    for split in ("train", "val"):
        layouts.video_clips(clips / split, classes=2, clips_per_class=2, frames=4, size=(8, 8))
    with pytest.raises(DataError, match="video clips in train/ and val/ are not supported"):
        detect_layout(clips)


def test_ucf101_jpegs_256_as_distributed_reads_as_its_class_folder_form(tmp_path, capsys):
    """UCF101's jpegs_256 is one folder of ``v_<Class>_gXX_cYY/`` clip folders: its classes come
    from the names, and its 75/25 split is the one the class-folder form (and ES-UCF101) makes."""
    import shutil

    by_class = layouts.video_clips(tmp_path / "by_class", classes=3, clips_per_class=4, frames=4, size=(16, 20))
    flat = tmp_path / "jpegs_256"
    flat.mkdir()
    for clip in by_class.glob("*/*"):
        shutil.copytree(clip, flat / clip.name)
    assert detect_layout(flat) == "video-clips"

    def split(bundle, name):
        part = getattr(bundle, name)
        return sorted((part.dataset.clips[i][0].name, part.dataset.clips[i][1]) for i in part.indices)

    a, b = open_dataset(str(by_class)), open_dataset(str(flat))
    assert a.num_classes == b.num_classes == 3
    assert split(a, "train") == split(b, "train") and split(a, "test") == split(b, "test") and len(split(b, "test")) == 3
    assert cli.main(["inspect", str(flat), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["Class0", "Class1", "Class2"]
    events = tmp_path / "es-ucf101"  # converted as it is: class folders of .npz, the same test clips
    assert cli.main(["convert", "video", "--input", str(flat), "--out", str(events), "--no-progress"]) == 0
    converted = open_dataset(str(events))
    test_clips = sorted(converted.test.dataset.items[i][0].name.removesuffix(".npz") for i in converted.test.indices)
    assert test_clips == [name for name, _label in split(b, "test")] and converted.num_classes == 3
