"""Event conversion speed, per core (one process, one torch thread).

* ODG (image -> ES-ImageNet events): ``spikebridge.data.odg.odg`` against a straightforward
  per-image port of the reference algorithm (``tests/_data_reference.py``, the one the tests
  compare with: nine canvases, ``np.argwhere`` per move and a Python loop over candidate
  events for the strip and window tests). Both convert the same photo-like RGB images (ImageNet's
  typical 375x500, plus portrait and square ones); their outputs are checked equal before timing.
  Images are alternated between the two (A B A B ...) after one warm-up call of each, medians of
  the per-image times.
* Video -> events (ES-UCF101): clips per second for ``frames_to_events`` on 31 in-memory greyscale
  frames of 256x342, and ``clip_to_events`` from a folder of 40 JPEG frames (decoding included).

    python benchmarks/bench_events.py --images 12 --clips 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import environment, set_threads, table, write_results  # noqa: E402
from spikebridge.data.odg import odg  # noqa: E402
from _data_reference import odg_reference  # noqa: E402
from spikebridge.data.video import clip_to_events, frames_to_events  # noqa: E402

def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like RGB image: low-resolution noise upscaled bilinearly plus a little grain."""
    small = rng.integers(0, 256, (max(h // 12, 2), max(w // 12, 2), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).astype(np.int16)
    img = img + rng.integers(-8, 9, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def bench_odg(n_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shapes = [(375, 500), (500, 375), (333, 500), (400, 400)]
    images = [photo(rng, *shapes[i % len(shapes)]) for i in range(n_images)]
    odg(images[0]), odg_reference(images[0])  # a warm-up of each (first calls pay for imports and caches)
    ours_t, ref_t, events = [], [], []
    for image in images:
        start = time.perf_counter()
        sample = odg(image)
        ours_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref = odg_reference(image)
        ref_t.append(time.perf_counter() - start)
        assert (sample is None) == (ref is None), "ODG and the reference disagree on dropping a sample"
        if ref is not None:
            np.testing.assert_array_equal(sample.pos, ref[0])
            np.testing.assert_array_equal(sample.neg, ref[1])
            events.append(sample.n_events)
    ratios = [r / o for o, r in zip(ours_t, ref_t)]
    return {
        "images": n_images,
        "ours_images_per_s": 1 / statistics.median(ours_t),
        "reference_images_per_s": 1 / statistics.median(ref_t),
        "speedup_median": statistics.median(ratios),
        "events_per_image_median": statistics.median(events) if events else 0,
        "outputs_equal": True,
    }


def bench_video(n_clips: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w, n_files = 256, 342, 40
    in_memory, from_disk = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in range(n_clips):
            # a moving smooth pattern, so differences look like a video's
            base = photo(rng, h + 40, w + 40)[..., 0]
            frames = np.stack([base[k:k + h, k:k + w] for k in range(n_files)]).astype(np.float32) / 255.0
            idx = np.rint(np.linspace(0, n_files - 1, 31)).astype(int)
            start = time.perf_counter()
            frames_to_events(frames[idx])
            in_memory.append(time.perf_counter() - start)
            folder = Path(tmp) / f"clip{clip}"
            folder.mkdir()
            for k in range(n_files):
                Image.fromarray((frames[k] * 255).astype(np.uint8)).convert("RGB").save(folder / f"frame{k + 1:06d}.jpg")
            start = time.perf_counter()
            clip_to_events(folder)
            from_disk.append(time.perf_counter() - start)
    return {
        "clips": n_clips,
        "frames_to_events_clips_per_s": 1 / statistics.median(in_memory),
        "clip_to_events_from_jpeg_clips_per_s": 1 / statistics.median(from_disk),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="events")
    args = parser.parse_args(argv)
    set_threads(1)
    env = environment()
    odg_result = bench_odg(args.images, args.seed)
    video_result = bench_video(args.clips, args.seed)
    rows = [
        ["ODG (ours)", f"{odg_result['ours_images_per_s']:.1f} images/s",
         f"**{odg_result['speedup_median']:.1f}x** the reference port"],
        ["ODG (straightforward port)", f"{odg_result['reference_images_per_s']:.2f} images/s", "1.0x"],
        ["video -> events, 31 frames 256x342 in memory", f"{video_result['frames_to_events_clips_per_s']:.1f} clips/s", ""],
        ["video -> events, 40 JPEG frames from disk", f"{video_result['clip_to_events_from_jpeg_clips_per_s']:.1f} clips/s", ""],
    ]
    markdown = f"# Event conversion, one core ({env['cpu']})\n\n" + table(["what", "speed", "vs reference"], rows)
    markdown += (f"\nODG outputs equal to the reference on all {args.images} images "
                 f"(median {odg_result['events_per_image_median']:.0f} events per image).\n")
    markdown += f"\nCommand: `{env['command']}`; load average at start {env['loadavg_at_start']}.\n"
    write_results(args.name, {"environment": env, "odg": odg_result, "video": video_result}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
