"""A live view of a build: videos done/failed and per-stage throughput, one refreshing line."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cosmo_data.schemas.records import VideoRecord


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, interval_s: float = 2.0):
        self.total = total
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.groups = 0
        self.stage_seconds: dict[str, float] = {}
        self.stage_videos: dict[str, int] = {}
        self._last_print = 0.0
        self._tty = self.stream.isatty()

    def resumed(self, n: int) -> None:
        self.skipped = n
        if n:
            self._emit(f"resuming: {n} of {self.total} videos already written", force=True)

    def record_done(self, record: VideoRecord) -> None:
        self.done += 1
        self.failed += not record.ok
        for stage, seconds in record.timings.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
            self.stage_videos[stage] = self.stage_videos.get(stage, 0) + 1
        self._emit(self.line())

    def group_written(self, group: int) -> None:
        self.groups += 1
        self._emit(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        remaining = self.total - self.skipped
        stages = "  ".join(
            f"{stage} {self.stage_videos[stage] / seconds:.2f}/s" if seconds > 0 else f"{stage} -"
            for stage, seconds in self.stage_seconds.items()
        )
        return (
            f"videos {self.done}/{remaining} ({self.failed} failed)  groups written {self.groups}  "
            f"{self.done / elapsed:.2f} videos/s  per worker: {stages}"
        )

    def warn(self, text: str) -> None:
        """A line of its own that the progress line does not overwrite."""
        if self._tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"warning: {text}\n")
        self.stream.flush()

    def finish(self) -> None:
        self._emit(self.line(), force=True)
        if self._tty:
            self.stream.write("\n")

    def _emit(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        if self._tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
