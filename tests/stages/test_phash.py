"""Keyframe pHashes: robust to re-encoding, apart for other pictures, and a slide shown again is dropped
from its video before the models see it (the real decode pass on a generated A | B | A video)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cosmo_data.pipeline.generated_media import run_ffmpeg
from cosmo_data.pipeline.sources import classify
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import OK, VideoRecord
from cosmo_data.stages.phash import hamming, phash_jpeg, repeats
from cosmo_data.stages.video import VideoStage

pytestmark = pytest.mark.usefixtures("fast_children")


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def slide(seed: int) -> np.ndarray:
    """A 'slide': a light page with dark blocks of text-like noise."""
    rng = np.random.default_rng(seed)
    image = np.full((216, 384, 3), 235, np.uint8)
    for _ in range(12):
        x, y = rng.integers(10, 300), rng.integers(10, 180)
        image[y : y + 14, x : x + rng.integers(30, 80)] = rng.integers(0, 90)
    return image


def test_phash_survives_reencoding_and_tells_slides_apart():
    first = slide(1)
    again = cv2.resize(cv2.resize(first, (300, 170)), (384, 216))  # rescaled and re-encoded
    assert hamming(phash_jpeg(jpeg(first)), phash_jpeg(jpeg(again, quality=30))) <= 5
    others = [phash_jpeg(jpeg(slide(seed))) for seed in range(2, 8)]
    assert min(hamming(phash_jpeg(jpeg(first)), other) for other in others) > 12
    assert -(2**63) <= phash_jpeg(jpeg(first)) < 2**63  # fits Parquet's int64


def test_repeats_are_later_copies_of_a_kept_hash():
    assert repeats([0b0, 0b1, 0xFF, 0b11, 0b111], max_distance=1) == [1, 4]
    assert repeats([0b0, 0b11111, 0b111111], max_distance=5) == [1]  # 5 bits apart is a repeat, 6 is not
    assert repeats([-1, 2**63 - 1], max_distance=1) == [1]  # signed int64s: the sign bit is one bit


def make_slides_video(path: Path) -> Path:
    """1.5 s of slide A, 1.5 s of moving test pattern, 1.5 s of slide A again (hard cuts), 160x120."""
    first = path.parent / "slide_a.png"
    cv2.imwrite(str(first), cv2.resize(slide(1), (160, 120)))
    still = ["-loop", "1", "-framerate", "10", "-t", "1.5", "-i", str(first)]
    pattern = ["-f", "lavfi", "-t", "1.5", "-i", "testsrc2=size=160x120:rate=10"]
    graph = "[0:v]format=yuv420p[a];[1:v]format=yuv420p[b];[2:v]format=yuv420p[c];[a][b][c]concat=n=3:v=1[v]"
    run_ffmpeg(
        [*still, *pattern, *still, "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast"]
        + ["-g", "10", str(path)]
    )
    return path


@pytest.mark.parametrize("max_distance", [5, None])
def test_a_slide_shown_again_is_dropped_and_counted(tmp_path, max_distance):
    video = make_slides_video(tmp_path / "slides.mp4")
    row = classify(str(video), 0)
    record = VideoRecord(row.video_id, row.source, 0, source_kind=row.kind, locator=row.locator)
    config = BuildConfig.model_validate(
        {
            "video": {"tmp_dir": str(tmp_path / "work"), "min_free_disk_gb": 0, "audio": False},
            "keyframes": {"per_clip": 1, "size": 160, "repeat_max_distance": max_distance},
            "output": {"formats": ["native"]},
        }
    )
    stage = VideoStage(config)
    stage.setup()
    [record] = stage.process([record])
    assert record.status == OK, record.error
    assert len(record.clips) == 3
    hashes = [frame.phash for frame in record.frames]
    assert all(isinstance(value, int) for value in hashes)
    if max_distance is None:
        assert len(record.frames) == 3 and "dropped_repeated_keyframe" not in record.counters
        assert hamming(hashes[0], hashes[2]) <= 5 < hamming(hashes[0], hashes[1])
    else:
        assert record.counters["dropped_repeated_keyframe"] == 1
        assert [(f.clip_idx, f.frame_idx) for f in record.frames] == [(0, 0), (1, 1)]
