"""64-bit perceptual hashes of keyframes and the repeats they reveal within a video (repeated slides).

The hash is the DCT pHash that MMC4 deduplicates images with (imagehash.phash, hash_size 8): the
image in grey at 32x32, its 2-D DCT, and one bit per coefficient of the lowest 8x8 frequencies, set
where it is above their median. Near-identical pictures (re-encoded, slightly shifted, the same slide
shown again) differ in a few bits; MMC4 drops an image within Hamming distance 5 of one it kept.
The keyframes are JPEGs already; libjpeg decodes them at a quarter of their size, which is plenty for
32x32.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from cosmo_data.schemas.records import Frame, VideoRecord

HASH_SIDE = 8
DCT_SIDE = 32


@cache
def _dct_matrix(n: int) -> np.ndarray:
    """DCT-II as a matrix (unscaled: only the coefficients' order against their median matters)."""
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * k * (2 * x + 1) / (2 * n))


def phash_grey(grey: np.ndarray) -> int:
    """The 64-bit pHash of a grey image (any size) as a signed int64, as Parquet stores it."""
    small = cv2.resize(grey.astype(np.float32), (DCT_SIDE, DCT_SIDE), interpolation=cv2.INTER_AREA)
    dct = _dct_matrix(DCT_SIDE)
    low = (dct @ small @ dct.T)[:HASH_SIDE, :HASH_SIDE]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">i8")[0])


def phash_jpeg(jpeg: bytes) -> int:
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if grey is None:
        raise ValueError("not a decodable JPEG")
    return phash_grey(grey)


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).count("1")


def repeats(hashes: list[int], max_distance: int) -> list[int]:
    """Positions whose hash is within max_distance of an earlier one kept: the later copies go."""
    kept: list[int] = []
    repeated = []
    for position, value in enumerate(hashes):
        if any(hamming(value, other) <= max_distance for other in kept):
            repeated.append(position)
        else:
            kept.append(value)
    return repeated


def hash_and_drop_repeats(record: VideoRecord, max_distance: int | None) -> None:
    """Give every keyframe its pHash and, unless max_distance is None, drop the keyframes that repeat an
    earlier one of the video (counted as dropped_repeated_keyframe) before any model sees them; the
    ones left are numbered 0..n-1 again, in time order."""
    for frame in record.frames:
        frame.phash = phash_jpeg(frame.jpeg)
    if max_distance is None:
        return
    repeated = set(repeats([frame.phash for frame in record.frames], max_distance))
    if not repeated:
        return
    record.count("repeated_keyframe", len(repeated))
    kept: list[Frame] = [frame for position, frame in enumerate(record.frames) if position not in repeated]
    for number, frame in enumerate(kept):
        frame.frame_idx = number
    record.frames = kept
