"""The failure classifier on yt-dlp's own error texts: raised by yt-dlp's own code where it has a function
for them (DRM, geo restriction, an unexpected extractor error), composed as yt-dlp's YouTube extractor
composes YouTube's playability reasons (yt_dlp/extractor/youtube/_video.py), and the reasons its own
tests skip videos for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yt_dlp
from yt_dlp.extractor.youtube import YoutubeIE
from yt_dlp.networking.common import Response
from yt_dlp.networking.exceptions import HTTPError
from yt_dlp.utils import DownloadError, ExtractorError

from cosmo_data.schemas.records import (
    AGE_RESTRICTED,
    BOT_CHECK,
    DOWNLOAD_FAILED,
    DRM_PROTECTED,
    EXTRACTOR_BROKEN,
    FAILURES,
    GEO_BLOCKED,
    LIVE_OR_UPCOMING,
    MEDIA_FORBIDDEN,
    MEMBERS_ONLY,
    PRIVATE_VIDEO,
    RATE_LIMITED,
    RETRYABLE,
    VIDEO_UNAVAILABLE,
)
from cosmo_data.stages.download_failures import classify, ytdlp_message


@pytest.fixture(scope="module")
def youtube() -> YoutubeIE:
    return YoutubeIE(yt_dlp.YoutubeDL({"quiet": True}))


def as_download_error(raise_it) -> DownloadError:
    """The error as YoutubeDL hands it to the download: a DownloadError with 'ERROR: [youtube] ...'."""
    try:
        raise_it()
    except ExtractorError as error:
        return DownloadError(f"ERROR: [youtube] dQw4w9WgXcQ: {error.msg}", exc_info=(type(error), error, None))
    raise AssertionError("nothing raised")


def kind(error: BaseException) -> str:
    return classify(error, ytdlp_message(error))


def playability(youtube: YoutubeIE, reason: str) -> DownloadError:
    """A reason as _video.py turns YouTube's playability status into an error (its 'sign in' and
    'try again later' branches)."""
    if "sign in" in reason.lower():
        reason = f"{reason.strip().removesuffix('.')}. {youtube._youtube_login_hint}"
    elif "This content isn't available, try again later" in reason:
        reason = (
            f"{reason.strip().removesuffix('.')}. The current session has been rate-limited by YouTube for up to an "
            "hour. It is recommended to use `-t sleep` to add a delay between video requests to avoid exceeding the "
            "rate limit."
        )
    return as_download_error(lambda: youtube.raise_no_formats(reason, expected=True))


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("Sign in to confirm you\u2019re not a bot. This helps protect our community. Learn more", BOT_CHECK),
        ("Sign in to confirm you're not a bot", BOT_CHECK),
        ("This content isn't available, try again later.", RATE_LIMITED),
        ("Sign in to confirm your age. This video may be inappropriate for some users.", AGE_RESTRICTED),
        ("Private video. Sign in if you've been granted access to this video", PRIVATE_VIDEO),
        (
            "Join this channel to get access to members-only content like this video, and other exclusive perks.",
            MEMBERS_ONLY,
        ),
        ("Video unavailable. This video has been removed by the uploader", VIDEO_UNAVAILABLE),
        (
            "This video is no longer available because the YouTube account associated with this video has been terminated.",
            VIDEO_UNAVAILABLE,
        ),
        ("This live event will begin in 3 hours.", LIVE_OR_UPCOMING),
        ("Premieres in 2 days", LIVE_OR_UPCOMING),
    ],
)
def test_youtube_playability_reasons(youtube, reason, status):
    assert kind(playability(youtube, reason)) == status


def test_ytdlp_raises_drm_and_geo_restriction_in_its_own_words(youtube):
    assert kind(as_download_error(lambda: youtube.report_drm("dQw4w9WgXcQ"))) == DRM_PROTECTED
    assert kind(as_download_error(lambda: youtube.raise_geo_restricted(countries=["US"]))) == GEO_BLOCKED


def test_an_unexpected_extractor_error_is_a_broken_extractor():
    # yt-dlp appends its bug-report request to errors it did not expect: a site change.
    error = as_download_error(lambda: (_ for _ in ()).throw(ExtractorError("Unable to extract yt initial data")))

    assert "please report this issue" in ytdlp_message(error)
    assert kind(error) == EXTRACTOR_BROKEN
    assert kind(DownloadError("ERROR: [youtube] x: n challenge solving failed: Some formats may be missing.")) == (
        EXTRACTOR_BROKEN
    )


def http_error(status: int) -> DownloadError:
    response = Response(fp=None, url="https://rr1.googlevideo.com/videoplayback", headers={}, status=status)
    cause = HTTPError(response)
    error = DownloadError(f"ERROR: unable to download video data: {cause}", exc_info=(HTTPError, cause, None))
    error.__cause__ = cause
    return error


def test_http_statuses_on_the_media():
    assert (kind(http_error(403)), kind(http_error(429)), kind(http_error(404))) == (
        MEDIA_FORBIDDEN,
        RATE_LIMITED,
        VIDEO_UNAVAILABLE,
    )


def test_the_videos_yt_dlps_own_tests_skip_are_classified_by_their_reasons():
    source = Path(yt_dlp.__file__).parent / "extractor" / "youtube" / "_video.py"
    skips = set(re.findall(r"'skip': '((?:[^'\\]|\\.)*)'", source.read_text(encoding="utf-8")))
    expected = {
        "Private video": PRIVATE_VIDEO,
        "Video unavailable": VIDEO_UNAVAILABLE,
        "This video does not exist.": VIDEO_UNAVAILABLE,
        "This video is not available.": VIDEO_UNAVAILABLE,
        "This video has been removed for violating YouTube\\'s policy on hate speech.": VIDEO_UNAVAILABLE,
    }
    assert set(expected) <= skips  # still yt-dlp's words
    for reason, status in expected.items():
        assert kind(DownloadError(f"ERROR: [youtube] dQw4w9WgXcQ: {reason}")) == status, reason


def test_each_kind_has_its_retry_policy():
    assert {BOT_CHECK, RATE_LIMITED, MEDIA_FORBIDDEN, EXTRACTOR_BROKEN, LIVE_OR_UPCOMING} <= RETRYABLE
    assert not {VIDEO_UNAVAILABLE, PRIVATE_VIDEO, MEMBERS_ONLY, DRM_PROTECTED, AGE_RESTRICTED, GEO_BLOCKED} & RETRYABLE
    assert RETRYABLE <= FAILURES
    assert kind(DownloadError("ERROR: something nobody has seen")) == DOWNLOAD_FAILED
