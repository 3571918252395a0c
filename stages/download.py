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

import math
import multiprocessing
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import av
import yt_dlp
from yt_dlp.networking.exceptions import (
    CertificateVerifyError,
    HTTPError,
    TransportError,
)
from yt_dlp.utils import DownloadError

from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.schemas.records import (
    DEADLINE_EXCEEDED,
    DISK_FULL,
    DOWNLOAD_FAILED,
    INVALID_SOURCE,
    RATE_LIMITED,
    TOO_LARGE,
    TOO_LONG,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.base import describe_exception

MB = 1024 * 1024
# HTTP statuses worth another try; anything else (404, 403, 410, ...) will not change on retry.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A child killed for its deadline has this long to exit before the parent stops waiting for it.
KILL_WAIT_S = 10.0
# ffprobe reads only the container header; this is a guard against a hung process, not a limit.
PROBE_TIMEOUT_S = 60.0

T = TypeVar("T")


def download(record: VideoRecord, dest_dir: Path, config: DownloadConfig, *, deadline_s: float | None = None) -> Path:
    """Return a local path to the record's video, downloading it into dest_dir when it is remote.

    deadline_s overrides config.deadline_s (the video stage passes what is left of its own deadline).
    Local files are used where they are, never copied. Raises VideoFailure.
    """
    if record.source_kind == "local":
        path = local_file(record, config)
        check_duration(probe_duration_s(path), config)
        return path
    if record.source_kind not in ("youtube", "url"):
        raise VideoFailure(INVALID_SOURCE, record.error or f"nothing to download for source {record.source!r}")
    limit_s = config.deadline_s if deadline_s is None else deadline_s
    try:
        return run_with_deadline(
            fetch_url,
            (record.locator, record.video_id, Path(dest_dir), config),
            timeout_s=limit_s,
            step="download",
            crash_status=DOWNLOAD_FAILED,
        )
    except VideoFailure as failure:
        raise VideoFailure(failure.status, scrub_paths(failure.message, Path(dest_dir), record.source)) from None


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


def fetch_url(url: str, video_id: str, dest_dir: Path, config: DownloadConfig) -> Path:
    """Download url with yt-dlp into dest_dir/<video_id>.<ext>, retrying transient failures.

    yt-dlp retries the media transfer itself (config.retries, with our backoff); the requests that
    find the media (webpage, API, or the generic extractor's first GET) it does not retry, so this
    loop does, with exponential backoff, when the cause is a connection problem or a 5xx/429.
    """
    attempt = 0
    while True:
        try:
            return _fetch_once(url, video_id, dest_dir, config)
        except DownloadError as error:
            message = ytdlp_message(error)
            if attempt == config.retries or not is_transient(error):
                tries = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                status = RATE_LIMITED if is_rate_limited(error) else _status_for(message)
                raise VideoFailure(status, message + tries) from None
            time.sleep(backoff_s(config, attempt))
            attempt += 1


def backoff_s(config: DownloadConfig, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based): backoff_s, 2x, 4x, ..."""
    return config.backoff_s * 2**attempt


def _fetch_once(url: str, video_id: str, dest_dir: Path, config: DownloadConfig) -> Path:
    log = _CapturingLogger()
    limits = _Limits(config)
    with yt_dlp.YoutubeDL(_params(video_id, dest_dir, config, log, limits)) as ydl:
        # Look before processing: a playlist would resolve (and download) every entry, and an
        # embedding page's metadata can rule the video out before its media URL is even opened.
        info = ydl.extract_info(url, download=False, process=False)
        if info.get("_type") in ("playlist", "multi_video"):
            raise VideoFailure(DOWNLOAD_FAILED, f"{url} is a playlist, not a single video")
        limits.check_metadata(info)
        info = ydl.process_ie_result(info, download=True)
    for requested in info.get("requested_downloads") or []:
        path = requested.get("filepath")
        if path and Path(path).is_file():
            if not info.get("duration"):
                check_duration(header_duration_s(Path(path)), config)
            return Path(path)
    raise VideoFailure(DOWNLOAD_FAILED, log.last_problem() or "yt-dlp finished without writing a file")


def _params(
    video_id: str, dest_dir: Path, config: DownloadConfig, log: _CapturingLogger, limits: _Limits
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

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.max_bytes = max_filesize_bytes(config)
        self.received: dict[str, int] = {}

    def check_metadata(self, info: dict[str, Any], *, incomplete: bool | set[str] = False) -> None:
        """yt-dlp's match_filter, called before format selection and again for the chosen format;
        raising stops it before any media is downloaded. Sizes are the ones yt-dlp trusts: it leaves
        filesize_approx unset for streaming manifests, whose bitrates are peaks, not averages."""
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


class _CapturingLogger:
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


def _status_for(message: str) -> str:
    return DISK_FULL if "No space left on device" in message else DOWNLOAD_FAILED


def _causes(error: BaseException) -> Iterator[BaseException]:
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


def is_transient(error: BaseException) -> bool:
    """Whether another attempt could succeed: connection problems, timeouts, 5xx and 429 answers."""
    for current in _causes(error):
        if isinstance(current, HTTPError):
            return current.status in TRANSIENT_HTTP_STATUSES
        if isinstance(current, CertificateVerifyError):
            return False
        if isinstance(current, (TransportError, TimeoutError, ConnectionError)):
            return True
    return False


def is_rate_limited(error: BaseException) -> bool:
    """A 429 answer (YouTube's "Too Many Requests"): worth retrying in a later run, not now."""
    return any(isinstance(current, HTTPError) and current.status == 429 for current in _causes(error))


# --- child processes with a hard deadline -------------------------------------------------------


def run_with_deadline(fn: Callable[..., T], args: tuple, *, timeout_s: float, step: str, crash_status: str) -> T:
    """Run fn(*args) in a child process and return its result; kill it and its children at the deadline.

    VideoFailures raised by fn come back as they were; any other exception, or the child dying, is
    recorded under crash_status. fn and args must be picklable (fn a module-level function).
    The child runs in its own process group so that ffmpeg processes it started die with it.
    """
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, fn, args, timeout_s), name=f"cosmo-{step}")
    child.start()
    sender.close()
    outcome: tuple | None = None  # None: the deadline passed first
    try:
        if receiver.poll(timeout_s):
            outcome = receiver.recv()
    except EOFError:
        outcome = ("died",)
    finally:
        receiver.close()
        _stop(child, kill=outcome is None or outcome[0] == "died")
    if outcome is None:
        raise VideoFailure(DEADLINE_EXCEEDED, f"{step} did not finish within its deadline of {timeout_s:g} s")
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "failed":
        raise VideoFailure(outcome[1], outcome[2])
    if outcome[0] == "died":
        raise VideoFailure(crash_status, f"{step} process died ({_exit_reason(child.exitcode)})")
    raise VideoFailure(crash_status, outcome[1])


def prepare_children(modules: tuple[str, ...]) -> None:
    """Start the process that forks deadline children, with these modules already imported.

    Optional: without it the first run_with_deadline starts it, and each child imports on its own.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *modules])
    forkserver.ensure_running()


def warm_up_ytdlp() -> None:
    """Compile every extractor's URL pattern (cached on its class) and import the generic extractor."""
    from yt_dlp.extractor import gen_extractor_classes

    for extractor in gen_extractor_classes():
        extractor.suitable("")
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        ydl.get_info_extractor("Generic")


def _child_main(sender: Connection, fn: Callable[..., Any], args: tuple, timeout_s: float) -> None:
    os.setpgid(0, 0)
    # Backstop for a parent that dies without killing us: SIGALRM's default action ends the process.
    signal.alarm(math.ceil(timeout_s + KILL_WAIT_S))
    try:
        outcome: tuple = ("ok", fn(*args))
    except VideoFailure as failure:
        outcome = ("failed", failure.status, failure.message)
    except BaseException as exc:  # errors are data: the parent records the message
        outcome = ("error", describe_exception(exc))
    try:
        sender.send(outcome)
    except Exception as exc:  # a result that cannot be pickled
        sender.send(("error", describe_exception(exc)))
    sender.close()


def _stop(child: multiprocessing.process.BaseProcess, *, kill: bool) -> None:
    """Wait for a child that has answered; kill the group of one that has not (or does not exit)."""
    if not kill:
        child.join(KILL_WAIT_S)
    if kill or child.is_alive():
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the child, and the ffmpeg it may be running
        except (ProcessLookupError, PermissionError):
            child.kill()  # it had not made its own process group yet
        child.join(KILL_WAIT_S)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", often the kernel's out-of-memory killer" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


def scrub_paths(message: str, work_dir: Path, source: str) -> str:
    """Replace paths inside the temporary work_dir with the source: they mean nothing to a reader."""
    for root in {str(work_dir), str(work_dir.resolve())}:
        message = re.sub(re.escape(root) + r"(?:/[^\s'\"]*)?", lambda _: source, message)
    return message
