"""The build's guards: most of a window of downloads failing as extractor_broken stops the build; a
download setting that cannot work stops it before its first video."""

from __future__ import annotations

import pytest

from cosmo_data.pipeline.breaker import Breaker, ExtractorBroken
from cosmo_data.pipeline.build import BuildError, build
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import DOWNLOAD_FAILED, EXTRACTOR_BROKEN, OK, VideoRecord


def finished(status: str, kind: str = "youtube") -> VideoRecord:
    record = VideoRecord("v", "v", 0, source_kind=kind, status=status)
    record.ytdlp_version = "2026.11.23"
    return record


def test_a_window_mostly_broken_says_upgrade_ytdlp():
    breaker = Breaker(window=5, share=0.6)
    for status in (OK, EXTRACTOR_BROKEN, OK, EXTRACTOR_BROKEN):
        breaker.record_done(finished(status))

    with pytest.raises(ExtractorBroken, match=r"3 of the last 5 .*\(yt-dlp 2026.11.23\): upgrade yt-dlp"):
        breaker.record_done(finished(EXTRACTOR_BROKEN))


def test_other_failures_and_local_files_do_not_trip_it():
    breaker = Breaker(window=3, share=0.6)
    for _ in range(5):
        breaker.record_done(finished(DOWNLOAD_FAILED))
        breaker.record_done(finished(EXTRACTOR_BROKEN, kind="local"))
    breaker.record_done(finished(EXTRACTOR_BROKEN))
    assert list(breaker.recent).count(EXTRACTOR_BROKEN) == 1


def test_a_build_with_an_unknown_ytdlp_option_stops_before_its_first_video(tmp_path):
    sources = tmp_path / "sources.txt"
    sources.write_text("dQw4w9WgXcQ\n")
    config = BuildConfig.model_validate({"download": {"ytdlp_options": {"cookiesfrombrowser_typo": "firefox"}}})

    with pytest.raises(BuildError, match="yt-dlp has no option cookiesfrombrowser_typo"):
        build([sources], tmp_path / "out", config)
    assert not (tmp_path / "out" / "videos").exists()
