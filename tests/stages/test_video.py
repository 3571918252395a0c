"""VideoStage end to end on real files: local and loopback-HTTP sources, good and broken, with the
real downloader and decoder; the work directory must be empty afterwards whatever happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosmo_data.pipeline.sources import classify
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DEADLINE_EXCEEDED,
    DECODE_FAILED,
    DISK_FULL,
    DOWNLOAD_FAILED,
    INVALID_SOURCE,
    NO_VIDEO_STREAM,
    OK,
    VIDEO_UNAVAILABLE,
    VideoRecord,
)
from cosmo_data.stages.video import VideoStage

pytestmark = pytest.mark.usefixtures("fast_children")

AUDIO_BYTES_PER_S = 16000 * 2  # 16 kHz mono s16le


def stage_config(work_dir: Path, **sections) -> BuildConfig:
    data = {
        "download": {"retries": 0, "backoff_s": 0.05, "socket_timeout_s": 5.0, "deadline_s": 120.0},
        "video": {"tmp_dir": str(work_dir), "min_free_disk_gb": 0.0},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return BuildConfig.model_validate(data)


def record_for(source: str, index: int = 0) -> VideoRecord:
    row = classify(source, index)
    record = VideoRecord(row.video_id, row.source, index, source_kind=row.kind, locator=row.locator)
    if row.error:
        record.fail(INVALID_SOURCE, row.error)
    return record


def assert_decoded(record: VideoRecord) -> None:
    assert record.status == OK, record.error
    assert record.duration_s == pytest.approx(3.0, abs=0.2)
    assert (record.width, record.height, record.has_audio) == (160, 120, True)
    assert record.clips and record.frames
    assert all(frame.jpeg.startswith(b"\xff\xd8") for frame in record.frames)
    assert abs(len(record.audio_pcm) - record.duration_s * AUDIO_BYTES_PER_S) < 0.1 * AUDIO_BYTES_PER_S
    cosmo = record.cosmo_video
    assert cosmo.mp4[4:8] == b"ftyp" and set(cosmo.spans) <= {clip.clip_idx for clip in record.clips}
    assert {"download", "decode", "video"} <= set(record.timings)


def assert_no_work_dir_in(record: VideoRecord, work_dir: Path) -> None:
    assert str(work_dir) not in record.error
    assert "cosmo-" + record.video_id not in record.error


def test_batch_of_good_and_broken_sources(http_server, media_dir, tmp_path):
    work_dir = tmp_path / "work"
    local = media_dir / "clip.mp4"
    local_before = (local.read_bytes(), local.stat().st_mtime_ns)
    batch = [
        record_for(str(local), 0),
        record_for(http_server.url("files/clip.mp4"), 1),
        record_for(http_server.url("files/garbage.mp4"), 2),
        record_for(http_server.url("missing.mp4"), 3),
        record_for(str(media_dir / "tone.m4a"), 4),
        record_for(str(tmp_path / "gone.mp4"), 5),
        record_for("rm -rf /; echo", 6),
    ]
    stage = VideoStage(stage_config(work_dir))
    stage.setup()

    out = stage.process(batch)

    assert out is batch
    good_local, good_url, garbage, missing, audio_only, gone, invalid = out
    assert_decoded(good_local)
    assert_decoded(good_url)
    assert garbage.status == DECODE_FAILED
    assert "moov atom not found" in garbage.error
    assert missing.status == VIDEO_UNAVAILABLE
    assert "HTTP Error 404: Not Found" in missing.error
    assert audio_only.status == NO_VIDEO_STREAM
    assert (gone.status, gone.error) == (DOWNLOAD_FAILED, f"local file not found: {gone.source}")
    for failed in (garbage, missing, audio_only, gone):
        assert failed.audio_pcm is None and failed.cosmo_video is None
        assert_no_work_dir_in(failed, work_dir)
    # Already failed by the builder: passed on untouched.
    assert invalid.status == INVALID_SOURCE and invalid.timings == {}
    assert os.listdir(work_dir) == []
    assert (local.read_bytes(), local.stat().st_mtime_ns) == local_before


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("download_deadline_s", "stage_deadline_s", "message"),
    [
        (2.0, 600.0, "download did not finish within its deadline of 2 s"),
        (600.0, 2.0, "video stage did not finish within its deadline of 2 s (stopped during download)"),
    ],
)
def test_trickling_source_hits_the_tighter_deadline_and_leaves_nothing(
    http_server, tmp_path, download_deadline_s, stage_deadline_s, message
):
    work_dir = tmp_path / "work"
    config = stage_config(
        work_dir, download={"deadline_s": download_deadline_s}, video={"deadline_s": stage_deadline_s}
    )
    record = record_for(http_server.url("trickle.mp4"))

    VideoStage(config).process([record])

    assert (record.status, record.error) == (DEADLINE_EXCEEDED, message)
    assert record.timings["download"] >= 2.0
    assert os.listdir(work_dir) == []


def test_too_little_free_disk_fails_before_any_work(media_dir, tmp_path):
    work_dir = tmp_path / "work"
    record = record_for(str(media_dir / "clip.mp4"))

    VideoStage(stage_config(work_dir, video={"min_free_disk_gb": 1e9})).process([record])

    assert record.status == DISK_FULL
    assert record.error.startswith("only ") and record.error.endswith("below video.min_free_disk_gb = 1e+09")
    assert os.listdir(work_dir) == []


def test_the_cosmo_video_is_made_only_for_the_cosmo_format(media_dir, tmp_path):
    record = record_for(str(media_dir / "clip.mp4"))

    VideoStage(stage_config(tmp_path / "work", output={"formats": ["native", "mmc4"]})).process([record])

    assert record.status == OK and record.frames
    assert record.cosmo_video is None


def test_stage_takes_name_resources_and_batch_size_from_config(tmp_path):
    config = stage_config(tmp_path, video={"resources": {"cpus": 2, "concurrency": 3, "batch_size": 4}})

    stage = VideoStage(config)

    assert stage.name == "video"
    assert (stage.resources.cpus, stage.resources.gpus, stage.resources.concurrency) == (2, 0, 3)
    assert stage.batch_size == 4


WARMED_CHILDREN = """
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import INTERNAL_ERROR
from cosmo_data.stages.download import run_with_deadline
from cosmo_data.stages.video import VideoStage


def uncompiled_url_patterns():
    from yt_dlp.extractor import gen_extractor_classes

    return [ie.__name__ for ie in gen_extractor_classes() if ie._VALID_URL and "_VALID_URL_RE" not in ie.__dict__]


if __name__ == "__main__":
    VideoStage(BuildConfig()).setup()
    print(len(run_with_deadline(uncompiled_url_patterns, (), timeout_s=60, step="probe", crash_status=INTERNAL_ERROR)))
"""


def test_setup_hands_each_download_child_yt_dlps_url_patterns_compiled(tmp_path):
    """setup() starts the forkserver with the warm-up done (stages/download_warmup.py), so a download
    child does not compile the ~1,750 patterns a direct link meets: 0.4-0.5 CPU-s a video."""
    script = tmp_path / "warmed.py"
    script.write_text(WARMED_CHILDREN)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]
