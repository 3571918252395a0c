"""The build's breaker: stop taking new videos when yt-dlp's extractor no longer understands the site.

A site change breaks every extraction the same way; a build that goes on marks its whole queue failed
in an hour. When a large share of a rolling window of finished videos failed as extractor_broken, the
build stops (what it wrote stays, a rerun resumes) and says to upgrade yt-dlp.
"""

from __future__ import annotations

from collections import deque

from cosmo_data.schemas.records import EXTRACTOR_BROKEN, VideoRecord

# Extractor-wide failure kinds: one of them in most of a window is yt-dlp's problem, not the videos'.
EXTRACTOR_WIDE = frozenset({EXTRACTOR_BROKEN})


class ExtractorBroken(Exception):
    """Most recent videos failed the same extractor-wide way; the message says what to do."""


class Breaker:
    def __init__(self, window: int = 50, share: float = 0.6):
        self.window = window
        self.share = share
        self.recent: deque[str] = deque(maxlen=window)

    def record_done(self, record: VideoRecord) -> None:
        """Count a finished record; raise ExtractorBroken once the window is full and mostly broken."""
        if record.source_kind not in ("youtube", "url"):
            return
        self.recent.append(record.status)
        if len(self.recent) < self.window:
            return
        for status in EXTRACTOR_WIDE:
            failed = sum(1 for s in self.recent if s == status)
            if failed >= self.share * self.window:
                raise ExtractorBroken(
                    f"{failed} of the last {self.window} downloads failed as {status} (yt-dlp "
                    f"{record.ytdlp_version or '?'}): upgrade yt-dlp (pip install -U yt-dlp), then rerun to resume; "
                    f"the failed videos come back with --retry-failed {status}"
                )
