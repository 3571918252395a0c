"""The build's console: a bar on a terminal, plain lines in a log, a rate over a recent window, one clear
line when the first videos all fail the same way."""

import io

from cosmo_data.pipeline.progress import Progress, duration
from cosmo_data.schemas.records import DOWNLOAD_FAILED, INVALID_SOURCE, OK, VideoRecord


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(index: int, status: str = OK, error: str | None = None) -> VideoRecord:
    return VideoRecord(video_id=f"v{index}", source=f"v{index}", source_index=index, status=status, error=error)


def timed(index: int, **timings: float) -> VideoRecord:
    done = record(index)
    done.timings.update(timings)
    return done


def test_log_lines_come_every_interval_with_rate_eta_and_slowest_stage():
    clock, log = Clock(), io.StringIO()
    progress = Progress(total=100, stream=log, interval_s=30, window_s=60, clock=clock)
    progress.resumed(0)
    for k in range(40):  # one video every 2 s for 80 s, each 3 s of video and 0.5 s of captions
        clock.now += 2
        progress.record_done(timed(k, video=3.0, caption=0.5))
    progress.finish()
    lines = log.getvalue().splitlines()
    assert all(line.startswith("progress: ") for line in lines)
    assert len(lines) == 4  # at 102 s (the first arrival), 132 s, 162 s, and at the end
    last = lines[-1]
    assert "40/100 videos, 0 failed, 0.50 videos/s (last 60 s)" in last
    assert "ETA 2:00" in last  # 60 videos left at 0.5/s
    assert "slowest stage video 3.00 s/video" in last and "1:20 elapsed" in last


def test_instant_first_arrivals_show_no_rate():
    """Sources that fail before Ray starts arrive at once: no 13828.58 videos/s."""
    clock, log = Clock(), io.StringIO()
    progress = Progress(total=10, stream=log, interval_s=0, clock=clock)
    for k in range(3):
        clock.now += 0.001
        progress.record_done(record(k, INVALID_SOURCE, "not a YouTube id"))
    assert "videos/s -, ETA -" in progress.line()
    clock.now += 10  # the window now spans 10 s: a real (if low) rate
    assert "0.20 videos/s" in progress.line()


def test_the_rate_follows_the_recent_window():
    clock = Clock()
    progress = Progress(total=1000, stream=io.StringIO(), window_s=60, clock=clock)
    for k in range(100):  # fast at first: 1 video/s
        clock.now += 1
        progress.record_done(record(k))
    for k in range(100, 130):  # then one video every 4 s
        clock.now += 4
        progress.record_done(record(k))
    assert 0.24 <= progress.rate() <= 0.27  # the last 60 s only, not 130 videos over 220 s


def test_a_terminal_gets_one_redrawn_bar():
    clock, screen = Clock(), Terminal()
    progress = Progress(total=4, stream=screen, interval_s=0, clock=clock)
    progress.resumed(0)
    for k in range(2):
        clock.now += 5
        progress.record_done(timed(k, asr=1.5))
    progress.warn("a stage waits for a node")
    progress.finish()
    text = screen.getvalue()
    assert "\n" not in text.split("warning:")[0]  # the bar redraws in place until the warning
    assert "\r\x1b[K[############............] 2/4 videos  0 failed  0.20 videos/s  ETA 0:10" in text
    assert "slowest: asr 1.5 s/video  0:10 elapsed" in text
    assert "\r\x1b[Kwarning: a stage waits for a node\n" in text and text.endswith("\n")


def test_the_first_videos_failing_alike_are_explained_once():
    clock, log = Clock(), io.StringIO()
    progress = Progress(total=50, stream=log, interval_s=1000, clock=clock)
    error = (
        "[youtube] dQw4w9WgXcQ: Unable to download API page: HTTPSConnection(host='www.youtube.com', port=443): "
        "Failed to resolve 'www.youtube.com' ([Errno -2] Name or service not known) (caused by TransportError(...))"
    )
    for k in range(5):
        progress.record_done(record(k, DOWNLOAD_FAILED, error))
    warnings = [line for line in log.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "the first 3 videos all failed with download_failed: [youtube] dQw4w9WgXcQ: Unable to" in warnings[0]
    assert "Name or service not known). What to do: check that this machine reaches" in warnings[0]
    assert "caused by" not in warnings[0] and "--retry-status download_failed" in warnings[0]


def test_failures_after_a_success_or_of_several_kinds_say_nothing_more():
    for statuses in ([OK, DOWNLOAD_FAILED, DOWNLOAD_FAILED, DOWNLOAD_FAILED], [DOWNLOAD_FAILED, INVALID_SOURCE] * 2):
        log = io.StringIO()
        progress = Progress(total=50, stream=log, interval_s=1000, clock=Clock())
        for k, status in enumerate(statuses):
            progress.record_done(record(k, status, None if status == OK else "boom"))
        assert "warning:" not in log.getvalue(), statuses


def test_a_small_build_failing_whole_is_explained_too():
    log = io.StringIO()
    progress = Progress(total=2, stream=log, interval_s=1000, clock=Clock())
    for k in range(2):
        progress.record_done(record(k, INVALID_SOURCE, "'x y' is not a YouTube id, URL or file"))
    assert "warning: the first 2 videos all failed with invalid_source" in log.getvalue()


def test_durations_read_as_clock_time():
    assert [duration(s) for s in (0, 59.6, 61, 3600, 3 * 3600 + 62)] == ["0:00", "1:00", "1:01", "1:00:00", "3:01:02"]


def test_lines_keep_coming_while_no_video_arrives_and_stop_at_the_end():
    """A log shows the build is alive while workers load models or a long video decodes."""
    import time

    log = io.StringIO()
    progress = Progress(total=5, stream=log, interval_s=0.05)
    progress.resumed(0)
    time.sleep(0.5)
    progress.finish()
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("progress: 0/5 videos") for line in lines)
    time.sleep(0.2)
    assert log.getvalue().splitlines() == lines
