"""Dataset conversion: image folders -> ES-ImageNet (ODG), clip folders -> ES-UCF101, and
ES-ImageNet -> edge-integral image folders (the "self-pretrain" images of arXiv:2203.01158).

* Input: ``input_dir/<class>/<item>``; class index = position in the sorted class folder names,
  items in natural name order. Output: the same class folders under ``out_dir``, one ``.npz`` per
  item, ``labels.txt`` (``relative_path label height width``, written atomically at the end) and
  ``conversion.json`` (the parameters, so a resume cannot mix parameters).
* Resumable and kill-safe: every file is written under a hidden temporary name beside its target
  (:func:`spikebridge.utils.atomic_path`) and renamed when complete; a rerun removes its own
  leftover temporary files, keeps every output that reads back valid and converts the rest.
* ``out_dir`` must be new, empty, or an earlier output of the same conversion, unless
  ``overwrite``; input and output may not lie inside each other.
* Unreadable inputs and non-image files are reported and skipped, never fatal; samples with
  fewer than ``min_events`` events are reported as dropped.
* ``workers`` > 1: that many spawned single-threaded processes (a dead worker is reported in one
  line; workers whose parent was killed leave quietly); 0 or 1 runs inline.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import pickle
import shlex
import signal
import time
import zlib
from multiprocessing.connection import wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError, OutputError, clip
from ..utils import atomic_path, atomic_write_text, ensure_dir, output_error, remove_stale_temps, temp_target
from .events import (CONVERSION_FILE, conversion_frame, es_imagenet_splits, read_es_sample, read_label_file,
                     write_es_sample, write_label_file)
from .folders import (IMG_EXTENSIONS, TRAIN_SPLIT_NAMES, VAL_SPLIT_NAMES, hidden_folder, loose_images, open_image,
                      refuse_loose_images, scan_image_folder)
from .odg import EDGE_GREY_STEP, EDGE_GREY_ZERO, edge_integral_image, events_to_dense, odg, resized_shape
from .video import (
    check_n_frames,
    clip_to_events,
    frames_to_events,
    natural_key,
    read_video_events,
    write_video_events,
)

LABEL_FILE = "labels.txt"
#: The most worker processes a conversion starts.
MAX_WORKERS = 256


@dataclass
class ConversionReport:
    """What a conversion did. Paths are relative to the input folder (``/``-separated)."""

    out_dir: Path
    label_file: Path
    classes: list[str]
    total: int = 0
    converted: int = 0
    reused: int = 0
    dropped: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stale_temp_removed: int = 0
    elapsed_s: float = 0.0

    @property
    def written(self) -> int:
        """Samples listed in the label file (converted now or reused from an earlier run)."""
        return self.converted + self.reused


# ------------------------------------------------------------------------------------------------
# enumeration
# ------------------------------------------------------------------------------------------------

def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    return [e for e in entries if not hidden_folder(e.name)]


def list_classes(input_dir: Path) -> list[str]:
    """Sorted names of the visible class folders of ``input_dir``."""
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder not found")
    try:
        with os.scandir(input_dir) as it:
            classes = sorted(e.name for e in _visible(it) if e.is_dir())
    except OSError as exc:
        raise DataError(f"{input_dir}: cannot list the input folder ({exc.strerror or exc})") from None
    if not classes:
        raise DataError(f"{input_dir}: no class folders (expected input_dir/<class>/<files>)")
    return classes


def _output_names(names: Sequence[str]) -> dict[str, str]:
    """Input file name (``sub/x.png`` when nested) -> output ``.npz`` name in the class folder:
    the stem, or the whole relative name (``/`` as ``__``) when stems collide."""
    stems: dict[str, int] = {}
    for n in names:
        stems[Path(n).stem] = stems.get(Path(n).stem, 0) + 1
    return {n: (Path(n).stem if stems[Path(n).stem] == 1 else n.replace("/", "__")) + ".npz" for n in names}


@dataclass(frozen=True)
class _Task:
    """One item to convert; ``height`` / ``width``: an ES-ImageNet sample's, ``frame``: the
    ``events_to_dense`` frame of its folder (:func:`~spikebridge.data.events.conversion_frame`;
    edge-integral only)."""

    index: int
    src: str
    dst: str
    rel_src: str
    rel_dst: str
    label: int
    reuse: bool = False  # an earlier output of the same parameters is kept
    height: int = 0
    width: int = 0
    frame: dict = field(default_factory=dict)


def _sibling_split_classes(input_dir: Path, classes: list[str]) -> list[str]:
    """A split folder (``X/val``) is numbered with the classes of every split beside it (``X/train``
    ...), so that a class missing from one split does not shift the labels of the others; any
    other folder with its own classes."""
    parent = input_dir.resolve().parent
    if input_dir.name.lower() not in TRAIN_SPLIT_NAMES + VAL_SPLIT_NAMES:
        return classes
    siblings = [p for p in parent.iterdir() if p.is_dir() and p.name.lower() in TRAIN_SPLIT_NAMES + VAL_SPLIT_NAMES]
    found = set(classes)
    for split in siblings:
        with contextlib.suppress(DataError):  # a split of loose files numbers nothing
            found.update(list_classes(split))
    return sorted(found)


def _collect_tasks(input_dir: Path, out_dir: Path, classes: list[str], want_dirs: bool,
                   report: ConversionReport, flat: Mapping[str, str] | None = None) -> list[_Task]:
    """The items of each class folder; ``flat``: clip folder name -> class, for UCF101 clips
    lying in ``input_dir`` itself (``jpegs_256`` as distributed), written into class folders."""
    tasks: list[_Task] = []
    for label, cls in enumerate(classes):
        source = input_dir if flat else input_dir / cls
        if not source.is_dir():  # a class of the other splits only
            continue
        try:
            with os.scandir(source) as it:
                entries = sorted((e for e in _visible(it) if not flat or flat.get(e.name) == cls),
                                 key=lambda e: natural_key(e.name))
        except OSError as exc:
            raise DataError(f"{source}: cannot list the class folder ({exc.strerror or exc})") from None
        items = []
        for e in entries:
            rel = f"{cls}/{e.name}"
            if not _storable(e.name) or not _storable(cls):
                report.skipped.append((rel, "name cannot be stored in a label file (newline or edge spaces)"))
            elif want_dirs:
                if e.is_dir():
                    items.append(e.name)
                else:
                    report.skipped.append((rel, "not a clip folder"))
            elif e.is_file() and Path(e.name).suffix.lower() in IMG_EXTENSIONS:  # what training reads
                items.append(e.name)
            elif e.is_dir():  # images nested in the class folder (Tiny-ImageNet's <wnid>/images/): training's list
                nested: list[str] = []
                with contextlib.suppress(DataError):  # none in it
                    nested = [os.path.relpath(path, source)
                              for path, _label in scan_image_folder(source, {e.name: 0}, allow_empty=True)]
                items += sorted((n for n in nested if _storable(n)), key=natural_key)
                if not nested:
                    report.skipped.append((rel, "a folder without images"))
            else:
                report.skipped.append((rel, "not an image file (by suffix)"))
        if not items and not flat:  # training refuses the class folder, and its label would hold no sample
            what = "clip folders" if want_dirs else f"images ({' '.join(IMG_EXTENSIONS)})"
            raise DataError(f"class folder {clip(str(source))} holds no {what}; remove it or add its samples")
        for name, out_name in _output_names(items).items():
            tasks.append(_Task(index=len(tasks), src=str(source / name), dst=str(out_dir / cls / out_name),
                               rel_src=f"{cls}/{name}", rel_dst=f"{cls}/{out_name}", label=label))
    if not want_dirs:  # images beside the class folders: refused, as training refuses them
        with os.scandir(input_dir) as entries:
            refuse_loose_images(input_dir, loose_images(entries))
    return tasks


def _storable(name: str) -> bool:
    return "\n" not in name and "\r" not in name and name == name.strip()


def _write_or_fail(write: Callable[[str, Any], None], dst: str, payload: Any) -> None:
    try:
        write(dst, payload)
    except OutputError:  # disk full, permissions (utils.atomic_path names the file): fatal
        raise
    except OSError as exc:
        raise output_error(dst, exc) from None


def _check_folders(input_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder inside the input (it would be read as a class) and an input inside
    the output (the conversion would write among its own inputs)."""
    src, out = input_dir.resolve(), out_dir.resolve()
    if out == src or src in out.parents:
        raise ConfigError(f"--out {out_dir} lies inside --input {input_dir}: it would be read as a class folder; "
                          "choose an output folder outside the input")
    if out in src.parents:
        raise ConfigError(f"--input {input_dir} lies inside --out {out_dir}: the conversion would write among its "
                          "inputs; choose an output folder outside the input")


def _check_params(out_dir: Path, params: Mapping[str, Any], overwrite: bool, source: Path) -> bool:
    """Claim ``out_dir`` and record the parameters and the ``source`` folder (absolute); returns
    whether existing outputs may be reused.

    A folder holding no ``conversion.json`` must be missing or empty (unless ``overwrite``): it
    is someone else's, and its ``labels.txt`` or ``.npz`` files must not be replaced. One holding
    the conversion of another source (same file names, other images) is refused too.
    """
    path = out_dir / CONVERSION_FILE
    wanted = json.loads(json.dumps({**params, "input": os.path.abspath(source)}))  # normalise tuples -> lists
    reuse = True
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            previous = None
        if isinstance(previous, dict) and "input" not in previous:  # written before the source was recorded:
            del wanted["input"]  # which one is unknown, and not claimed for this one either
        elif isinstance(previous, dict) and isinstance(previous["input"], str) and \
                os.path.realpath(previous["input"]) == os.path.realpath(wanted["input"]):
            wanted["input"] = previous["input"]  # the same folder by another path (a symlink)
        if previous != wanted:
            if not overwrite:
                other = isinstance(previous, dict) and "input" in wanted and previous.get("input") != wanted["input"]
                raise DataError(
                    f"{out_dir} holds a conversion " + (f"of another input ({clip(str(previous['input']))})"
                                                        if other else f"made with other parameters ({path})")
                    + "; use another output folder or --overwrite to convert everything again"
                )
            reuse = False
    else:
        try:  # our own leftover of a conversion killed while it claimed the folder is not foreign
            names = os.listdir(out_dir) if out_dir.is_dir() else []
            foreign = sorted(n for n in names if temp_target(n) != CONVERSION_FILE)
        except OSError as exc:
            raise output_error(out_dir, exc, "cannot list output folder") from exc
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise DataError(f"output folder {out_dir} is not empty ({shown}) and holds no earlier conversion; "
                            "choose a new or empty folder, or add --overwrite to write into it "
                            "(files with the same names are replaced)")
        reuse = not overwrite
    ensure_dir(out_dir)
    atomic_write_text(path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return reuse


# ------------------------------------------------------------------------------------------------
# per-item work (top-level functions: they run in worker processes)
# ------------------------------------------------------------------------------------------------

# result: (index, status, height, width, n_events, message); status in converted/reused/dropped/failed
_Result = tuple[int, str, int, int, int, str]


def _done_before(task: _Task) -> bool:
    """Whether an earlier output of the same parameters is there, written after its source last
    changed (a source replaced in place is converted again)."""
    try:
        return task.reuse and os.path.getmtime(task.dst) >= os.path.getmtime(task.src)
    except OSError:
        return False


def _image_task(odg_kwargs: Mapping[str, Any], task: _Task) -> _Result:
    size = int(odg_kwargs.get("size", 254))
    if _done_before(task):
        try:
            read_es_sample(task.dst)
            with open_image(task.src) as im:
                h, w = resized_shape(im.height, im.width, size=size)
            return task.index, "reused", h, w, -1, ""
        except Exception:  # unreadable output or input header: convert again below
            pass
    try:
        with open_image(task.src) as im:  # bounded: a huge image is refused from its header
            im.load()
            sample = odg(im, **{**odg_kwargs, "min_events": 0})
    except Exception as exc:  # PIL raises many exception types for broken files
        message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        return task.index, "failed", 0, 0, 0, message
    min_events = int(odg_kwargs.get("min_events", 1000))
    if sample.n_events < min_events:
        if os.path.exists(task.dst):  # e.g. left by a run with other parameters
            os.unlink(task.dst)
        return task.index, "dropped", sample.height, sample.width, sample.n_events, ""
    _write_or_fail(write_es_sample, task.dst, sample)
    return task.index, "converted", sample.height, sample.width, sample.n_events, ""


def _video_task(video_kwargs: Mapping[str, Any], task: _Task) -> _Result:
    if _done_before(task):
        try:
            events = read_video_events(task.dst)
            return task.index, "reused", int(events.shape[2]), int(events.shape[3]), -1, ""
        except DataError:
            pass
    kwargs = dict(video_kwargs)
    seed = kwargs.pop("seed", 0)
    if kwargs.get("mode") == "random":  # a per-clip generator: independent of order and workers
        kwargs["rng"] = np.random.default_rng([int(seed), zlib.crc32(task.rel_src.encode("utf-8"))])
    try:
        events = clip_to_events(task.src, **kwargs)
    except DataError as exc:
        return task.index, "failed", 0, 0, 0, str(exc)
    _write_or_fail(write_video_events, task.dst, events)
    return task.index, "converted", int(events.shape[2]), int(events.shape[3]), int(events.sum()), ""


#: ``call(task)``: a module-level function or a ``functools.partial`` of one (picklable for spawned workers)
_Call = Callable[[_Task], _Result]


def _worker_main(call: _Call, tasks, results) -> None:
    """A conversion worker: receive tasks, send back results (or the error a task raised).

    It holds only the reading end of its task pipe and the writing end of its result pipe, so
    when the parent dies (even by SIGKILL) the next receive or send fails and it leaves quietly,
    without a traceback.
    """
    try:
        import torch

        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
        while True:
            task = tasks.recv()
            if task is None:
                return
            try:
                message = ("ok", call(task))
            except Exception as exc:  # sent back and raised by the parent
                message = ("error", exc)
            try:
                results.send(message)
            except (pickle.PicklingError, TypeError, AttributeError):
                results.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))
    except (EOFError, OSError):  # the parent is gone: nothing to report to
        return


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _pool(tasks: list[_Task], call: _Call, workers: int) -> Iterator[_Result]:
    """Results of ``call(task)`` in ``workers`` spawned processes, in completion order."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[dict[str, Any]] = []
    try:
        for _ in range(min(workers, len(tasks))):
            task_r, task_w = ctx.Pipe(duplex=False)
            result_r, result_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(call, task_r, result_w), daemon=True)
            proc.start()
            task_r.close()
            result_w.close()
            procs.append({"proc": proc, "tasks": task_w, "results": result_r, "busy": 0})
        pending = iter(tasks)

        def feed(worker: dict[str, Any]) -> None:
            task = next(pending, None)
            if task is not None:
                worker["busy"] += 1  # counted even if the send fails: a dead worker is reported below
                try:
                    worker["tasks"].send(task)
                except OSError:
                    pass

        for worker in procs:  # two tasks each: a worker never waits for its next one
            feed(worker)
            feed(worker)
        while any(w["busy"] for w in procs):
            busy = [w for w in procs if w["busy"]]
            ready = wait([w["results"] for w in busy] + [w["proc"].sentinel for w in busy])
            for worker in busy:
                if worker["results"] in ready or worker["results"].poll():
                    try:
                        kind, value = worker["results"].recv()
                    except (EOFError, OSError):
                        kind, value = "died", None
                    if kind == "ok":
                        worker["busy"] -= 1
                        feed(worker)
                        yield value
                        continue
                    if kind == "error":
                        raise value
                elif worker["proc"].sentinel not in ready:
                    continue
                worker["proc"].join(timeout=5)
                raise DataError(f"a conversion worker (process {worker['proc'].pid}) "
                                f"{_describe_exit(worker['proc'].exitcode)}; finished files are kept: "
                                "rerun the same command to continue")
    finally:
        for worker in procs:
            try:
                worker["tasks"].send(None)
            except OSError:
                pass
            worker["tasks"].close()
        for worker in procs:
            worker["proc"].join(timeout=5)
            if worker["proc"].is_alive():
                worker["proc"].terminate()
                worker["proc"].join(timeout=5)
            worker["results"].close()


def _run(tasks: list[_Task], call: _Call, workers: int, progress: bool, unit: str) -> Iterator[_Result]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), disable=not progress, unit=unit, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield call(task)
                bar.update(1)
            return
        for result in _pool(tasks, call, workers):
            yield result
            bar.update(1)
    finally:
        bar.close()


def _check_workers(workers: Any) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be an integer in 0..{MAX_WORKERS}, got {workers!r:.40}")


def _convert(input_dir: str | os.PathLike, out_dir: str | os.PathLike, *, want_dirs: bool,
             fn: Callable[[Mapping[str, Any], _Task], _Result], kwargs: Mapping[str, Any], params: dict,
             workers: int, progress: bool, overwrite: bool, unit: str) -> ConversionReport:
    started = time.monotonic()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    _check_workers(workers)
    from .disk import flat_ucf101_clips

    flat = {clip.name: cls for clip, cls in flat_ucf101_clips(input_dir)} if want_dirs and input_dir.is_dir() else {}
    classes = sorted(set(flat.values())) if flat else list_classes(input_dir)
    if all(c.lower() in TRAIN_SPLIT_NAMES + VAL_SPLIT_NAMES for c in classes):
        raise DataError(f"{clip(str(input_dir))} holds dataset splits ({', '.join(classes)}), not class folders: "
                        f"convert each split, e.g. --input {shlex.quote(clip(str(input_dir / classes[0])))} --out "
                        f"{shlex.quote(clip(str(out_dir / classes[0])))}")
    _check_folders(input_dir, out_dir)
    classes = _sibling_split_classes(input_dir, classes)
    report = ConversionReport(out_dir=out_dir, label_file=out_dir / LABEL_FILE, classes=classes)
    tasks = _collect_tasks(input_dir, out_dir, classes, want_dirs, report, flat)
    if not tasks:  # refused before anything is written
        raise DataError(f"{clip(str(input_dir))}: its class folders hold no "
                        + ("clip folders (expected <class>/<clip>/<frame images>)" if want_dirs else
                           f"images ({' '.join(IMG_EXTENSIONS)})"))
    if _check_params(out_dir, params, overwrite, input_dir):  # earlier outputs of these parameters are kept
        tasks = [replace(task, reuse=True) for task in tasks]
    # our own leftovers of killed writes, only of the files we write, in out_dir and its class folders
    report.stale_temp_removed = remove_stale_temps(out_dir, (LABEL_FILE, CONVERSION_FILE)) + sum(
        remove_stale_temps(out_dir / cls, ("*.npz",)) for cls in classes)
    for cls in classes:
        if (input_dir / cls).is_dir() or cls in flat.values():
            ensure_dir(out_dir / cls)

    write_label_file(report.label_file, _tally(report, tasks, functools.partial(fn, dict(kwargs)), workers,
                                               progress, unit))
    report.elapsed_s = time.monotonic() - started
    return report


def _tally(report: ConversionReport, tasks: list[_Task], call: _Call, workers: int, progress: bool,
           unit: str) -> list[tuple[str, int, int, int]]:
    """Run ``tasks``, counting them and their results in ``report``; the label entries of those written."""
    report.total = len(tasks)
    results = {result[0]: result for result in _run(tasks, call, workers, progress, unit)}
    entries = []
    for task in tasks:
        _, status, h, w, n_events, message = results[task.index]
        report.converted += status == "converted"
        report.reused += status == "reused"
        if status in ("converted", "reused"):
            entries.append((task.rel_dst, task.label, h, w))
        elif status == "dropped":
            report.dropped.append((task.rel_src, n_events))
        else:
            report.failed.append((task.rel_src, message))
    return entries


# ------------------------------------------------------------------------------------------------
# public converters
# ------------------------------------------------------------------------------------------------

def convert_image_folder_odg(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 0,
    odg_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert an ImageNet-layout folder into the ES-ImageNet format with ODG.

    ``input_dir/<class>/<image>`` with the suffixes training reads (``IMG_EXTENSIONS``, any case) ->
    ``out_dir/<class>/<image stem>.npz`` (:func:`~spikebridge.data.events.write_es_sample`; the
    full file name + ``.npz`` when two images of a class share a stem) and ``out_dir/labels.txt``.
    ``odg_kwargs`` go to :func:`~spikebridge.data.odg.odg` (``size``, ``threshold``, ``window``,
    ``min_events``, ``path``). ``workers``: processes (0/1 = inline). Resumable: rerun the same
    call after an interruption. ``overwrite``: convert everything again (needed to change the
    parameters of an existing output folder).
    """
    kwargs = dict(odg_kwargs or {})
    unknown = set(kwargs) - {"size", "threshold", "window", "min_events", "path"}
    if unknown:
        raise ConfigError(f"unknown odg_kwargs {sorted(unknown)}")
    odg(np.zeros((8, 8), dtype=np.uint8), **kwargs)  # bad parameters fail here, not once per image
    return _convert(input_dir, out_dir, want_dirs=False, fn=_image_task, kwargs=kwargs,
                    params={"kind": "odg", "odg_kwargs": kwargs}, workers=workers, progress=progress,
                    overwrite=overwrite, unit="img")


def convert_video_folder(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 0,
    video_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert a UCF101 ``jpegs_256``-style tree into ES-UCF101.

    ``input_dir/<class>/<clip>/<frames>`` -> ``out_dir/<class>/<clip>.npz`` (uint8 ``[2, 30, H, W]``,
    :func:`~spikebridge.data.video.write_video_events`) and ``out_dir/labels.txt``. ``video_kwargs``:
    ``n_frames``, ``mode``, ``upper``, ``lower``, ``noise_std``, ``min_threshold`` (see
    :func:`~spikebridge.data.video.frames_to_events`) and ``seed`` (``mode="random"``: each clip
    gets a generator seeded by ``(seed, crc32(relative clip path))``, so results do not depend on
    the order or the number of workers). Resumable like :func:`convert_image_folder_odg`.
    """
    kwargs = dict(video_kwargs or {})
    unknown = set(kwargs) - {"n_frames", "mode", "upper", "lower", "noise_std", "min_threshold", "seed"}
    if unknown:
        raise ConfigError(f"unknown video_kwargs {sorted(unknown)}")
    check_n_frames(kwargs.get("n_frames", 31))
    check = {k: v for k, v in kwargs.items() if k not in ("n_frames", "seed")}
    frames_to_events(np.zeros((2, 2, 2), dtype=np.float32), **check)  # bad parameters fail here
    return _convert(input_dir, out_dir, want_dirs=True, fn=_video_task, kwargs=kwargs,
                    params={"kind": "video", "video_kwargs": kwargs}, workers=workers, progress=progress,
                    overwrite=overwrite, unit="clip")


# ------------------------------------------------------------------------------------------------
# ES-ImageNet -> edge-integral image folders (self-pretrain)
# ------------------------------------------------------------------------------------------------

def _write_png(dst: str, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(dst) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _edge_task(task: _Task) -> _Result:
    from PIL import Image

    if _done_before(task):
        try:
            with Image.open(task.dst) as im:
                im.load()
                if im.format == "PNG" and im.mode == "L":
                    return task.index, "reused", im.height, im.width, -1, ""
        except Exception:  # unreadable or foreign: convert again below (the rename replaces it)
            pass
    try:
        sample = read_es_sample(task.src, height=task.height, width=task.width)
        image = edge_integral_image(events_to_dense(sample, dtype=torch.float32, **task.frame))
    except DataError as exc:
        return task.index, "failed", 0, 0, 0, str(exc)
    _write_or_fail(_write_png, task.dst, image)
    return task.index, "converted", image.shape[0], image.shape[1], len(sample.pos) + len(sample.neg), ""


def _source_classes(splits: Mapping[str, list], bases: Mapping[str, Path], n_classes: int) -> list[str] | None:
    """The class names of an ES-ImageNet source whose samples lie in one folder per label
    (``<class>/<sample>.npz`` below the split's folder, as :func:`convert_image_folder_odg` writes
    them, labels from :func:`list_classes`): the folder names, when they sort in label order (an
    image folder's class index is the position in its sorted class names). Else None."""
    names: dict[int, set[str]] = {label: set() for label in range(n_classes)}
    for split, entries in splits.items():
        for e in entries:
            parts = e.path.relative_to(bases[split]).parts
            names[e.label].add(parts[0] if len(parts) == 2 else "")  # "": not in a class folder
    if any(len(found) != 1 for found in names.values()):
        return None  # a label without samples, or in two folders
    classes = [found.pop() for found in names.values()]
    ok = classes == sorted(set(classes)) and all(c and not c.startswith(".") and _storable(c) for c in classes)
    return classes if ok else None  # else: two labels in one folder, another order, or no class folders


def convert_es_to_edge_integral(
    es_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """ES-ImageNet -> grey edge-integral images, an ImageNet-layout folder for the self-pretrained ANN.

    Every sample's dense frames (``[8, 2, 224, 224]``, what the SNN reads) become one 8-bit PNG
    (:func:`~spikebridge.data.odg.edge_integral_image`, arXiv:2203.01158 step 6) at
    ``out_dir/<split>/<class>/<sample stem>.png``, ``<split>`` ``train`` and ``val`` (see
    :func:`~spikebridge.data.events.es_imagenet_splits`), ``<class>`` the source's class folder name
    where its samples lie in one folder per label named in label order (e.g. the output of
    :func:`convert_image_folder_odg`), else the class index zero-padded: either way the folder order
    is the label order; both splits get a folder for every class. The same safety rules as
    :func:`convert_image_folder_odg`: atomic files, resumable, only a new, empty or own
    (``conversion.json``) output folder unless ``overwrite``, no nesting of input and output, and
    unreadable samples reported, not fatal. No label file is written (the folder is an image
    folder: ``spikebridge pretrain --data out_dir``).
    """
    started = time.monotonic()
    es_root, out_dir = Path(es_root), Path(out_dir)
    _check_workers(workers)
    if not es_root.is_dir():
        raise DataError(f"{es_root}: input folder not found")
    layout = es_imagenet_splits(es_root)
    splits = {name: read_label_file(label_file, data_dir=data_dir, check_files=False)
              for name, (label_file, data_dir) in layout.items()}
    _check_folders(es_root, out_dir)
    n_classes = 1 + max((e.label for entries in splits.values() for e in entries), default=-1)
    if n_classes == 0:
        raise DataError(f"{es_root}: its label files list no samples")
    width = max(4, len(str(n_classes - 1)))
    classes = _source_classes(splits, {name: data_dir or label_file.parent for name, (label_file, data_dir)
                                       in layout.items()}, n_classes) or [f"{label:0{width}d}" for label in range(n_classes)]
    report = ConversionReport(out_dir=out_dir, label_file=out_dir / "train", classes=classes)
    reuse = _check_params(out_dir, {"kind": "edge-integral", "grey": [EDGE_GREY_ZERO, EDGE_GREY_STEP],
                                    "classes": classes}, overwrite, es_root)
    report.stale_temp_removed = remove_stale_temps(out_dir, (CONVERSION_FILE,))
    tasks: list[_Task] = []
    for split, entries in splits.items():
        frame = conversion_frame(layout[split][0].parent)  # a `convert odg --size N` output: its window, as read
        taken: set[str] = set()
        for cls in classes:
            report.stale_temp_removed += remove_stale_temps(out_dir / split / cls, ("*.png",))
            ensure_dir(out_dir / split / cls)
        for e in entries:
            rel = f"{split}/{classes[e.label]}/{e.path.stem}.png"
            if rel in taken:  # two samples of a class share a stem: the label-file line tells them apart
                rel = f"{split}/{classes[e.label]}/{e.path.stem}-line{e.line}.png"
            taken.add(rel)
            tasks.append(_Task(index=len(tasks), src=str(e.path), dst=str(out_dir / rel),
                               rel_src=f"{split}/{e.path.name}", rel_dst=rel, label=e.label, reuse=reuse,
                               height=e.height, width=e.width, frame=frame))
    _tally(report, tasks, _edge_task, workers, progress, "sample")
    report.failed.sort()
    report.elapsed_s = time.monotonic() - started
    return report
