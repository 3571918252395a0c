"""Fixtures for the download and video stage tests: tiny real media, served over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import LoopbackServer, serve_directory
from odd_media import make_audio_only

from cosmo_data.pipeline.generated_media import (
    CUT,
    make_sample_video,
    run_ffmpeg,
)
from cosmo_data.stages.download import prepare_children


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """clip.mp4 (two 1.5 s shots, 160x120, 10 fps, with audio), an HLS stream with 240p and 120p
    renditions sharing one audio rendition (master.m3u8), tone.m4a (no video stream) and
    garbage.mp4 (not a video at all)."""
    directory = tmp_path_factory.mktemp("media")
    make_sample_video(directory / "clip.mp4", segments=[1.5, 1.5], transitions=[CUT], size=(160, 120), fps=10)
    make_audio_only(directory / "tone.m4a", duration_s=1.0)
    (directory / "garbage.mp4").write_bytes(b"this is not a video " * 2000)
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "2",
            "-filter_complex",
            "[0:v]split=2[tall][small];[small]scale=160:120[short]",
            "-map",
            "[tall]",
            "-map",
            "[short]",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_playlist_type",
            "vod",
            "-var_stream_map",
            "v:0,agroup:aud v:1,agroup:aud a:0,agroup:aud",
            "-master_pl_name",
            "master.m3u8",
            "-hls_segment_filename",
            str(directory / "v%v_%03d.ts"),
            str(directory / "v%v.m3u8"),
        ]
    )
    return directory


@pytest.fixture
def http_server(media_dir) -> Iterator[LoopbackServer]:
    with serve_directory(media_dir) as server:
        yield server


@pytest.fixture(scope="session")
def fast_children() -> None:
    """Start the process that forks deadline children with yt-dlp and the decoder already imported."""
    prepare_children(("cosmo_data.stages.video",))
