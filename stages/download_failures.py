"""What a failed yt-dlp extraction or download means, read from yt-dlp's own words and exception types.

The texts are yt-dlp's (yt_dlp/extractor/youtube/_video.py, extractor/common.py, YoutubeDL.py) or
YouTube's own playability reasons that yt-dlp passes on verbatim. Each kind is a videos.status with its
retry policy (schemas/records.py): the video's own state (removed, private, members-only, DRM) never
changes on retry; a bot check, "try again later" and 429 are the identity's fault (this address or
these cookies), not the video's, so the download waits and tries again (stages/download_pacing.py);
a media 403 is an expired or IP-bound media URL, so the video is extracted again; an extractor that
raises an unexpected error is yt-dlp's bug, fixed by upgrading it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator

from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError
from yt_dlp.utils import ExtractorError, GeoRestrictedError

from cosmo_data.schemas.records import (
    AGE_RESTRICTED,
    BOT_CHECK,
    DISK_FULL,
    DOWNLOAD_FAILED,
    DRM_PROTECTED,
    EXTRACTOR_BROKEN,
    GEO_BLOCKED,
    LIVE_OR_UPCOMING,
    MEDIA_FORBIDDEN,
    MEMBERS_ONLY,
    PRIVATE_VIDEO,
    RATE_LIMITED,
    VIDEO_UNAVAILABLE,
)

# HTTP statuses worth another try; anything else (404, 403, 410, ...) will not change on retry.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# (status, pattern) in the order they are tried: the first match wins. Case-insensitive, over the whole
# message with yt-dlp's "ERROR: [youtube] <id>: " prefix.
MESSAGE_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (status, re.compile(pattern, re.IGNORECASE))
    for status, pattern in (
        # _video.py: 'sign in' reasons, "Sign in to confirm you're not a bot" (any apostrophe), captchas.
        (BOT_CHECK, r"confirm you.?re not a bot|captcha challenge|your IP is likely being blocked"),
        # _video.py: "This content isn't available, try again later. The current session has been rate-limited".
        (RATE_LIMITED, r"try again later|has been rate-limited|HTTP Error 429|Too Many Requests"),
        (DISK_FULL, r"No space left on device"),
        (AGE_RESTRICTED, r"confirm your age|age-restricted|inappropriate for some users"),
        (MEMBERS_ONLY, r"members-only|Join this channel|available to this channel's members"),
        (PRIVATE_VIDEO, r"Private video|video is private"),
        # common.py report_drm.
        (DRM_PROTECTED, r"DRM protected"),
        # common.py raise_geo_restricted and YouTube's subreason.
        (GEO_BLOCKED, r"not available from your location|not made this video available in your country|geo.?restrict"),
        # YoutubeDL: "This live event will begin in ...", "Premieres in ...", post-live processing.
        (
            LIVE_OR_UPCOMING,
            r"live event will begin|Premieres in|Premiere will begin|is_upcoming|is not live yet|"
            r"live stream recording is not available",
        ),
        (MEDIA_FORBIDDEN, r"HTTP Error 403"),
        # Removed, terminated, never existed: YouTube's reasons as yt-dlp reports them.
        (
            VIDEO_UNAVAILABLE,
            r"Video unavailable|video is not available|video does not exist|has been removed|"
            r"account associated with this video has been terminated|no longer available|Incomplete YouTube ID|"
            r"HTTP Error 404|HTTP Error 410",
        ),
        # yt-dlp's player code: a signature or n challenge it cannot solve, a JSON it cannot find.
        (
            EXTRACTOR_BROKEN,
            r"Signature extraction failed|n challenge solving failed|nsig extraction failed|"
            r"Unable to extract|Failed to extract any player response|Only images are available|"
            r"please report this issue on",
        ),
    )
)


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything behind it: yt-dlp's cause and exc_info, Python's __cause__/__context__."""
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
        pending.append(exc_info[1] if exc_info else None)


def classify_message(message: str) -> str | None:
    """The failure kind yt-dlp's text names, or None when it names none of them."""
    return next((status for status, pattern in MESSAGE_KINDS if pattern.search(message)), None)


def classify(error: BaseException, message: str) -> str:
    """The status of a failed extraction or download: from the exception types behind it first (an
    HTTP status, a geo restriction, an extractor error yt-dlp did not expect), then from its text."""
    chain = list(causes(error))
    for current in chain:
        if isinstance(current, HTTPError):
            if current.status == 429:
                return RATE_LIMITED
            if current.status == 403:
                return MEDIA_FORBIDDEN
        if isinstance(current, GeoRestrictedError):
            return GEO_BLOCKED
    by_text = classify_message(message)
    if by_text:
        return by_text
    # An ExtractorError yt-dlp did not expect (expected=False) is a bug in its extractor: a site change.
    if any(isinstance(c, ExtractorError) and not c.expected and not c.cause for c in chain):
        return EXTRACTOR_BROKEN
    return DOWNLOAD_FAILED


def is_transient(error: BaseException) -> bool:
    """Whether another attempt could succeed: connection problems, timeouts, 5xx and 429 answers."""
    for current in causes(error):
        if isinstance(current, HTTPError):
            return current.status in TRANSIENT_HTTP_STATUSES
        if isinstance(current, CertificateVerifyError):
            return False
        if isinstance(current, (TransportError, TimeoutError, ConnectionError)):
            return True
    return False


class CapturingLogger:
    """yt-dlp logger that keeps its recent lines (to report its own words) and prints nothing."""

    def __init__(self) -> None:
        self.lines: deque[tuple[str, str]] = deque(maxlen=200)

    def debug(self, message: str) -> None:
        self.lines.append(("debug", _clean(message)))

    def info(self, message: str) -> None:
        self.lines.append(("info", _clean(message)))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", _clean(message)))

    def error(self, message: str) -> None:
        self.lines.append(("error", _clean(message)))

    def last_problem(self) -> str | None:
        return next((line for level, line in reversed(self.lines) if level in ("error", "warning")), None)


def ytdlp_message(error: BaseException) -> str:
    """yt-dlp's own text, minus the 'ERROR:' prefix and the carriage returns meant for a terminal."""
    return _clean(str(error))


def _clean(message: str) -> str:
    text = message.replace("\r", "").strip()
    text = re.sub(r"^ERROR:\s*", "", text)
    return re.sub(r"^\[download\]\s*", "", text)
