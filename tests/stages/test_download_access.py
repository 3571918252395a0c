"""Downloads as a real YouTube build makes them, against loopback stand-ins (tests/youtube_servers.py):
through a proxy with a password, with a cookie the site insists on, captions from the page's track,
an identity that sleeps through a rate limit. The secrets never reach what the download returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from youtube_servers import CAPTION_LINES, DESCRIPTION, TITLE, CountingProxy, VideoSite, cookies_file, serving

from cosmo_data.pipeline.sources import classify
from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.schemas.records import FILTERED, RATE_LIMITED, RETRYABLE, VideoFailure, VideoRecord
from cosmo_data.stages.captions import PLATFORM_MANUAL
from cosmo_data.stages.download import download

pytestmark = pytest.mark.usefixtures("fast_children")

COOKIE = ("SID", "cookie-secret-7f3a9c")
PROXY_PASSWORD = "proxy-pass-5e1b"


def record_for(url: str) -> VideoRecord:
    row = classify(url, 0)
    return VideoRecord(row.video_id, row.source, 0, source_kind=row.kind, locator=row.locator)


def site_config(tmp_path: Path, **overrides) -> DownloadConfig:
    settings = {"retries": 0, "backoff_s": 0.01, "socket_timeout_s": 5.0, "deadline_s": 60.0}
    return DownloadConfig(**{**settings, **overrides})


@pytest.fixture(autouse=True)
def own_identities(tmp_path, monkeypatch):
    """Identity state of this test only (a real build shares it across the node's workers and runs)."""
    monkeypatch.setattr("cosmo_data.stages.download.WORKER_STATE_DIR", tmp_path / "identities")


@pytest.fixture
def site(media_dir):
    with serving(VideoSite(media_dir)) as server:
        yield server


def test_video_comes_through_the_proxy_with_the_cookie_with_metadata_and_caption_track(site, tmp_path):
    site.cookie = COOKIE
    with serving(CountingProxy("builder", PROXY_PASSWORD)) as proxy:
        cfg = site_config(
            tmp_path, cookies_file=str(cookies_file(tmp_path / "cookies.txt", *COOKIE)), proxies=[proxy.url]
        )
        record = record_for(site.url("watch/clip.mp4"))

        path = download(record, tmp_path / "work", cfg)

    assert path.read_bytes() == (site.root / "clip.mp4").read_bytes()
    # Page, media and caption track: every request reached the origin through the proxy, with the cookie.
    assert {v.path for v in site.visits} == {"/watch/clip.mp4", "/media/clip.mp4", "/captions/clip.vtt"}
    assert all(v.via_proxy and f"{COOKIE[0]}={COOKIE[1]}" in v.cookie for v in site.visits)
    assert len(proxy.forwarded) == len(site.visits) and proxy.refused == 0
    # The generic extractor numbers a page's <video> elements: "<title> (1)".
    assert record.platform["title"].startswith(TITLE) and record.platform["description"] == DESCRIPTION
    # The rolling cues' repeated lines are kept once.
    assert record.text_source == PLATFORM_MANUAL and record.language == "en"
    assert [s.text for s in record.transcript] == CAPTION_LINES
    assert [(s.start_s, s.end_s) for s in record.transcript] == [(0.0, 1.0), (1.0, 2.0), (2.01, 3.0)]
    written = json.dumps([record.info_json, record.platform, record.error])
    assert COOKIE[1] not in written and PROXY_PASSWORD not in written


def test_without_the_cookie_the_site_refuses_and_no_secret_is_in_the_error(site, tmp_path):
    site.cookie = COOKIE
    with serving(CountingProxy("builder", PROXY_PASSWORD)) as proxy:
        cfg = site_config(tmp_path, proxies=[proxy.url])
        with pytest.raises(VideoFailure) as caught:
            download(record_for(site.url("watch/clip.mp4")), tmp_path / "work", cfg)

    assert "HTTP Error 403" in caught.value.message
    assert PROXY_PASSWORD not in caught.value.message and "builder" not in caught.value.message


def test_a_rate_limited_identity_sleeps_and_the_video_waits_instead_of_failing(site, tmp_path, capfd):
    site.block_watch = 2
    cfg = site_config(tmp_path, identity_sleep_s=0.2, identity_max_sleep_s=1.0, identity_give_up_s=30)
    record = record_for(site.url("watch/clip.mp4"))

    path = download(record, tmp_path / "work", cfg)

    assert path.is_file()
    assert record.counters["identity_strikes"] == 2
    # Slept 0.2 s, then 0.4 s (growing): the video waited at least that long for its identity.
    assert record.timings["identity_wait"] >= 0.6 - 0.05
    assert [v.path for v in site.visits][:3] == ["/watch/clip.mp4"] * 3
    assert "every identity sleeps" in capfd.readouterr().err


def test_an_identity_that_stays_blocked_gives_up_as_a_retryable_failure(site, tmp_path):
    site.block_watch = 100
    cfg = site_config(tmp_path, identity_sleep_s=0.1, identity_max_sleep_s=0.1, identity_give_up_s=0.3)

    with pytest.raises(VideoFailure) as caught:
        download(record_for(site.url("watch/clip.mp4")), tmp_path / "work", cfg)

    assert caught.value.status == RATE_LIMITED and caught.value.status in RETRYABLE
    assert "gave up waiting" in caught.value.message


def test_licence_rule_filters_before_the_media_is_requested(site, tmp_path):
    cfg = site_config(tmp_path)

    with pytest.raises(VideoFailure) as caught:
        download(record_for(site.url("watch/clip.mp4")), tmp_path / "work", cfg, licenses=("Creative Commons",))

    assert (caught.value.status, caught.value.filter_reason) == (FILTERED, "video_licenses")
    assert [v.path for v in site.visits] == ["/watch/clip.mp4"]


def test_captions_never_fetches_no_track(site, tmp_path):
    record = record_for(site.url("watch/clip.mp4"))

    download(record, tmp_path / "work", site_config(tmp_path), captions=False)

    assert record.transcript == [] and record.text_source is None
    assert "/captions/clip.vtt" not in [v.path for v in site.visits]
