"""One decode pass per video (PyAV): probe, scene boundaries, keyframes and 16 kHz mono audio.

PyAV rather than decord: it demuxes and decodes audio and video in the same pass, gives per-frame
control (so frames that no one needs are decoded but never converted), and is maintained.

Frames that no other frame refers to (most B-frames of a typical upload) are not even decoded while
the frames left still come at detect_fps or faster; that is a third of the decoding work of a
High-profile H.264 stream. Scene detection runs in a process beside the decoder (DetectorProcess).

Every decoded frame is looked at once and dropped. Only two kinds are converted, both straight from
the decoder's YUV into small images (never a full-size RGB copy, whatever the source resolution):
frames at detect_fps to detect_width for the scene detectors, and a lower-rate stream of keyframe
candidates to the keyframe size, kept as JPEG in a pool of at most keyframes.max_candidates. Rates are
kept on a time grid (_RateSampler), so they hold for variable frame rates and skipped frames alike.
Keyframes are picked from that pool per clip once the boundaries are known, so memory stays bounded
for long and 4K videos.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from cosmo_data.schemas.config import BuildConfig, KeyframesConfig
from cosmo_data.schemas.records import (
    DECODE_FAILED,
    NO_VIDEO_STREAM,
    TOO_LARGE,
    Clip,
    Frame,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.scenes import (
    GRADUAL,
    DetectorProcess,
    clips_from_boundaries,
)

AUDIO_RATE = 16000
# Swscale's area averaging: a proper box filter when shrinking (no aliasing noise for the detectors)
# and about twice as fast as its bilinear at these ratios. One thread: the outputs are tiny and the
# decoder's threads already use the cores.
SCALING = "AREA"
# Keyframes keep this far from a hard edge of their clip (a cut or a split); from a gradual edge they
# keep half the transition window, where the two shots are blended.
EDGE_MARGIN_S = 0.1
# Up to this height the decoder gets a deeper frame-thread pipeline. Taller frames take long enough
# to decode that Python's share hides behind them, and each frame in flight costs memory (4K: peak
# RSS 253 MB with ffmpeg's count of threads, 344 MB with twice as many).
DEEP_PIPELINE_MAX_HEIGHT = 1080
# ffmpeg's own limit for automatic frame threads.
MAX_DECODER_THREADS = 16
# Header and decoded durations closer than this agree; further apart, the decoded one is the truth.
DURATION_SLACK_S = 0.5


@dataclass
class DecodedVideo:
    duration_s: float
    fps: float
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # counter-clockwise degrees a player turns the picture (ffmpeg's display matrix)
    has_audio: bool
    video_codec: str
    clips: list[Clip]
    frames: list[Frame]
    audio_pcm: bytes | None
    # Evidence of the single pass, for tests and the benchmark.
    frames_decoded: int = 0
    frames_sampled: int = 0
    candidates_encoded: int = 0
    decode_error: str | None = None  # set when decoding stopped early but some frames came out


def decode_video(path: Path, record: VideoRecord, config: BuildConfig, clip_video: Path | None = None) -> None:
    """Fill the record's probe fields, clips, keyframes and audio from one pass over `path`.

    Raises VideoFailure(NO_VIDEO_STREAM) for files without video and VideoFailure(DECODE_FAILED)
    with ffmpeg's own words (temp paths replaced by the source) when no frame decodes.
    """
    record.file_size = path.stat().st_size
    decoded = decode_pass(path, config, record.source, clip_video)
    record.duration_s = decoded.duration_s
    record.fps = decoded.fps
    record.width = decoded.width
    record.height = decoded.height
    record.rotation = decoded.rotation
    record.has_audio = decoded.has_audio
    record.video_codec = decoded.video_codec
    record.clips = decoded.clips
    record.frames = decoded.frames
    record.audio_pcm = decoded.audio_pcm


def decode_pass(path: Path, config: BuildConfig, source: str, clip_video: Path | None = None) -> DecodedVideo:
    """One pass over path; with clip_video, also write the small copy the cosmo clips are cut from."""
    url = "file:" + str(path.resolve())  # "file:" keeps names like "a:b.mp4" from reading as protocols
    aliases = [url, str(path.resolve()), str(path)]
    with _ffmpeg_errors_logged():
        try:
            container = av.open(url, metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise VideoFailure(DECODE_FAILED, _describe(exc, aliases, source)) from None
        with container:
            return _scan(container, config, source, aliases, clip_video)


def _scan(
    container: av.container.InputContainer,
    config: BuildConfig,
    source: str,
    aliases: list[str],
    clip_video: Path | None,
) -> DecodedVideo:
    # Cover art in an audio file is a one-picture "video" stream: not a video.
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = (
            ", ".join(
                f"{s.type} ({s.codec_context.name}{', cover art' if s in container.streams.video else ''})"
                for s in container.streams
            )
            or "none"
        )
        raise VideoFailure(NO_VIDEO_STREAM, f"{source} has no video stream (streams: {kinds})")
    video = videos[0]
    coded = video.codec_context
    limit = config.video.max_decode_height
    if coded.height and min(coded.width, coded.height) > limit:
        # A decoded picture is never converted at full size, but the decoder's own frame pool is:
        # refusing what is larger than the limit bounds a worker's memory.
        raise VideoFailure(
            TOO_LARGE, f"{source} is {coded.width}x{coded.height}; the limit is {limit} lines (video.max_decode_height)"
        )
    video.thread_type = "AUTO"  # frame + slice threads, as ffmpeg itself decodes
    if coded.height <= DEEP_PIPELINE_MAX_HEIGHT:
        # Twice ffmpeg's own count of frame threads (cores + 1): the deeper pipeline keeps decoding
        # while Python looks at a frame (20-minute 360p upload on 2 cores: 35 s -> 30 s for the pass).
        coded.thread_count = min(MAX_DECODER_THREADS, 2 * ((os.cpu_count() or 1) + 1))
    if config.video.skip_unreferenced_frames:
        coded.skip_frame = "NONREF"
    audio_stream = container.streams.audio[0] if container.streams.audio else None
    want_audio = audio_stream is not None and config.video.audio
    origin_s = container.start_time / av.time_base if container.start_time is not None else 0.0
    fps = _stream_fps(video)

    clip_encoder = _ClipVideoEncoder(clip_video, config) if clip_video else None
    scan = _VideoScan(config, coded, fps, origin_s, clip_encoder)
    audio = _AudioCollector(origin_s) if want_audio else None
    streams = [video, audio_stream] if want_audio else [video]
    error: str | None = None
    try:
        try:
            for packet in container.demux(streams):
                if packet.stream.type == "video":
                    for frame in packet.decode():
                        scan.add(frame)
                else:
                    audio.add_packet(packet)
        except av.FFmpegError as exc:  # truncated or corrupt: keep what decoded before the damage
            error = _describe(exc, aliases, source)
        if scan.frames_decoded == 0:
            _, last = av.logging.get_last_error()  # (how many errors so far, (level, component, text) or None)
            raise VideoFailure(DECODE_FAILED, error or _no_frames_message(source, last, aliases))
        boundaries = scan.scenes.finish(scan.end_s)
    finally:
        scan.close()

    decoded_end_s = scan.end_s
    probed_s = _probe_duration(container, video, origin_s)
    # The header's duration, unless decoding says otherwise (a truncated file still claims it all).
    trust_probe = error is None and probed_s is not None and abs(probed_s - decoded_end_s) <= DURATION_SLACK_S
    duration_s = probed_s if trust_probe else decoded_end_s
    clips = clips_from_boundaries(boundaries, decoded_end_s, config.scenes.max_clip_s)
    frames = scan.candidates.pick(clips, config.scenes.gradual_window_s)
    width, height = scan.display_size
    return DecodedVideo(
        duration_s=round(duration_s, 3),
        fps=round(fps, 3),
        width=width,
        height=height,
        rotation=scan.rotation,
        has_audio=audio_stream is not None,
        video_codec=video.codec_context.name,
        clips=clips,
        frames=frames,
        audio_pcm=audio.pcm() if audio is not None else None,
        frames_decoded=scan.frames_decoded,
        frames_sampled=scan.frames_sampled,
        candidates_encoded=scan.candidates.encoded,
        decode_error=error,
    )


class _RateSampler:
    """Takes frames at about `fps` from decoded frames at any spacing: a frame is taken once it reaches
    the next point of a 1/fps grid (at 25 fps and 8 fps: every 3rd frame, now and then the 4th), and
    never within half a step of the last one taken, so the grid cannot crowd samples after a gap."""

    def __init__(self, fps: float):
        self.interval_s = 1.0 / fps
        self._due_s: float | None = None

    def take(self, t_s: float) -> bool:
        # Timestamps are milliseconds or ticks: a microsecond of slack keeps grid points exact.
        if self._due_s is not None and t_s < self._due_s - 1e-6:
            return False
        grid_s = t_s if self._due_s is None else self._due_s
        self._due_s = max(grid_s + self.interval_s, t_s + self.interval_s / 2)
        return True


class _VideoScan:
    """Looks at each decoded frame once: feeds frames at detect_fps to the detectors, keeps keyframe
    candidates, and turns the decoder's skipping of unreferenced frames off where it leaves too few."""

    def __init__(
        self,
        config: BuildConfig,
        codec: av.VideoCodecContext,
        fps: float,
        origin_s: float,
        clip_video: _ClipVideoEncoder | None,
    ):
        self.clip_video = clip_video
        self._codec = codec
        self.scenes = DetectorProcess(config.scenes)
        self.candidates = _CandidatePool(config.keyframes)
        self._config = config
        self._origin_s = origin_s
        self._frame_s = 1.0 / fps
        self._detect = _RateSampler(config.scenes.detect_fps)
        self._detect_reformatter = VideoReformatter()
        self.frames_decoded = 0
        self.frames_sampled = 0
        self.end_s = 0.0
        self.rotation = 0
        self.display_size = (0, 0)
        self._last_t = -1.0

    def add(self, frame: av.VideoFrame) -> None:
        first = self.frames_decoded == 0
        self.frames_decoded += 1
        previous_s = self._last_t
        t_s = self._time(frame)
        self.end_s = max(self.end_s, t_s + self._frame_s)
        if first:
            self.rotation = round(frame.rotation or 0) % 360
            swap = self.rotation in (90, 270)
            self.display_size = (frame.height, frame.width) if swap else (frame.width, frame.height)
        elif self._codec.skip_frame != "DEFAULT" and t_s - previous_s > self._detect.interval_s + self._frame_s / 2:
            # Without its unreferenced frames the stream is sparser than the detectors need (e.g.
            # three B-frames between references): decode every frame from here on.
            self._codec.skip_frame = "DEFAULT"
        if self._detect.take(t_s):
            self.frames_sampled += 1
            width, height = _fit_width(frame.width, frame.height, self._config.scenes.detect_width)
            small = self._detect_reformatter.reformat(
                frame, width=width, height=height, format="bgr24", interpolation=SCALING, threads=1
            ).to_ndarray()
            self.scenes.push(t_s, small)
        self.candidates.offer(t_s, frame, self.rotation)
        if self.clip_video is not None:
            self.clip_video.offer(t_s, frame)

    def close(self) -> None:
        self.scenes.close()
        if self.clip_video is not None:
            self.clip_video.close()

    def _time(self, frame: av.VideoFrame) -> float:
        """Seconds from the container's start; frames without a timestamp follow the previous one."""
        t_s = frame.time - self._origin_s if frame.time is not None else self._last_t + self._frame_s
        t_s = max(t_s, self._last_t + 1e-6, 0.0)
        self._last_t = t_s
        return t_s


class _ClipVideoEncoder:
    """A small, low-rate copy of the video encoded from frames of the same pass (x264, no audio).

    The cosmo format's clip mp4s are cut from it (cut_clip_mp4s), so making them never decodes the
    source again. Timestamps are the source's, in milliseconds, so clip times cut it exactly.

    Scaling, encoding and muxing run on a thread of their own: swscale, x264 and the muxer release the
    GIL, so the copy is made while the decoding loop goes on (in the loop they were a quarter of its
    time). The queue is short, so only a few decoded frames are held at once.
    """

    def __init__(self, path: Path, config: BuildConfig):
        self._sampler = _RateSampler(config.video.clip_fps)
        self._max_height = config.video.clip_max_height
        self._rate = config.video.clip_fps
        self._container = av.open(str(path), "w", format="mp4")
        self._stream: av.VideoStream | None = None
        self._reformatter = VideoReformatter()
        self._frames: queue.Queue[tuple[float, av.VideoFrame] | None] = queue.Queue(maxsize=CLIP_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode_all, name="cosmo-clip-copy", daemon=True)
        self._thread.start()

    def offer(self, t_s: float, frame: av.VideoFrame) -> None:
        if not self._sampler.take(t_s):
            return
        if self._error is not None:
            raise self._error
        self._frames.put((t_s, frame))

    def close(self) -> None:
        self._frames.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _encode_all(self) -> None:
        # Every frame is taken until close()'s None, also after an error, so offer() never blocks.
        while (item := self._frames.get()) is not None:
            if self._error is None:
                self._record_failure(self._encode, *item)
        self._record_failure(self._finish)

    def _record_failure(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except BaseException as exc:  # raised in the decoding thread, at its next offer or at close
            self._error = self._error or exc

    def _finish(self) -> None:
        try:
            if self._error is None and self._stream is not None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def _encode(self, t_s: float, frame: av.VideoFrame) -> None:
        if self._stream is None:
            self._stream = self._open_stream(frame)
        small = self._reformatter.reformat(
            frame,
            width=self._stream.width,
            height=self._stream.height,
            format="yuv420p",
            interpolation=SCALING,
            threads=1,
        )
        small.pts = round(t_s * 1000)
        small.time_base = MILLISECOND
        self._container.mux(self._stream.encode(small))

    def _open_stream(self, frame: av.VideoFrame) -> av.VideoStream:
        height = min(self._max_height, frame.height)
        width = max(2, round(frame.width * height / frame.height / 2) * 2)  # x264's 4:2:0 wants even sizes
        stream = self._container.add_stream("libx264", rate=_clip_rate(self._rate))
        _configure_clip_encoder(stream.codec_context, width, height - height % 2, self._rate)
        return stream


# Decoded frames waiting for the clip copy's thread: enough to ride out an x264 keyframe. Each holds a
# source-size picture (12 MB at 4K), so the queue stays short.
CLIP_QUEUE_FRAMES = 4
MILLISECOND = Fraction(1, 1000)
# The small copy gets a keyframe at least this often: cutting a clip that starts between two
# keyframes re-encodes at most this much of it; everything after its first keyframe is copied.
CLIP_KEYFRAME_S = 2.0


def _clip_rate(clip_fps: float) -> Fraction:
    return Fraction(clip_fps).limit_denominator(1000)


def _configure_clip_encoder(codec: av.VideoCodecContext, width: int, height: int, clip_fps: float) -> None:
    """The one x264 set-up for the small copy and for re-encoded clip starts: identical settings give
    identical stream headers, so both kinds of packets can follow each other in one clip."""
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = MILLISECOND
    codec.framerate = _clip_rate(clip_fps)
    codec.gop_size = max(1, round(clip_fps * CLIP_KEYFRAME_S))
    # No B-frames (decode order is display order) and closed GOPs: every keyframe starts a clean cut.
    codec.options = {"preset": "ultrafast", "crf": "28", "x264-params": "bframes=0:open-gop=0"}
    codec.thread_count = 1  # small pictures; the source decoder's threads keep the cores


@dataclass
class _Candidate:
    t_s: float
    width: int
    height: int
    jpeg: bytes


class _CandidatePool:
    """Keyframe candidates as JPEG at keyframe size; bounded by dropping every other one when full."""

    def __init__(self, config: KeyframesConfig):
        self.config = config
        self.pool: list[_Candidate] = []
        self.encoded = 0
        self._sampler = _RateSampler(config.candidate_fps)
        self._reformatter = VideoReformatter()

    def offer(self, t_s: float, frame: av.VideoFrame, rotation: int) -> None:
        if not self._sampler.take(t_s):
            return
        width, height = _fit_longest(frame.width, frame.height, self.config.size)
        image = self._reformatter.reformat(
            frame, width=width, height=height, format="bgr24", interpolation=SCALING, threads=1
        ).to_ndarray()
        if rotation:
            image = np.ascontiguousarray(np.rot90(image, rotation // 90))
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            return
        self.encoded += 1
        self.pool.append(_Candidate(t_s, image.shape[1], image.shape[0], jpeg.tobytes()))
        if len(self.pool) > self.config.max_candidates:
            self.pool = self.pool[::2]
            self._sampler.interval_s *= 2

    def pick(self, clips: list[Clip], transition_s: float) -> list[Frame]:
        """per_clip frames per clip, evenly spaced away from the clip's edges, max_per_video in all."""
        chosen: list[tuple[int, _Candidate]] = []
        used: set[int] = set()
        slots = _slots_per_clip(len(clips), self.config.per_clip, self.config.max_per_video)
        for clip_number, (clip, count) in enumerate(zip(clips, slots, strict=True)):
            if count == 0:
                continue
            next_boundary = clips[clip_number + 1].boundary if clip_number + 1 < len(clips) else "end"
            for target in _targets(clip, next_boundary, count, transition_s):
                index = self._nearest(target, clip, used)
                if index is not None:
                    used.add(index)
                    chosen.append((clip.clip_idx, self.pool[index]))
        chosen.sort(key=lambda item: item[1].t_s)
        return [
            Frame(clip_idx=clip_idx, frame_idx=n, t_s=round(c.t_s, 3), width=c.width, height=c.height, jpeg=c.jpeg)
            for n, (clip_idx, c) in enumerate(chosen)
        ]

    def _nearest(self, target_s: float, clip: Clip, used: set[int]) -> int | None:
        inside = [i for i, c in enumerate(self.pool) if clip.start_s <= c.t_s < clip.end_s and i not in used]
        return min(inside, key=lambda i: abs(self.pool[i].t_s - target_s)) if inside else None


def _slots_per_clip(n_clips: int, per_clip: int, max_per_video: int) -> list[int]:
    """How many keyframes each clip gets: per_clip each, or the budget spread evenly over the clips."""
    if n_clips * per_clip <= max_per_video:
        return [per_clip] * n_clips
    slots = [0] * n_clips
    # Evenly spaced clip positions, one keyframe per position; positions wrap when the budget allows
    # more than one keyframe per clip.
    for k in range(max_per_video):
        slots[int((k + 0.5) * n_clips / max_per_video) % n_clips] += 1
    return slots


def _targets(clip: Clip, next_boundary: str, count: int, window_s: float) -> list[float]:
    def margin(kind: str) -> float:
        return window_s / 2 if kind == GRADUAL else EDGE_MARGIN_S

    start, end = clip.start_s + margin(clip.boundary), clip.end_s - margin(next_boundary)
    if end <= start:  # a clip shorter than its margins: aim at its middle
        start = end = (clip.start_s + clip.end_s) / 2
    return [start + (k + 0.5) * (end - start) / count for k in range(count)]


class _AudioCollector:
    """Decodes the audio packets of the same demux pass into 16 kHz mono s16, aligned to time 0.

    Decoded frames (about 1000 samples each) gather in a FIFO and are resampled a few seconds at a
    time: one resampler call per frame cost twice as much as decoding the audio.
    """

    def __init__(self, origin_s: float):
        self._origin_s = origin_s
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._fifo = av.AudioFifo()
        self._pcm = bytearray()
        self._started = False

    def add_packet(self, packet: av.Packet) -> None:
        try:
            frames = packet.decode()
        except av.FFmpegError:
            return  # a damaged audio packet costs its few milliseconds, not the video
        for frame in frames:
            if not self._started:
                self._align_start(frame)
            frame.pts = None  # the FIFO would refuse a gap in timestamps; samples simply follow on
            self._fifo.write(frame)
            if self._fifo.samples >= AUDIO_CHUNK_S * frame.sample_rate:
                self._resample(self._fifo.read())

    def pcm(self) -> bytes:
        if self._fifo.samples:
            self._resample(self._fifo.read())
        self._resample(None)
        return bytes(self._pcm)

    def _align_start(self, frame: av.AudioFrame) -> None:
        """Sample 0 is time 0: pad with silence when audio starts late (a late start shifts ASR)."""
        self._started = True
        if frame.time is not None:
            lead_samples = round((frame.time - self._origin_s) * AUDIO_RATE)
            if lead_samples > 0:
                self._pcm.extend(bytes(2 * lead_samples))

    def _resample(self, frame: av.AudioFrame | None) -> None:
        for resampled in self._resampler.resample(frame):
            # Mono s16 is one packed plane; its buffer may be padded past the last sample.
            self._pcm.extend(memoryview(resampled.planes[0])[: resampled.samples * 2])


# Decoded audio waits in the FIFO until there is this much of it (seconds).
AUDIO_CHUNK_S = 5


def _stream_fps(video: av.VideoStream) -> float:
    for rate in (video.average_rate, video.guessed_rate, video.base_rate):
        if rate:
            return float(rate)
    return 25.0


def _probe_duration(container: av.container.InputContainer, video: av.VideoStream, origin_s: float) -> float | None:
    if video.duration is not None and video.time_base is not None:
        start = video.start_time * video.time_base if video.start_time is not None else Fraction(0)
        return float(start + video.duration * video.time_base) - origin_s
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _fit_width(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Scale to target_width (never up), keeping the aspect ratio; even sizes for swscale's chroma."""
    new_width = min(width, target_width)
    new_height = max(2, round(height * new_width / width / 2) * 2)
    return max(2, new_width // 2 * 2), new_height


def _fit_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@contextmanager
def _ffmpeg_errors_logged():
    """Let ffmpeg's error lines reach PyAV (off by default) so failures carry ffmpeg's own words."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False):  # keep them out of the process log; the failure message has them
            yield
    finally:
        av.logging.set_level(previous)


def _describe(exc: av.FFmpegError, aliases: list[str], source: str) -> str:
    """ffmpeg's words ("Invalid data found when processing input" and its last error line, e.g.
    "moov atom not found"), naming the source instead of the temporary path."""
    where = source if exc.filename in aliases or not exc.filename else f"{source} ({exc.filename})"
    message = f"{exc.strerror}: '{where}'"
    if exc.log:
        _, component, line = exc.log
        message += f"; last error log: [{component}] {line.strip()}"
    return _scrub(message, aliases, source)


def _scrub(message: str, aliases: list[str], source: str) -> str:
    for alias in sorted(aliases, key=len, reverse=True):
        message = message.replace(alias, source)
    return message


def _no_frames_message(source: str, last_log: tuple | None, aliases: list[str]) -> str:
    message = f"no video frame could be decoded from {source}"
    if last_log:
        _, component, line = last_log
        message += f"; last error log: [{component}] {line.strip()}"
    return _scrub(message, aliases, source)


# Clip mp4s for the COSMO shard format ------------------------------------------------------------


def cut_clip_mp4s(path: Path, clips: list[Clip], clip_fps: float) -> dict[int, bytes]:
    """mp4 bytes per clip, cut from the small copy made in the decode pass, without re-encoding it.

    A clip holds the copy's frames in [start_s, end_s), timestamps starting at 0. Its packets are
    copied from the first keyframe on; frames before that (a clip starts wherever the shot does, the
    copy has a keyframe every CLIP_KEYFRAME_S) are decoded from their group of pictures and encoded
    again with the copy's own settings, so the clip starts on a keyframe exactly at its first frame.
    Clips without a frame of the copy (shorter than its frame interval) get no mp4. clip_fps is
    the rate the copy was made at (video.clip_fps).
    """
    if not clips:
        return {}
    with av.open(str(path)) as source, tempfile.TemporaryDirectory(prefix="cosmo_clips_") as scratch:
        stream = source.streams.video[0]
        cutter = _ClipCutter(stream, sorted(clips, key=lambda c: c.start_s), Path(scratch), clip_fps)
        for gop in _groups_of_pictures(source.demux(stream)):
            cutter.add(gop)
        return cutter.finish()


def _groups_of_pictures(packets: Iterator[av.Packet]) -> Iterator[list[av.Packet]]:
    """Packets grouped from one keyframe to the next (the demuxer's flush packets dropped)."""
    gop: list[av.Packet] = []
    for packet in packets:
        if packet.pts is None:
            continue
        if packet.is_keyframe and gop:
            yield gop
            gop = []
        gop.append(packet)
    if gop:
        yield gop


class _ClipOutput:
    """One clip's mp4 being written; `encoder` is set while its frames are being re-encoded."""

    def __init__(self, clip: Clip, path: Path, template: av.VideoStream):
        self.clip = clip
        self.path = path
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream_from_template(template)
        self.first_ms: int | None = None
        self.encoder: av.VideoCodecContext | None = None

    def write(self, packets: list[av.Packet]) -> None:
        """Copied packets (the copy's time base) and re-encoded ones (milliseconds), rebased to 0."""
        for packet in packets:
            t_ms = _packet_ms(packet)
            if self.first_ms is None:
                self.first_ms = t_ms
            packet.pts = packet.dts = t_ms - self.first_ms  # no B-frames: decode order is display order
            packet.time_base = MILLISECOND
            packet.stream = self.stream
            self.container.mux(packet)

    def end_encoding(self, to_mp4: Callable[[list[av.Packet]], list[av.Packet]]) -> None:
        if self.encoder is not None:
            self.write(to_mp4(self.encoder.encode(None)))
            self.encoder = None

    def close(self, to_mp4: Callable[[list[av.Packet]], list[av.Packet]]) -> bytes | None:
        self.end_encoding(to_mp4)
        self.container.close()
        return self.path.read_bytes() if self.first_ms is not None else None


class _ClipCutter:
    def __init__(self, stream: av.VideoStream, clips: list[Clip], scratch: Path, clip_fps: float):
        self._template = stream
        self._clips = clips
        self._scratch = scratch
        self._open: dict[int, _ClipOutput] = {}
        self._done: dict[int, bytes] = {}
        self._clip_fps = clip_fps  # x264 derives the headers' level and timing from it
        # mp4 keeps H.264 headers (SPS, PPS) in the stream's avcC and length-prefixes each NAL unit;
        # x264 writes start codes. Re-encoded starts can only precede copied packets if the encoder
        # writes the same headers as the copy's; if not (another x264 build, say), whole clips are
        # re-encoded.
        self._length_size, copy_headers = _avcc_headers(stream.codec_context.extradata)
        self._headers_match = _annexb_nal_units(self._new_encoder().extradata) == copy_headers

    def add(self, gop: list[av.Packet]) -> None:
        times = [_packet_ms(p) for p in gop]
        self._close_clips_before(times[0])
        decoded: dict[int, av.VideoFrame] | None = None
        for clip in self._clips:
            start_ms, end_ms = _clip_ms(clip)
            inside = [p for p, t in zip(gop, times, strict=True) if start_ms <= t < end_ms]
            if not inside:
                continue
            output = self._output(clip)
            # From a keyframe on, packets are copied (unless this clip is re-encoded whole).
            if inside[0] is gop[0] and (self._headers_match or output.encoder is None):
                output.end_encoding(self._as_mp4)
                output.write(inside)
                continue
            if decoded is None:
                decoded = self._decode(gop)
            if output.encoder is None:
                output.encoder = self._new_encoder()
            for packet in inside:
                output.write(self._as_mp4(output.encoder.encode(decoded[packet.pts])))

    def finish(self) -> dict[int, bytes]:
        self._close_clips_before(None)
        return self._done

    def _output(self, clip: Clip) -> _ClipOutput:
        if clip.clip_idx not in self._open:
            path = self._scratch / f"clip_{clip.clip_idx:05d}.mp4"
            self._open[clip.clip_idx] = _ClipOutput(clip, path, self._template)
        return self._open[clip.clip_idx]

    def _close_clips_before(self, t_ms: int | None) -> None:
        for clip_idx, output in list(self._open.items()):
            if t_ms is None or _clip_ms(output.clip)[1] <= t_ms:
                mp4 = output.close(self._as_mp4)
                if mp4 is not None:
                    self._done[clip_idx] = mp4
                del self._open[clip_idx]

    def _decode(self, gop: list[av.Packet]) -> dict[int, av.VideoFrame]:
        """The group's frames keyed by their packets' pts, timed in milliseconds for the encoder."""
        decoder = av.CodecContext.create(self._template.codec_context.name, "r")
        decoder.extradata = self._template.codec_context.extradata
        frames: dict[int, av.VideoFrame] = {}
        for packet in [*gop, None]:
            for frame in decoder.decode(packet):
                frames[frame.pts] = frame
        for pts, frame in frames.items():
            frame.pts = round(pts * self._template.time_base * 1000)
            frame.time_base = MILLISECOND
            frame.pict_type = PictureType.NONE  # the encoder decides where its keyframes go
        return frames

    def _as_mp4(self, packets: list[av.Packet]) -> list[av.Packet]:
        """Encoder packets with their NAL units length-prefixed, as the copy's mp4 packets are."""
        converted = []
        for packet in packets:
            units = _annexb_nal_units(bytes(packet))
            mp4_packet = av.Packet(b"".join(len(u).to_bytes(self._length_size, "big") + u for u in units))
            mp4_packet.pts, mp4_packet.time_base = packet.pts, packet.time_base
            mp4_packet.is_keyframe = packet.is_keyframe
            converted.append(mp4_packet)
        return converted

    def _new_encoder(self) -> av.VideoCodecContext:
        encoder = av.CodecContext.create("libx264", "w")
        codec = self._template.codec_context
        _configure_clip_encoder(encoder, codec.width, codec.height, self._clip_fps)
        encoder.flags |= av.codec.context.Flags.global_header  # the mp4 keeps the headers, as for the copy
        encoder.open()
        return encoder


def _annexb_nal_units(data: bytes | None) -> list[bytes]:
    """NAL units of an H.264 byte stream (start-code separated); trailing zero bytes belong to the
    next start code. H.264's emulation prevention keeps 00 00 01 out of the units themselves."""
    return [unit.rstrip(b"\0") for unit in (data or b"").split(b"\0\0\1") if unit.rstrip(b"\0")]


def _avcc_headers(extradata: bytes | None) -> tuple[int, list[bytes]]:
    """(NAL length size, [SPS..., PPS...]) from an mp4 avcC box payload (ISO/IEC 14496-15)."""
    data = extradata or b""
    if len(data) < 7 or data[0] != 1:
        return 4, []
    length_size = (data[4] & 3) + 1
    units, at = [], 5
    for count_mask in (0x1F, 0xFF):  # SPS count (low 5 bits), then PPS count
        count, at = data[at] & count_mask, at + 1
        for _ in range(count):
            size = int.from_bytes(data[at : at + 2], "big")
            units.append(data[at + 2 : at + 2 + size])
            at += 2 + size
    return length_size, units


def _packet_ms(packet: av.Packet) -> int:
    return round(packet.pts * packet.time_base * 1000)


def _clip_ms(clip: Clip) -> tuple[int, int]:
    return round(clip.start_s * 1000), round(clip.end_s * 1000)
