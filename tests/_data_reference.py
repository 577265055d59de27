"""ODG as arXiv:2203.01158 words it, step by step, with per-event Python loops: the plain reference that
the vectorised :func:`spikebridge.data.odg.odg` is tested against (event for event) and benchmarked
against (``benchmarks/bench_events.py``). Slow; test code only. Deliberately imports nothing from
``odg.py``: its path constant is copied from the paper's text, not from the implementation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# the 9 canvas offsets (row, col) of the paper's (arXiv:2203.01158) ODG section
PAPER_PATH = [(1, 0), (0, 2), (2, 1), (1, 0), (0, 1), (2, 2), (1, 0), (1, 1), (2, 1)]


def odg_reference(rgb_uint8, size=254, threshold=0.18, window=(16, 240), min_events=1000, path=PAPER_PATH):
    """Literal ODG. ``rgb_uint8``: HxWx3 uint8 or HxW uint8 (grey = three equal channels)."""
    arr = np.asarray(rgb_uint8)
    if arr.ndim == 2:
        arr = np.stack([arr, arr, arr], axis=-1)
    # Step 1: scale to [0, 1]; resize so the longer side is `size`; intensity = max over channels.
    rgb = arr.astype(np.float32) / np.float32(255.0)
    a, b = rgb.shape[0], rgb.shape[1]
    if a > b:
        new_h, new_w = size, int(b * size / a)
    else:
        new_h, new_w = int(a * size / b), size
    chw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    resized = F.interpolate(chw, size=(new_h, new_w), mode="nearest")[0].numpy()
    intensity = resized.max(axis=0)
    h, w = intensity.shape
    # Step 2: a canvas 4 pixels larger each way; the image placed at each offset of the path.
    canvases = []
    for (r, c) in path:
        canvas = np.zeros((size + 4, size + 4), dtype=np.float32)
        canvas[r:r + h, c:c + w] = intensity
        canvases.append(canvas)
    # Step 3: for each move, threshold the difference; drop the strips and everything outside the window.
    pos, neg = [], []
    for t in range(1, len(path)):
        r0, c0 = path[t - 1]
        r, c = path[t]
        removed_rows = []
        removed_rows.append((min(r, r0), max(r, r0)))
        removed_rows.append((min(r, r0) + h, max(r, r0) + h))
        removed_cols = []
        removed_cols.append((min(c, c0), max(c, c0)))
        removed_cols.append((min(c, c0) + w, max(c, c0) + w))
        D = canvases[t] - canvases[t - 1]
        for polarity_list, candidates in ((pos, np.argwhere(D > np.float32(threshold))),
                                          (neg, np.argwhere(D < -np.float32(threshold)))):
            for row, col in candidates:
                row, col = int(row), int(col)
                in_strip = False
                for start, stop in removed_rows:
                    if start <= row < stop:
                        in_strip = True
                for start, stop in removed_cols:
                    if start <= col < stop:
                        in_strip = True
                if in_strip:
                    continue
                if not (window[0] < row < window[1] and window[0] < col < window[1]):
                    continue
                polarity_list.append((row, col, t))
    if len(pos) + len(neg) < min_events:
        return None
    pos = np.array(pos, dtype=np.uint8).reshape(-1, 3)
    neg = np.array(neg, dtype=np.uint8).reshape(-1, 3)
    return pos, neg, h, w


def edge_integral_of_sample(sample, path=PAPER_PATH):
    """arXiv:2203.01158 step 6 on an ODG sample's event rows (canvas coordinates): ``sum_t (ON_t -
    OFF_t)`` with the events of move ``t`` shifted by ``-path[t]``, float32 ``[height, width]`` (the
    resized image's frame; events shifted outside it are dropped)."""
    out = np.zeros((sample.height, sample.width), dtype=np.float32)
    for rows, sign in ((sample.pos, 1.0), (sample.neg, -1.0)):
        ev = np.asarray(rows, dtype=np.int64)
        shift = np.asarray(path[1:], dtype=np.int64)[ev[:, 2] - 1]
        r, c = ev[:, 0] - shift[:, 0], ev[:, 1] - shift[:, 1]
        inside = (r >= 0) & (r < sample.height) & (c >= 0) & (c < sample.width)
        np.add.at(out, (r[inside], c[inside]), sign)
    return out
