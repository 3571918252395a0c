"""VideoStage: the one CPU pass per video. Download it, decode it once (probe, scene cuts, keyframes,
16 kHz audio), cut the COSMO clip mp4s when that format is on, and delete the video file.

Every video gets a fresh work directory under video.tmp_dir (or the system temp), deleted whatever
happens. Local sources are read where they are and never touched.

Deadline: video.deadline_s is a hard limit on the whole stage for one video. Download and decode
each run in a child process (download.run_with_deadline) that is killed, with the ffmpeg processes
it started, when the time is up; checking between steps alone would let one stuck decoder or one
trickling server hold the worker forever. The download's limit is the smaller of download.deadline_s
and what is left of the stage's; the decode gets the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DEADLINE_EXCEEDED,
    DECODE_FAILED,
    DISK_FULL,
    INTERNAL_ERROR,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.base import process_each, resources_from
from cosmo_data.stages.decode import decode_video
from cosmo_data.stages.download import (
    download,
    prepare_children,
    run_with_deadline,
    scrub_paths,
)
from cosmo_data.stages.phash import hash_and_drop_repeats


class VideoStage:
    name = "video"

    def __init__(self, config: BuildConfig):
        self.config = config
        resources = config.video.resources
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size

    def setup(self) -> None:
        # The process that forks each video's children imports yt-dlp and the decoder once, here, and
        # does yt-dlp's first-use work (stages/download_warmup.py).
        prepare_children((__name__, "cosmo_data.stages.download_warmup"))

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_each(batch, self._process_one, stage=self.name, failure_status=INTERNAL_ERROR)

    def _process_one(self, record: VideoRecord) -> None:
        started = time.monotonic()
        tmp_root = self._tmp_root()
        check_free_disk(tmp_root, self.config.video.min_free_disk_gb)
        work_dir = Path(tempfile.mkdtemp(prefix=f"cosmo-{record.video_id}-", dir=tmp_root))
        try:
            self._download_and_decode(record, work_dir, started)
        except VideoFailure as failure:
            raise VideoFailure(
                failure.status, scrub_paths(failure.message, work_dir, record.source), failure.filter_reason
            ) from None
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _download_and_decode(self, record: VideoRecord, work_dir: Path, started: float) -> None:
        config = self.config
        stage_limit_s = config.video.deadline_s

        def left_s() -> float:
            return stage_limit_s - (time.monotonic() - started)

        download_limit_s = min(config.download.deadline_s, left_s())
        with stage_deadline("download", stage_limit_s, binding=download_limit_s < config.download.deadline_s):
            with timed(record, "download"):
                path = download(
                    record,
                    work_dir,
                    config.download,
                    deadline_s=download_limit_s,
                    captions=config.asr.platform_captions != "never",
                    licenses=tuple(config.curation.video.licenses),
                )
        with stage_deadline("decode", stage_limit_s, binding=True):
            if left_s() <= 0:
                raise VideoFailure(DEADLINE_EXCEEDED, "no time left")
            with timed(record, "decode"):
                decoded = run_with_deadline(
                    decode_file,
                    (path, record, config, work_dir),
                    timeout_s=left_s(),
                    step="decode",
                    crash_status=DECODE_FAILED,
                )
                adopt(record, decoded)

    def _tmp_root(self) -> Path:
        if self.config.video.tmp_dir is None:
            return Path(tempfile.gettempdir())
        root = Path(self.config.video.tmp_dir)
        root.mkdir(parents=True, exist_ok=True)
        return root


@contextmanager
def stage_deadline(step: str, stage_limit_s: float, *, binding: bool) -> Iterator[None]:
    """Word a deadline failure as the stage's own when the stage's limit was the one that ran out."""
    try:
        yield
    except VideoFailure as failure:
        if failure.status != DEADLINE_EXCEEDED or not binding:
            raise
        message = f"video stage did not finish within its deadline of {stage_limit_s:g} s (stopped during {step})"
        raise VideoFailure(DEADLINE_EXCEEDED, message) from None


def decode_file(path: Path, record: VideoRecord, config: BuildConfig, work_dir: Path) -> VideoRecord:
    """Runs in the child process: the one decode pass (with the cosmo video if that format is on)."""
    # Scratch files go to the work dir, which the parent deletes even when this process is killed.
    tempfile.tempdir = str(work_dir)
    cosmo_video = work_dir / "cosmo.mp4" if "cosmo" in config.output.formats else None
    record.content_hash = file_sha256(path)
    decode_video(path, record, config, cosmo_video)
    hash_and_drop_repeats(record, config.keyframes.repeat_max_distance)
    if record.cosmo_video is not None:
        # Clips without a whole second of their own cannot be named in the cosmo layout.
        record.count("cosmo_unnamed_clip", len(record.clips) - len(record.cosmo_video.spans))
    return record


def file_sha256(path: Path) -> str:
    """The file's bytes' sha256 (exact duplicates under other source ids): ~0.5 s a GB, read from the
    page cache right after the download."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_free_disk(directory: Path, min_free_gb: float) -> None:
    free_gb = shutil.disk_usage(directory).free / 1e9
    if free_gb < min_free_gb:
        limit = f"video.min_free_disk_gb = {min_free_gb:g}"
        message = f"only {free_gb:.2f} GB free for temporary video files, below {limit}"
        raise VideoFailure(DISK_FULL, message)


def adopt(record: VideoRecord, updated: VideoRecord) -> None:
    """Copy what the child process filled in back onto the record the pipeline holds."""
    for field in fields(record):
        setattr(record, field.name, getattr(updated, field.name))


@contextmanager
def timed(record: VideoRecord, step: str) -> Iterator[None]:
    """Add the seconds spent in the block to record.timings[step], also when it fails."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record.timings[step] = record.timings.get(step, 0.0) + time.perf_counter() - started
