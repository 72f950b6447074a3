"""The source images at hand: each file read once for its content hash and a small grey thumbnail.

"The same picture" is decided on pixels, not on backbone features: two images are the same picture
(resized or re-encoded) when their 16×16 grey thumbnails (exact area averages, so JPEG noise
averages out and a whole-factor resize changes nothing) differ by at most ``SAME_PICTURE_LEVELS``
grey levels on average over the pixels where either image has content (``content_difference``):
over the whole thumbnail, the blank background of sparse images (handwriting) hid the strokes that
differ. Measured here (issue 28): re-encoded photos (JPEG quality 60, 90 % size) differ from their
originals by at most 0.4 level; the closest two different photos of the 2,000 by 18.2 (dog.180 and
dog.74 are one photo twice: 1.5); the closest two different 8×8 digit scans by 9.7 (4.0 over the
whole thumbnail); the same 1,797 scans drawn as MNIST does (white ink on a blank 28×28 canvas) by
6.7 (1.1 over the whole: 99 "copies"), and their 2× bilinear or downscaled Lanczos copies by
1.7–3.3. A lossy copy of a scan that small differs by 4–5 (the codec's noise is as large as the
difference between two scans at that size), so such a copy is out of reach; a lossless one (byte
copy, PNG resized) is found.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np

#: Side of the grey thumbnails compared (smaller images are box-upscaled to it, which keeps their pixels).
THUMB_SIDE = 16
#: Mean absolute difference of two thumbnails (0–255 grey levels, where either has content) up to
#: which they are the same picture.
SAME_PICTURE_LEVELS = 4.0
#: How far (grey levels) a thumbnail pixel lies from its image's background (its median) to count as content.
CONTENT_LEVELS = 12.0


@dataclass
class Pictures:
    """What one pass over the source files learned.

    Attributes:
        hashes: sha256 hex of each file, None where it cannot be read.
        thumbnails: float32 (N, THUMB_SIDE²) grey 0–255, or None when not asked for; a NaN row
            where the file cannot be read or decoded.
        missing: files that could not be read.
        undecodable: files read but not decoded (only counted when thumbnails are asked for).
    """

    hashes: list[str | None]
    thumbnails: np.ndarray | None
    missing: int
    undecodable: int = 0

    def pixel_difference(self, a: int, b: int) -> float | None:
        """Mean absolute thumbnail difference of rows ``a`` and ``b`` where either has content
        (``content_difference``); None when either is unreadable."""
        if self.thumbnails is None:
            return None
        diff = content_difference(self.thumbnails[a], self.thumbnails[b])
        return None if np.isnan(diff) else diff


def content_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails over the pixels where either image has content.

    A pixel holds content when it lies more than ``CONTENT_LEVELS`` from its image's background
    (the median of the thumbnail). Over the whole thumbnail, two different handwritten 1s differ
    by 2-3 levels because most of each image is blank; over the pixels either one inks they differ
    by tens. A photo is content almost everywhere, so its measure is what it was. Two blank images
    (no content at all) are compared over every pixel.

    Args:
        a, b: float32 (THUMB_SIDE²,) grey 0–255 (NaN: unreadable, giving NaN).

    Returns:
        The mean absolute difference in grey levels.
    """
    diff = np.abs(a - b)
    content = (np.abs(a - np.median(a)) > CONTENT_LEVELS) | (np.abs(b - np.median(b)) > CONTENT_LEVELS)
    return float(diff[content].mean() if content.any() else diff.mean())


def read_pictures(root: str, keys: list[str], *, thumbnails: bool) -> Pictures:
    """Reads every file ``root/key`` once: its sha256 and, if asked, its grey thumbnail.

    Args:
        root: the folder the keys are relative to.
        keys: N source keys.
        thumbnails: decode the files too (the pixel checks need it; the byte check does not).

    Returns:
        Pictures aligned with ``keys``.
    """
    hashes: list[str | None] = []
    thumbs = np.full((len(keys), THUMB_SIDE * THUMB_SIDE), np.nan, np.float32) if thumbnails else None
    missing = undecodable = 0
    for i, key in enumerate(keys):
        try:
            with open(os.path.join(root, key), "rb") as f:
                data = f.read()
        except OSError:
            hashes.append(None)
            missing += 1
            continue
        hashes.append(hashlib.sha256(data).hexdigest())
        if thumbs is not None:
            thumb = _thumbnail(data)
            if thumb is None:
                undecodable += 1
            else:
                thumbs[i] = thumb
    return Pictures(hashes, thumbs, missing, undecodable)


def _thumbnail(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            # A JPEG decodes straight at a reduced scale (DCT scaling), so large photos cost little;
            # but no lower than 8× the thumbnail: at 2× the planted re-encoded photos (another
            # size, so another DCT scale) differed by 2.7–4.5 levels, at 8× by 0.5–1.0 as decoded whole.
            img.draft("L", (THUMB_SIDE * 8, THUMB_SIDE * 8))
            grey = np.asarray(img.convert("L"), dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (_area_weights(grey.shape[0]) @ grey @ _area_weights(grey.shape[1]).T).ravel()


def _area_weights(n: int) -> np.ndarray:
    """float32 (THUMB_SIDE, n): each thumbnail cell the exact area average of the pixels it covers.

    Pillow's BOX filter is not one at other than whole factors (a 28-pixel digit and its 2× copy
    came out 35 levels apart at a stroke's edge); exact areas make any whole-factor copy identical,
    and an image smaller than the thumbnail is blown up with its pixels kept.
    """
    edges = np.linspace(0.0, n, THUMB_SIDE + 1)
    pixel = np.arange(n)
    weights = np.clip(np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel), 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def same_picture_pairs(pictures: Pictures, k: int, *, levels: float = SAME_PICTURE_LEVELS) -> list[tuple[int, int, float]]:
    """Pairs whose thumbnails match, found among each image's ``k`` nearest thumbnails.

    The search is scikit-learn's exact nearest neighbours (Euclidean) over the thumbnails of the
    readable files; each pair found is then judged by its mean absolute difference.

    Returns:
        (a, b, mean absolute difference) with a < b (global row indices), each pair once.
    """
    from sklearn.neighbors import NearestNeighbors

    thumbs = pictures.thumbnails
    if thumbs is None:
        return []
    readable = np.flatnonzero(~np.isnan(thumbs).any(axis=1))
    n = len(readable)
    if n < 2 or k < 1:
        return []
    search = NearestNeighbors(n_neighbors=min(k + 1, n), algorithm="brute").fit(thumbs[readable])
    _, found = search.kneighbors(thumbs[readable])
    pairs: dict[tuple[int, int], float] = {}
    for row, neighbours in zip(readable.tolist(), readable[found].tolist()):
        for other in neighbours:
            key = (min(row, other), max(row, other))
            if other == row or key in pairs:
                continue
            diff = pictures.pixel_difference(row, other)
            if diff is not None and diff <= levels:
                pairs[key] = diff
    return [(a, b, d) for (a, b), d in pairs.items()]
