"""Getting one source video onto local disk: yt-dlp for YouTube ids and URLs, nothing for local files.

Network downloads run in a child process that is killed, with everything it started, at the deadline.
Nothing inside the process could enforce it: a server that sends headers and then one byte a second
never trips a socket timeout, and yt-dlp blocks inside a read until a whole block has arrived, so
neither a progress hook nor a watchdog thread gets a chance to stop it.

Limits are checked as early as the metadata allows: duration and size from yt-dlp's metadata before
any media is requested (match_filter, and the page's own metadata before its media URL is opened),
then the announced Content-Length after the first 1 KiB block and the bytes actually received while
downloading (a progress hook), for servers and streams that announce nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import yt_dlp
from yt_dlp.utils import DownloadError
from yt_dlp.version import __version__ as YTDLP_VERSION

from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.schemas.records import (
    BOT_CHECK,
    DEADLINE_EXCEEDED,
    DOWNLOAD_FAILED,
    FILTERED,
    INVALID_SOURCE,
    MEDIA_FORBIDDEN,
    RATE_LIMITED,
    TOO_LARGE,
    TOO_LONG,
    Segment,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages import captions as platform_captions
from cosmo_data.stages import platform_info
from cosmo_data.stages.child_process import prepare_children as prepare_children
from cosmo_data.stages.child_process import run_with_deadline
from cosmo_data.stages.download_failures import CapturingLogger, classify, is_transient, ytdlp_message
from cosmo_data.stages.download_pacing import Identities, say
from cosmo_data.stages.rules import license_failure
from cosmo_data.stages.ytdlp_access import access_params, proxy_label, redact, worker_cookies

MB = 1024 * 1024
# ffprobe reads only the container header; this is a guard against a hung process, not a limit.
PROBE_TIMEOUT_S = 60.0
# Failures that are the identity's (address, cookies), not the video's: the identity sleeps, the video waits.
IDENTITY_FAULTS = frozenset({BOT_CHECK, RATE_LIMITED})
# Where the node's workers share their identities' state and keep their cookies copies.
WORKER_STATE_DIR = Path(tempfile.gettempdir()) / "cosmo-data-download"


@dataclass
class Fetched:
    """What one extraction brought back from the child: the file, the platform's metadata, captions."""

    path: Path
    platform: dict[str, Any] | None = None
    chapters: list[dict[str, Any]] = field(default_factory=list)
    info_json: str | None = None
    # (text_source, language, segments) of the platform's caption track, where one was taken.
    transcript: tuple[str, str, list[Segment]] | None = None


def download(
    record: VideoRecord,
    dest_dir: Path,
    config: DownloadConfig,
    *,
    deadline_s: float | None = None,
    captions: bool = True,
    licenses: tuple[str, ...] = (),
) -> Path:
    """Return a local path to the record's video, downloading it into dest_dir when it is remote.

    deadline_s overrides config.deadline_s (the video stage passes what is left of its own deadline).
    Local files are used where they are, never copied. A download also sets the record's platform
    metadata and, with captions, its transcript from the platform's caption track (unless its source
    brought one); licenses: curation.video.licenses, judged before any media. Raises VideoFailure.
    """
    if record.source_kind == "local":
        path = local_file(record, config)
        check_duration(probe_duration_s(path), config)
        return path
    if record.source_kind not in ("youtube", "url"):
        raise VideoFailure(INVALID_SOURCE, record.error or f"nothing to download for source {record.source!r}")
    record.ytdlp_version = YTDLP_VERSION
    limit_s = config.deadline_s if deadline_s is None else deadline_s
    try:
        fetched = fetch_paced(record, Path(dest_dir), config, limit_s, captions and not record.transcript, licenses)
    except VideoFailure as failure:
        message = redact(scrub_paths(failure.message, Path(dest_dir), record.source), config)
        raise VideoFailure(failure.status, message, failure.filter_reason) from None
    record.platform, record.chapters, record.info_json = fetched.platform, fetched.chapters, fetched.info_json
    if fetched.info_json is not None:
        record.info_json = redact(fetched.info_json, config)
    if fetched.transcript is not None:
        record.text_source, record.language, record.transcript = fetched.transcript
    return fetched.path


def fetch_paced(
    record: VideoRecord,
    dest_dir: Path,
    config: DownloadConfig,
    limit_s: float,
    captions: bool,
    licenses: tuple[str, ...],
) -> Fetched:
    """Download through an awake identity; a bot check or rate limit puts it to sleep and the video
    waits for the next awake one, up to download.identity_give_up_s of waiting and the deadline."""
    started = time.monotonic()
    identities = Identities(config, WORKER_STATE_DIR)
    cookies = worker_cookies(config, WORKER_STATE_DIR)
    interval_s = config.youtube_interval_s if record.source_kind == "youtube" else 0.0
    waited_s = 0.0
    last = VideoFailure(BOT_CHECK, "every download identity sleeps after bot checks or rate limits")
    while True:
        turn = identities.take(interval_s)
        left_s = limit_s - (time.monotonic() - started)
        if turn.awake and turn.wait_s >= left_s:
            message = f"download's turn on its identity (download.youtube_interval_s) came after its deadline of {limit_s:g} s"
            raise VideoFailure(DEADLINE_EXCEEDED, message)
        if not turn.awake and (turn.wait_s >= left_s or waited_s + turn.wait_s > config.identity_give_up_s):
            raise VideoFailure(last.status, f"{last.message} (every identity slept; gave up waiting)")
        if not turn.awake:
            say(f"every identity sleeps (bot check or rate limit): waiting {turn.wait_s:.1f} s")
        time.sleep(turn.wait_s)
        waited_s += turn.wait_s
        if waited_s:  # part of the download's time, shown apart: the identity's pace and sleeps
            record.timings["identity_wait"] = round(waited_s, 3)
        if not turn.awake:
            continue
        try:
            fetched = run_with_deadline(
                fetch_url,
                (record.locator, record.video_id, dest_dir, config, turn.proxy, cookies, captions, licenses),
                timeout_s=left_s - turn.wait_s,
                step="download",
                crash_status=DOWNLOAD_FAILED,
            )
        except VideoFailure as failure:
            if failure.status == DEADLINE_EXCEEDED:  # the whole download's deadline, waits included
                raise VideoFailure(
                    DEADLINE_EXCEEDED, f"download did not finish within its deadline of {limit_s:g} s"
                ) from None
            if failure.status not in IDENTITY_FAULTS or config.identity_give_up_s <= 0:
                raise
            last = failure
            slept_s = identities.strike(turn.proxy)
            record.counters["identity_strikes"] = record.counters.get("identity_strikes", 0) + 1
            say(f"identity {proxy_label(turn.proxy)} sleeps {slept_s:g} s: {redact(failure.message, config)[:160]}")
            continue
        identities.clear(turn.proxy)
        return fetched


def local_file(record: VideoRecord, config: DownloadConfig) -> Path:
    """The local source itself, after checking that it is a readable file within the size limit."""
    path = Path(record.locator)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise VideoFailure(DOWNLOAD_FAILED, f"local file not found: {record.source}") from None
    except OSError as exc:
        raise VideoFailure(DOWNLOAD_FAILED, f"cannot read local file {record.source}: {exc.strerror}") from None
    if not path.is_file():
        raise VideoFailure(DOWNLOAD_FAILED, f"local source is not a regular file: {record.source}")
    if not os.access(path, os.R_OK):
        raise VideoFailure(DOWNLOAD_FAILED, f"cannot read local file {record.source}: Permission denied")
    if size > max_filesize_bytes(config):
        raise too_large(f"file is {size} bytes", config)
    return path


def max_filesize_bytes(config: DownloadConfig) -> int:
    return int(config.max_filesize_mb * MB)


def check_duration(duration_s: float | None, config: DownloadConfig) -> None:
    """The duration read from the file itself, for sources without metadata (local files, direct links)."""
    if duration_s is not None and duration_s > config.max_duration_s:
        raise too_long(duration_s, config)


def header_duration_s(path: Path) -> float | None:
    """The container's duration from its header, read with PyAV: for a download's child process, where
    a file that hangs the demuxer dies with the child at the deadline (an ffprobe process cost 0.1-0.3 s
    a download on 2 busy cores). None when it has none or is unreadable (the decoder then says why)."""
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except (av.FFmpegError, UnicodeDecodeError):
        return None


def probe_duration_s(path: Path) -> float | None:
    """The container's duration per ffprobe, in a process of its own (a local file is probed in the
    worker itself); None when it has none or the file is unreadable (the decoder then reports what is
    wrong in its own words)."""
    try:
        result = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "default=noprint_wrappers=1:nokey=1",
                "file:" + str(Path(path).resolve()),
            ],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
        return float(result.stdout.strip())
    except (ValueError, subprocess.TimeoutExpired):
        return None


def too_long(duration_s: float, config: DownloadConfig) -> VideoFailure:
    limit = f"the limit of {config.max_duration_s:g} s (download.max_duration_s)"
    return VideoFailure(TOO_LONG, f"duration {duration_s:g} s is over {limit}")


def too_large(what: str, config: DownloadConfig) -> VideoFailure:
    limit = f"the limit of {max_filesize_bytes(config)} bytes (download.max_filesize_mb)"
    return VideoFailure(TOO_LARGE, f"{what}, over {limit}")


# --- yt-dlp, run inside the child process -------------------------------------------------------


def fetch_url(
    url: str,
    video_id: str,
    dest_dir: Path,
    config: DownloadConfig,
    proxy: str | None = None,
    cookies: Path | None = None,
    captions: bool = True,
    licenses: tuple[str, ...] = (),
) -> Fetched:
    """Download url with yt-dlp into dest_dir/<video_id>.<ext> through one identity, retrying transient
    failures; then, from the same extraction, the platform's metadata and caption track.

    yt-dlp retries the media transfer itself (config.retries, with our backoff); the requests that
    find the media (webpage, API, or the generic extractor's first GET) it does not retry, so this
    loop does, with exponential backoff, when the cause is a connection problem or a 5xx/429, and
    extracts again after a 403 on the media (an expired media URL). A bot check or a rate limit is
    not retried here: it is the identity's, and the caller puts it to sleep.
    """
    attempt = 0
    while True:
        try:
            return _fetch_once(url, video_id, dest_dir, config, proxy, cookies, captions, licenses)
        except DownloadError as error:
            message = ytdlp_message(error)
            status = classify(error, message)
            retry = is_transient(error) or status == MEDIA_FORBIDDEN
            if attempt == config.retries or not retry or status == BOT_CHECK:
                tries = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                raise VideoFailure(status, message + tries) from None
            time.sleep(backoff_s(config, attempt))
            attempt += 1


def backoff_s(config: DownloadConfig, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based): backoff_s, 2x, 4x, ..."""
    return config.backoff_s * 2**attempt


def _fetch_once(
    url: str,
    video_id: str,
    dest_dir: Path,
    config: DownloadConfig,
    proxy: str | None,
    cookies: Path | None,
    captions: bool,
    licenses: tuple[str, ...],
) -> Fetched:
    log = CapturingLogger()
    limits = _Limits(config, licenses)
    params = access_params(config, proxy=proxy, cookies_path=cookies) | _params(video_id, dest_dir, config, log, limits)
    with yt_dlp.YoutubeDL(params) as ydl:
        # Look before processing: a playlist would resolve (and download) every entry, and an
        # embedding page's metadata can rule the video out before its media URL is even opened.
        info = ydl.extract_info(url, download=False, process=False)
        if info.get("_type") in ("playlist", "multi_video"):
            raise VideoFailure(DOWNLOAD_FAILED, f"{url} is a playlist, not a single video")
        limits.check_metadata(info)
        info = ydl.process_ie_result(info, download=True)
        path = next(
            (
                Path(r["filepath"])
                for r in info.get("requested_downloads") or []
                if r.get("filepath") and Path(r["filepath"]).is_file()
            ),
            None,
        )
        if path is None:
            raise VideoFailure(DOWNLOAD_FAILED, log.last_problem() or "yt-dlp finished without writing a file")
        if not info.get("duration"):
            check_duration(header_duration_s(path), config)
        fetched = Fetched(
            path,
            platform=platform_info.platform_columns(info),
            chapters=platform_info.chapters(info),
            info_json=platform_info.info_json(info),
        )
        if captions:
            fetched.transcript = _captions(ydl, info)
    return fetched


def _captions(ydl: yt_dlp.YoutubeDL, info: dict[str, Any]) -> tuple[str, str, list[Segment]] | None:
    """The platform's caption track, fetched with the media's identity after the media; a track that
    cannot be had (a 429, a broken file) leaves the video to whisper, never fails it."""

    def read_url(track_url: str) -> str:
        with ydl.urlopen(track_url) as response:
            return response.read().decode("utf-8", errors="replace")

    try:
        return platform_captions.fetch_transcript(info, read_url)
    except Exception as exc:  # errors are data: the video goes on without the platform's text
        ydl.report_warning(f"caption track not used: {exc}")
        return None


def _params(
    video_id: str, dest_dir: Path, config: DownloadConfig, log: CapturingLogger, limits: _Limits
) -> dict[str, Any]:
    return {
        # Best video at most max_height tall plus best audio; if every video is taller, the smallest.
        "format": "bv*+ba/b",
        "format_sort": [f"res:{config.max_height}"],
        "merge_output_format": "mp4/mkv",
        # The name is ours (video_ids are sanitized), never one taken from the remote.
        "paths": {"home": str(dest_dir), "temp": str(dest_dir)},
        "outtmpl": {"default": f"{video_id}.%(ext)s"},
        "noplaylist": True,
        "socket_timeout": config.socket_timeout_s,
        "retries": config.retries,
        "fragment_retries": config.retries,
        "extractor_retries": config.retries,
        "retry_sleep_functions": {
            "http": lambda n: backoff_s(config, n),
            "fragment": lambda n: backoff_s(config, n),
            "extractor": lambda n: backoff_s(config, n),
        },
        "match_filter": limits.check_metadata,
        "progress_hooks": [limits.check_progress],
        "logger": log,
        "quiet": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
    }


class _Limits:
    """Duration and size limits, checked from metadata before downloading and from bytes during it."""

    def __init__(self, config: DownloadConfig, licenses: tuple[str, ...] = ()):
        self.config = config
        self.licenses = licenses
        self.max_bytes = max_filesize_bytes(config)
        self.received: dict[str, int] = {}

    def check_metadata(self, info: dict[str, Any], *, incomplete: bool | set[str] = False) -> None:
        """yt-dlp's match_filter, called before format selection and again for the chosen format;
        raising stops it before any media is downloaded. Sizes are the ones yt-dlp trusts: it leaves
        filesize_approx unset for streaming manifests, whose bitrates are peaks, not averages."""
        rule = license_failure(self.licenses, info.get("license"))
        if rule:
            raise VideoFailure(FILTERED, f"licence {info.get('license')!r} is not one of {list(self.licenses)}", rule)
        duration = info.get("duration")
        if duration and duration > self.config.max_duration_s:
            raise too_long(duration, self.config)
        size = info.get("filesize") or info.get("filesize_approx")
        if size and size > self.max_bytes:
            raise too_large(f"metadata gives a size of {size:.0f} bytes", self.config)

    def check_progress(self, progress: dict[str, Any]) -> None:
        """yt-dlp's progress hook, called after each block (the first is 1 KiB): stops a download
        whose announced size (Content-Length) is over the limit, or once the bytes received pass it.

        yt-dlp's own max_filesize is not used: it compares each fragment of a stream with the limit
        and then reports only "The downloaded file is empty".
        """
        announced = progress.get("total_bytes")
        if announced and announced > self.max_bytes:
            raise too_large(f"server announces {announced} bytes", self.config)
        name = progress.get("tmpfilename") or progress.get("filename") or ""
        self.received[name] = progress.get("downloaded_bytes") or 0
        received = sum(self.received.values())
        if received > self.max_bytes:
            raise too_large(f"download stopped after {received} bytes", self.config)


def warm_up_ytdlp() -> None:
    """Compile every extractor's URL pattern (cached on its class) and import the generic extractor."""
    from yt_dlp.extractor import gen_extractor_classes

    for extractor in gen_extractor_classes():
        extractor.suitable("")
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        ydl.get_info_extractor("Generic")


def scrub_paths(message: str, work_dir: Path, source: str) -> str:
    """Replace paths inside the temporary work_dir with the source: they mean nothing to a reader."""
    for root in {str(work_dir), str(work_dir.resolve())}:
        message = re.sub(re.escape(root) + r"(?:/[^\s'\"]*)?", lambda _: source, message)
    return message
