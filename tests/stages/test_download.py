"""Downloads through yt-dlp's Python API against a loopback HTTP server, local sources, and the
deadline child process. The expected texts are yt-dlp's own words."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from loopback import refused_url

from cosmo_data.pipeline.sources import classify
from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.schemas.records import (
    DEADLINE_EXCEEDED,
    DOWNLOAD_FAILED,
    INTERNAL_ERROR,
    RATE_LIMITED,
    RETRYABLE,
    TOO_LARGE,
    TOO_LONG,
    VIDEO_UNAVAILABLE,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.download import (
    backoff_s,
    download,
    run_with_deadline,
    scrub_paths,
    warm_up_ytdlp,
)

pytestmark = pytest.mark.usefixtures("fast_children")


def config(**overrides) -> DownloadConfig:
    # identity_give_up_s 0: a bot check or rate limit fails the video at once (pacing has its own tests).
    settings = {"retries": 0, "backoff_s": 0.05, "socket_timeout_s": 5.0, "deadline_s": 60.0, "identity_give_up_s": 0}
    return DownloadConfig(**{**settings, **overrides})


def record_for(source: str) -> VideoRecord:
    row = classify(source, 0)
    return VideoRecord(row.video_id, row.source, 0, source_kind=row.kind, locator=row.locator)


def failure_of(record: VideoRecord, dest: Path, cfg: DownloadConfig) -> VideoFailure:
    with pytest.raises(VideoFailure) as caught:
        download(record, dest, cfg)
    return caught.value


def probe_streams(path: Path) -> list[dict]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,width,height", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["streams"]


# --- yt-dlp over HTTP ---------------------------------------------------------------------------


def test_direct_mp4_link_downloads_the_exact_bytes_under_the_record_id(http_server, media_dir, tmp_path):
    record = record_for(http_server.url("files/clip.mp4"))

    path = download(record, tmp_path, config())

    assert path == tmp_path / f"{record.video_id}.mp4"
    assert path.read_bytes() == (media_dir / "clip.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.slow
def test_max_height_picks_the_tallest_rendition_not_above_it_and_merges_audio(http_server, tmp_path):
    record = record_for(http_server.url("files/master.m3u8"))
    picked = {}
    for max_height in (720, 200, 100):
        path = download(record, tmp_path / str(max_height), config(max_height=max_height))
        streams = probe_streams(path)
        video = next(s for s in streams if s["codec_type"] == "video")
        picked[max_height] = ((video["width"], video["height"]), any(s["codec_type"] == "audio" for s in streams))

    # 100: nothing is short enough, so the smallest rendition rather than none.
    assert picked == {720: ((320, 240), True), 200: ((160, 120), True), 100: ((160, 120), True)}


def test_http_404_is_an_unavailable_video_in_ytdlp_words_and_is_not_retried(http_server, tmp_path):
    failure = failure_of(record_for(http_server.url("missing.mp4")), tmp_path, config(retries=3))

    assert failure.status == VIDEO_UNAVAILABLE and failure.status not in RETRYABLE
    assert failure.message == (
        "[generic] missing: Unable to download webpage: HTTP Error 404: Not Found "
        "(caused by <HTTPError 404: Not Found>)"
    )
    assert http_server.count("/missing.mp4") == 1


def test_html_page_behind_an_mp4_name_is_unsupported(http_server, tmp_path):
    url = http_server.url("page.mp4")

    failure = failure_of(record_for(url), tmp_path, config())

    assert (failure.status, failure.message) == (DOWNLOAD_FAILED, f"Unsupported URL: {url}")


def test_page_with_several_videos_is_refused_as_a_playlist(http_server, tmp_path):
    url = http_server.url("two-videos/clip.mp4")

    failure = failure_of(record_for(url), tmp_path, config())

    assert (failure.status, failure.message) == (DOWNLOAD_FAILED, f"{url} is a playlist, not a single video")
    assert http_server.count("/files/clip.mp4") == 0
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_retried_then_reported_in_ytdlp_words(tmp_path):
    failure = failure_of(record_for(refused_url("clip.mp4")), tmp_path, config(retries=2))

    assert failure.status == DOWNLOAD_FAILED
    assert "Unable to download webpage" in failure.message
    assert "[Errno 111] Connection refused" in failure.message
    assert failure.message.endswith("(gave up after 3 attempts)")


def test_unanswered_request_times_out_by_socket_timeout(http_server, tmp_path):
    failure = failure_of(record_for(http_server.url("slow-start/30/clip.mp4")), tmp_path, config(socket_timeout_s=0.5))

    assert failure.status == DOWNLOAD_FAILED
    assert "Unable to download webpage" in failure.message and "timed out" in failure.message


@pytest.mark.timeout(60)
def test_trickling_server_is_abandoned_at_the_deadline(http_server, tmp_path):
    # Headers, then one byte a second: every read succeeds, so no socket timeout ever fires.
    record = record_for(http_server.url("trickle.mp4"))

    failure = failure_of(record, tmp_path, config(deadline_s=3.0, socket_timeout_s=2.0))

    assert failure.status == DEADLINE_EXCEEDED
    assert failure.message == "download did not finish within its deadline of 3 s"
    assert not (tmp_path / f"{record.video_id}.mp4").exists()


def test_transient_503_on_the_first_request_is_retried_with_exponential_backoff(http_server, media_dir, tmp_path):
    path = "/flaky/xx/clip.mp4"
    cfg = config(retries=3, backoff_s=0.3)

    downloaded = download(record_for(http_server.url(path)), tmp_path, cfg)

    assert downloaded.read_bytes() == (media_dir / "clip.mp4").read_bytes()
    # Two 503s, then the generic extractor's request and the download itself.
    times = http_server.request_times(path)
    assert len(times) == 4
    assert times[1] - times[0] >= backoff_s(cfg, 0) == 0.3
    assert times[2] - times[1] >= backoff_s(cfg, 1) == 0.6


def test_503_during_the_media_transfer_is_retried_by_ytdlp(http_server, tmp_path):
    path = "/flaky/ox/clip.mp4"

    download(record_for(http_server.url(path)), tmp_path, config(retries=1))

    assert http_server.count(path) == 3  # extractor, failed transfer, retried transfer


def test_persistent_503_gives_up_after_the_configured_retries(http_server, tmp_path):
    path = "/flaky/xxxxxxxx/clip.mp4"

    failure = failure_of(record_for(http_server.url(path)), tmp_path, config(retries=2))

    assert failure.status == DOWNLOAD_FAILED
    assert failure.message == (
        "[generic] clip: Unable to download webpage: HTTP Error 503: Service Unavailable "
        "(caused by <HTTPError 503: Service Unavailable>) (gave up after 3 attempts)"
    )
    assert http_server.count(path) == 3


def test_429_after_the_retries_is_rate_limited_which_a_later_run_retries(http_server, tmp_path):
    path = "/flaky/rrrrrrrr/clip.mp4"

    failure = failure_of(record_for(http_server.url(path)), tmp_path, config(retries=2, backoff_s=0.01))

    assert failure.status == RATE_LIMITED and failure.status in RETRYABLE
    assert "HTTP Error 429: Too Many Requests" in failure.message and failure.message.endswith(
        "(gave up after 3 attempts)"
    )


def test_announced_size_over_the_limit_is_rejected_before_the_body(http_server, media_dir, tmp_path):
    size = (media_dir / "clip.mp4").stat().st_size
    cfg = config(max_filesize_mb=0.01)

    failure = failure_of(record_for(http_server.url("files/clip.mp4")), tmp_path, cfg)

    assert (failure.status, failure.message) == (
        TOO_LARGE,
        f"server announces {size} bytes, over the limit of 10485 bytes (download.max_filesize_mb)",
    )
    # Stopped after yt-dlp's first block: whatever was written is a small fraction of the file.
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 4096 < size


def test_size_from_page_metadata_over_the_limit_is_rejected_before_any_media_request(http_server, media_dir, tmp_path):
    size = (media_dir / "clip.mp4").stat().st_size

    failure = failure_of(record_for(http_server.url("watch/3/clip.mp4")), tmp_path, config(max_filesize_mb=0.01))

    assert (failure.status, failure.message) == (
        TOO_LARGE,
        f"metadata gives a size of {size} bytes, over the limit of 10485 bytes (download.max_filesize_mb)",
    )
    assert http_server.count("/files/clip.mp4") == 0


def test_stream_without_a_size_is_stopped_once_its_fragments_pass_the_limit(http_server, tmp_path):
    # yt-dlp gives no size for streaming manifests (their bitrates are peaks): only bytes tell.
    failure = failure_of(record_for(http_server.url("files/master.m3u8")), tmp_path, config(max_filesize_mb=0.005))

    assert failure.status == TOO_LARGE
    assert re.fullmatch(
        r"download stopped after \d+ bytes, over the limit of 5242 bytes \(download.max_filesize_mb\)", failure.message
    )


def test_unannounced_size_is_stopped_once_the_limit_is_passed(http_server, tmp_path):
    failure = failure_of(record_for(http_server.url("chunked/clip.mp4")), tmp_path, config(max_filesize_mb=0.01))

    assert failure.status == TOO_LARGE
    assert re.fullmatch(
        r"download stopped after \d+ bytes, over the limit of 10485 bytes \(download.max_filesize_mb\)", failure.message
    )


def test_duration_from_page_metadata_over_the_limit_is_rejected_before_downloading(http_server, tmp_path):
    failure = failure_of(record_for(http_server.url("watch/7200/clip.mp4")), tmp_path, config(max_duration_s=3600))

    assert (failure.status, failure.message) == (
        TOO_LONG,
        "duration 7200 s is over the limit of 3600 s (download.max_duration_s)",
    )
    assert http_server.count("/files/clip.mp4") == 0


def test_direct_link_without_duration_metadata_is_checked_from_the_file(http_server, tmp_path):
    failure = failure_of(record_for(http_server.url("files/clip.mp4")), tmp_path, config(max_duration_s=1))

    assert failure.status == TOO_LONG
    assert re.fullmatch(r"duration 3(\.\d+)? s is over the limit of 1 s \(download.max_duration_s\)", failure.message)


def test_duration_within_the_limit_downloads(http_server, tmp_path):
    path = download(record_for(http_server.url("watch/3/clip.mp4")), tmp_path, config(max_duration_s=3600))

    assert path.stat().st_size > 0


def test_write_errors_name_the_source_not_the_work_dir(http_server, tmp_path):
    # A work dir that is a regular file: yt-dlp cannot write under it and says so with the path.
    blocker = tmp_path / "work"
    blocker.write_text("not a directory")
    record = record_for(http_server.url("files/clip.mp4"))

    failure = failure_of(record, blocker, config())

    assert failure.status == DOWNLOAD_FAILED
    assert str(blocker) not in failure.message
    assert record.source in failure.message


# --- local files --------------------------------------------------------------------------------


def test_local_file_is_used_in_place(media_dir, tmp_path):
    source = media_dir / "clip.mp4"
    before = source.read_bytes()

    path = download(record_for(str(source)), tmp_path, config())

    assert path == source
    assert list(tmp_path.iterdir()) == []
    assert source.read_bytes() == before


def test_missing_local_file_fails_clearly(tmp_path):
    source = str(tmp_path / "gone.mp4")

    failure = failure_of(record_for(source), tmp_path, config())

    assert (failure.status, failure.message) == (DOWNLOAD_FAILED, f"local file not found: {source}")


def test_local_file_over_the_duration_limit_is_too_long(media_dir, tmp_path):
    failure = failure_of(record_for(str(media_dir / "clip.mp4")), tmp_path, config(max_duration_s=2.5))

    assert failure.status == TOO_LONG
    assert re.fullmatch(r"duration 3(\.\d+)? s is over the limit of 2.5 s \(download.max_duration_s\)", failure.message)


def test_local_file_over_the_size_limit_is_too_large(media_dir, tmp_path):
    size = (media_dir / "clip.mp4").stat().st_size

    failure = failure_of(record_for(str(media_dir / "clip.mp4")), tmp_path, config(max_filesize_mb=0.01))

    assert (failure.status, failure.message) == (
        TOO_LARGE,
        f"file is {size} bytes, over the limit of 10485 bytes (download.max_filesize_mb)",
    )


# --- the deadline child process -----------------------------------------------------------------


def start_sleeper_and_hang(pid_file: Path) -> None:
    """Child body: start a grandchild (as ffmpeg would be), then never return."""
    sleeper = subprocess.Popen(["sleep", "300"])
    pid_file.write_text(str(sleeper.pid))
    time.sleep(300)


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_value_error() -> None:
    raise ValueError("no such thing")


def add(a: int, b: int) -> int:
    return a + b


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie waiting for init to reap it is dead too


def test_child_result_comes_back():
    assert run_with_deadline(add, (2, 3), timeout_s=30, step="add", crash_status=INTERNAL_ERROR) == 5


@pytest.mark.timeout(60)
def test_deadline_kills_the_child_and_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "sleeper.pid"

    with pytest.raises(VideoFailure) as caught:
        run_with_deadline(start_sleeper_and_hang, (pid_file,), timeout_s=2, step="work", crash_status=INTERNAL_ERROR)

    assert caught.value.status == DEADLINE_EXCEEDED
    assert caught.value.message == "work did not finish within its deadline of 2 s"
    sleeper = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is immediate; leave the kernel a moment to tear it down
        if not is_running(sleeper):
            break
        time.sleep(0.1)
    assert not is_running(sleeper)


def test_child_killed_by_a_signal_is_reported_with_the_signal():
    with pytest.raises(VideoFailure) as caught:
        run_with_deadline(die_by_sigkill, (), timeout_s=30, step="decode", crash_status=INTERNAL_ERROR)

    assert caught.value.status == INTERNAL_ERROR
    assert caught.value.message == "decode process died (killed by SIGKILL, often the kernel's out-of-memory killer)"


def test_unexpected_exception_in_the_child_keeps_its_message():
    with pytest.raises(VideoFailure) as caught:
        run_with_deadline(raise_value_error, (), timeout_s=30, step="work", crash_status=INTERNAL_ERROR)

    assert caught.value.status == INTERNAL_ERROR
    assert caught.value.message.startswith("ValueError: no such thing (at raise_value_error:")


def uncompiled_url_patterns() -> list[str]:
    from yt_dlp.extractor import gen_extractor_classes

    return [ie.__name__ for ie in gen_extractor_classes() if ie._VALID_URL and "_VALID_URL_RE" not in ie.__dict__]


def warmed_up_then_uncompiled_url_patterns() -> tuple[int, list[str]]:
    before = len(uncompiled_url_patterns())
    warm_up_ytdlp()
    return before, uncompiled_url_patterns()


def test_warm_up_compiles_every_url_pattern_a_direct_link_would_meet():
    """What the forkserver does once (stages/download_warmup.py), so that no download child compiles
    yt-dlp's URL patterns again: yt-dlp keeps each compiled pattern on its extractor's class."""
    before, after = run_with_deadline(
        warmed_up_then_uncompiled_url_patterns, (), timeout_s=60, step="warm-up", crash_status=INTERNAL_ERROR
    )
    assert after == [] and (before > 1000 or before == 0)  # 0: this session's forkserver was warmed already


def test_scrub_paths_replaces_work_dir_paths_with_the_source(tmp_path):
    message = f"unable to open for writing: [Errno 28] No space left on device: '{tmp_path}/abc.mp4.part' in {tmp_path}"

    assert scrub_paths(message, tmp_path, "https://example.com/v.mp4") == (
        "unable to open for writing: [Errno 28] No space left on device: 'https://example.com/v.mp4' "
        "in https://example.com/v.mp4"
    )
