"""A build's console: on a terminal one live bar (done/total, failed, videos/s over a recent window, ETA,
slowest stage); elsewhere (`ray job logs`, CI) the same as a plain `progress:` line every interval_s."""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections import deque
from typing import Callable, TextIO

from cosmo_data.schemas.records import DOWNLOAD_FAILED, INVALID_SOURCE, RATE_LIMITED, VideoRecord

BAR_WIDTH = 24
# How many of the first videos must fail, all with the same status, before the build says what is wrong
# (fewer where the build has fewer): one failure may be the video's own, several alike rarely are.
SAME_FAILURE_VIDEOS = 3
ADVICE = {
    DOWNLOAD_FAILED: "check that this machine reaches the video hosts (network, proxy variables such as "
    "HTTPS_PROXY, a firewall or a blocked address); then stop the build (Ctrl-C) and run the same command "
    "with --retry-status download_failed",
    RATE_LIMITED: "the video host is refusing this address for now (HTTP 429): lower video.resources."
    "concurrency or wait, then run the same command with --retry-failed",
    INVALID_SOURCE: "check the source: one YouTube id or URL per line, or a CSV/Parquet with a video_id "
    "or url column, or video files",
}


def first_words(error: str, limit: int = 240) -> str:
    """An error's gist: its first line without the chain of causes yt-dlp appends."""
    gist = error.strip().splitlines()[0].split(" (caused by ")[0] if error.strip() else ""
    return gist if len(gist) <= limit else gist[: limit - 3] + "..."


def duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts finished videos and shows them. window_s: the span the videos/s (and so the ETA) is measured
    over; no rate is shown until the videos span min_span_s, so the first ones' instant arrival (failed
    sources come back before Ray starts) never reads as thousands of videos/s."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        window_s: float = 60.0,
        min_span_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = total
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        # A terminal's bar redraws often; a log gets a line twice a minute (a HowTo100M build runs hours).
        self.interval_s = interval_s if interval_s is not None else (0.5 if self._tty else 30.0)
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.groups = 0
        self.stage_seconds: dict[str, float] = {}
        self.stage_videos: dict[str, int] = {}
        self._arrivals: deque[tuple[float, int]] = deque()  # (time, videos done then), over the window
        self._first_failures: list[VideoRecord] = []
        self._last_print = float("-inf")
        self._lock = threading.RLock()  # the ticker thread and the driver's loop both write
        self._stop = threading.Event()

    def resumed(self, n: int) -> None:
        """The build starts, n videos of the total already written by an earlier run."""
        self.skipped = n
        if n:
            self._write_line(f"resuming: {n} of {self.total} videos already written")
        self._start_ticker()

    def record_done(self, record: VideoRecord) -> None:
        with self._lock:
            now = self.clock()
            self.done += 1
            self.failed += not record.ok
            for stage, seconds in record.timings.items():
                self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
                self.stage_videos[stage] = self.stage_videos.get(stage, 0) + 1
            self._arrivals.append((now, self.done))
            # One arrival older than the window stays: the rate is measured from it.
            while len(self._arrivals) > 2 and self._arrivals[1][0] <= now - self.window_s:
                self._arrivals.popleft()
            self._check_same_failure(record)
            self._emit()

    def group_written(self, group: int) -> None:
        with self._lock:
            self.groups += 1
            self._emit()

    def rate(self) -> float | None:
        """Videos per second over the recent window, None until the videos span min_span_s."""
        if not self._arrivals:
            return None
        first_time, first_done = self._arrivals[0]
        span = self.clock() - first_time
        if span < self.min_span_s or self.done == first_done:
            return None
        return (self.done - first_done) / span

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.skipped - self.done) / rate if rate else None

    def slowest_stage(self) -> tuple[str, float] | None:
        """The stage with the most seconds per video so far, and those seconds."""
        means = {stage: seconds / self.stage_videos[stage] for stage, seconds in self.stage_seconds.items()}
        return max(means.items(), key=lambda item: item[1]) if means else None

    def line(self) -> str:
        """The state as one log line (the terminal's bar shows the same fields)."""
        rate, eta, slowest = self.rate(), self.eta_s(), self.slowest_stage()
        fields = [
            f"{self.done}/{self.total - self.skipped} videos",
            f"{self.failed} failed",
            f"{rate:.2f} videos/s (last {self.window_s:.0f} s)" if rate else "videos/s -",
            f"ETA {duration(eta)}" if eta is not None else "ETA -",
            f"slowest stage {slowest[0]} {slowest[1]:.2f} s/video" if slowest else "slowest stage -",
            f"{self.groups} group{'' if self.groups == 1 else 's'} written",
            f"{duration(self.clock() - self.started)} elapsed",
        ]
        return "progress: " + ", ".join(fields)

    def bar(self) -> str:
        """The state as the terminal's one-line bar."""
        remaining = max(self.total - self.skipped, 1)
        filled = round(BAR_WIDTH * self.done / remaining)
        rate, eta, slowest = self.rate(), self.eta_s(), self.slowest_stage()
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total - self.skipped} videos"
            f"  {self.failed} failed  {f'{rate:.2f}' if rate else '-'} videos/s"
            f"  ETA {duration(eta) if eta is not None else '-'}"
            f"  slowest: {f'{slowest[0]} {slowest[1]:.1f} s/video' if slowest else '-'}"
            f"  {duration(self.clock() - self.started)} elapsed"
        )

    def warn(self, text: str) -> None:
        """A line of its own that the bar does not overwrite."""
        self._write_line(f"warning: {text}")

    def finish(self) -> None:
        with self._lock:
            self._stop.set()  # under the lock: no tick redraws the bar after the newline below
            self._emit(force=True)
            if self._tty:
                self.stream.write("\n")
                self.stream.flush()

    def tick(self) -> None:
        """Show the state again if interval_s has passed (the ticker calls this between arrivals too,
        so a terminal's ETA and a log's lines keep coming while the videos take long)."""
        with self._lock:
            if not self._stop.is_set():
                self._emit()

    def _check_same_failure(self, record: VideoRecord) -> None:
        wanted = min(SAME_FAILURE_VIDEOS, self.total - self.skipped)
        if len(self._first_failures) == self.done - 1 < wanted and not record.ok:
            self._first_failures.append(record)
            statuses = {r.status for r in self._first_failures}
            if len(self._first_failures) == wanted and len(statuses) == 1:
                advice = ADVICE.get(record.status, "every video so far failed this way; check the error")
                self.warn(
                    f"the first {wanted} videos all failed with {record.status}"
                    f"{': ' + first_words(record.error) if record.error else ''}. What to do: {advice}"
                )

    def _emit(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        if self._tty:
            self.stream.write("\r\033[K" + self.bar())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _write_line(self, text: str) -> None:
        with self._lock:
            if self._tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = float("-inf")  # redraw the bar under it at the next chance

    def _start_ticker(self) -> None:
        # The thread holds the Progress weakly: a build that ends by an exception (finish() never called)
        # lets it go, and the thread ends with it.
        ref, stop, every = weakref.ref(self), self._stop, min(self.interval_s, 1.0)

        def run() -> None:
            while not stop.wait(every):
                progress = ref()
                if progress is None:
                    return
                progress.tick()
                del progress

        threading.Thread(target=run, name="build-progress", daemon=True).start()
