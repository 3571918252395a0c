"""The cosmo layout's video, encoded from frames of the one decode pass, and where each clip lies in it.

COSMO's loader finds a clip's frames by arithmetic alone (schemas/shards.py): whole seconds of its clip
string, divided by the speed-up, times the mp4's average frame rate. That only lands on the clip's own
frames in an mp4 whose frame k shows the source at exactly k / clip_fps seconds. So the video is made
on a grid, as ffmpeg's fps filter does: frame k is the last decoded frame at or before k / clip_fps
(frames repeat over gaps, variable frame rates and skipped frames), timed k / (clip_fps x speed), every
frame the same duration. The last frame repeats up to the next whole second, so that a last clip
shorter than a second can still be named, and once more: the loader moves a range that reaches the
video's last frame back by one, which would otherwise leave the last clip.

Each clip is then listed under the whole seconds that lie inside it (cosmo_spans): a clip without a
whole second of its own cannot be named without pointing into a neighbour, and is left out.

Scaling, encoding and muxing run on a thread of their own: swscale, x264 and the muxer release the GIL,
so the video is made while the decoding loop goes on. The thread starts with the first frame, after the
scene detector's process has forked. The queue is short: each entry holds a source-size picture.
"""

from __future__ import annotations

import math
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from cosmo_data.schemas.corpus_layout import COSMO_VIDEO_SPEED, cosmo_frame_index, cosmo_frames_read
from cosmo_data.schemas.records import Clip, CosmoVideo
from cosmo_data.stages.frame_sampling import SCALING

# Decoded frames waiting for the encoding thread: enough to ride out an x264 keyframe (12 MB each at 4K).
QUEUE_FRAMES = 4
# The video gets a keyframe at least this often (seconds of the source): the loader seeks to them.
KEYFRAME_S = 2.0
# Clip times are rounded to milliseconds, so a grid point closer than this to a boundary may show
# either shot: no clip claims it.
BOUNDARY_MARGIN_S = 0.001


def mp4_rate(clip_fps: float) -> Fraction:
    """Frames per second of the cosmo mp4: the grid's rate, sped up as COSMO's loader expects."""
    return Fraction(clip_fps * COSMO_VIDEO_SPEED).limit_denominator(1000)


def cosmo_spans(clips: list[Clip], clip_fps: float, frames: int) -> dict[int, tuple[int, int]]:
    """Per clip, the widest whole-second span whose frames, as COSMO's loader reads them, are all its own."""
    fps = float(mp4_rate(clip_fps))
    spans = {}
    for clip in clips:
        # The clip's own frames: the grid points inside it.
        # The video's own start has no neighbour before it to keep clear of.
        first = _grid_index(clip.start_s + BOUNDARY_MARGIN_S, clip_fps) if clip.start_s > 0 else 0
        # The last clip also owns the repeats of its last frame, all but the final one.
        last = frames - 2 if clip is clips[-1] else _grid_index(clip.end_s - BOUNDARY_MARGIN_S, clip_fps) - 1
        start, end = int(clip.start_s), int(clip.end_s) + 1
        while cosmo_frame_index(start, fps) < first:
            start += 1
        while cosmo_frame_index(end, fps) > last + 1:  # the loader's end index is past its last frame
            end -= 1
        read = cosmo_frames_read(start, end, fps, frames) if end > start else range(0)
        if read and first <= read[0] and read[-1] <= last:
            spans[clip.clip_idx] = (start, end)
    return spans


def _grid_index(t_s: float, clip_fps: float) -> int:
    """The first grid point at or after t_s."""
    k = max(0, int(t_s * clip_fps) - 1)
    while k / clip_fps < t_s:
        k += 1
    return k


class CosmoVideoEncoder:
    def __init__(self, path: Path, clip_fps: float, max_height: int):
        self._path = path
        self._clip_fps = clip_fps
        self._rate = mp4_rate(clip_fps)
        self._max_height = max_height
        self._held: av.VideoFrame | None = None
        self.frames = 0  # grid frames handed to the encoder so far
        self._queue: queue.Queue[tuple[int, av.VideoFrame] | None] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._reformatter = VideoReformatter()

    def offer(self, t_s: float, frame: av.VideoFrame) -> None:
        """Each decoded frame in display order, t_s seconds from the video's start."""
        if self._held is not None:
            self._emit_until(t_s)
        self._held = frame

    def finish(self, end_s: float) -> None:
        """The last frame up to end_s, repeated to the next whole second (so that a last clip shorter
        than a second still has one) and once more; waits until the mp4 is complete."""
        if self._held is not None:
            self._emit_until(math.ceil(end_s - 1e-6))
            self._put(self._held)
        self.close()

    def close(self) -> None:
        """Stops the encoding thread (also after a failure); raises what went wrong on it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._held = None
        if self._error is not None:
            raise self._error

    def _emit_until(self, t_s: float) -> None:
        # Decoded timestamps are ticks: a microsecond of slack keeps a frame on a grid point its own.
        while self.frames / self._clip_fps < t_s - 1e-6:
            self._put(self._held)

    def _put(self, frame: av.VideoFrame) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._encode_all, name="cosmo-video", daemon=True)
            self._thread.start()
        self._queue.put((self.frames, frame))
        self.frames += 1

    def _encode_all(self) -> None:
        # Every entry is taken until close()'s None, also after an error, so _put never blocks for good.
        small: tuple[av.VideoFrame, av.VideoFrame] | None = None
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            index, frame = item
            try:
                if small is None or small[0] is not frame:
                    small = (frame, self._scaled(frame))
                picture = small[1]
                picture.pts = index
                self._mux(self._stream.encode(picture))
            except BaseException as exc:  # raised in the decoding thread, at its next frame or at close
                self._error = exc
        try:
            self._end()
        except BaseException as exc:
            self._error = self._error or exc

    def _end(self) -> None:
        """Flushes x264 and writes the mp4's index."""
        try:
            if self._error is None and self._stream is not None:
                self._mux(self._stream.encode(None))
        finally:
            if self._container is not None:
                self._container.close()

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            packet.duration = 1  # every frame lasts one grid step, the last one too
            self._container.mux(packet)

    def _scaled(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self._stream is None:
            self._stream = self._open(frame)
        picture = self._reformatter.reformat(
            frame,
            width=self._stream.width,
            height=self._stream.height,
            format="yuv420p",
            interpolation=SCALING,
            threads=1,
        )
        picture.time_base = 1 / self._rate
        return picture

    def _open(self, frame: av.VideoFrame) -> av.VideoStream:
        self._container = av.open(str(self._path), "w", format="mp4", options={"movflags": "+faststart"})
        height = min(self._max_height, frame.height) // 2 * 2
        width = max(2, round(frame.width * height / frame.height / 2) * 2)  # x264's 4:2:0 wants even sizes
        stream = self._container.add_stream("libx264", rate=self._rate)
        codec = stream.codec_context
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = 1 / self._rate
        codec.gop_size = max(1, round(self._clip_fps * KEYFRAME_S))
        codec.options = {"preset": "ultrafast", "crf": "28", "x264-params": "bframes=0"}
        codec.thread_count = 1  # small pictures; the source decoder's threads keep the cores
        stream.time_base = 1 / self._rate
        return stream


def read_cosmo_video(path: Path, clips: list[Clip], clip_fps: float, frames: int) -> CosmoVideo:
    return CosmoVideo(
        mp4=path.read_bytes(),
        fps=float(mp4_rate(clip_fps)),
        frames=frames,
        spans=cosmo_spans(clips, clip_fps, frames),
    )
