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
kept on a time grid (RateSampler), so they hold for variable frame rates and skipped frames alike.
Keyframes are picked from that pool per clip once the boundaries are known, so memory stays bounded
for long and 4K videos.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np
from av.video.reformatter import VideoReformatter

from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DECODE_FAILED,
    NO_VIDEO_STREAM,
    TOO_LARGE,
    Clip,
    CosmoVideo,
    Frame,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.audio import AudioCollector
from cosmo_data.stages.cosmo_video import CosmoVideoEncoder, read_cosmo_video
from cosmo_data.stages.cuts import ANALYSIS_WIDTH as CUT_ANALYSIS_WIDTH
from cosmo_data.stages.cuts import DETECTOR as SPIKE
from cosmo_data.stages.frame_sampling import SCALING, RateSampler, fit_width
from cosmo_data.stages.frame_signals import FrameSignals
from cosmo_data.stages.keyframes import CandidatePool, wanted_keyframes
from cosmo_data.stages.scenes import TRANSNETV2, clips_from_boundaries, detector_process

# Up to this height the decoder gets a deeper frame-thread pipeline. Taller frames take long enough
# to decode that Python's share hides behind them, and each frame in flight costs memory (4K: peak
# RSS 253 MB with ffmpeg's count of threads, 344 MB with twice as many).
DEEP_PIPELINE_MAX_HEIGHT = 1080
# ffmpeg's own limit for automatic frame threads.
MAX_DECODER_THREADS = 16
# TransNetV2's input size (stages/transnet.py; not imported here, so the decoder never loads torch).
TRANSNET_WIDTH, TRANSNET_HEIGHT = 48, 27
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
    cosmo_video: CosmoVideo | None = None
    # Evidence of the single pass, for tests and the benchmark.
    frames_decoded: int = 0
    frames_sampled: int = 0
    candidates_encoded: int = 0
    # Set when decoding stopped early but some frames came out: where, of how long, and ffmpeg's words.
    decode_error: str | None = None
    keyframe_shortfall: int = 0  # keyframes the clips should have had but the candidate pool lacked
    motion: float | None = None  # mean frame difference over the whole video (stages/frame_signals.py)


def decode_video(path: Path, record: VideoRecord, config: BuildConfig, cosmo_video: Path | None = None) -> None:
    """Fill the record's probe fields, clips, keyframes, audio (and cosmo video) from one pass over `path`.

    Raises VideoFailure(NO_VIDEO_STREAM) for files without video and VideoFailure(DECODE_FAILED)
    with ffmpeg's own words (temp paths replaced by the source) when no frame decodes. A video whose
    decoding stopped early (a truncated or damaged file) keeps what decoded and stays ok, with the
    reason in record.error and counted as dropped_decode_truncated.
    """
    record.file_size = path.stat().st_size
    decoded = decode_pass(path, config, record.source, cosmo_video)
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
    record.cosmo_video = decoded.cosmo_video
    record.motion = decoded.motion
    if decoded.decode_error is not None:
        record.error = decoded.decode_error
        record.count("decode_truncated")
    record.count("keyframe_shortfall", decoded.keyframe_shortfall)


def decode_pass(path: Path, config: BuildConfig, source: str, cosmo_video: Path | None = None) -> DecodedVideo:
    """One pass over path; with cosmo_video, also write the cosmo layout's video there (stages/cosmo_video.py)."""
    url = "file:" + str(path.resolve())  # "file:" keeps names like "a:b.mp4" from reading as protocols
    aliases = [url, str(path.resolve()), str(path)]
    with _ffmpeg_errors_logged():
        try:
            container = av.open(url, metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise VideoFailure(DECODE_FAILED, _describe(exc, aliases, source)) from None
        with container:
            return _scan(container, config, source, aliases, cosmo_video)


def _scan(
    container: av.container.InputContainer,
    config: BuildConfig,
    source: str,
    aliases: list[str],
    cosmo_video: Path | None,
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
    # TransNetV2 reads every frame at the video's own rate: no frame may be skipped for it.
    if config.video.skip_unreferenced_frames and config.scenes.detector != TRANSNETV2:
        coded.skip_frame = "NONREF"
    audio_stream = container.streams.audio[0] if container.streams.audio else None
    # Only ASR listens to the audio: without it, audio is neither decoded nor carried.
    want_audio = audio_stream is not None and config.video.audio and config.asr.enabled
    origin_s = container.start_time / av.time_base if container.start_time is not None else 0.0
    fps = _stream_fps(video)

    video_config = config.video
    encoder = (
        CosmoVideoEncoder(cosmo_video, video_config.clip_fps, video_config.clip_max_height) if cosmo_video else None
    )
    scan = _VideoScan(config, coded, fps, origin_s, encoder)
    # Gaps in the audio are filled with silence, never past the end the header gives.
    header_end_s = container.duration / av.time_base if container.duration else None
    audio = AudioCollector(origin_s, header_end_s) if want_audio else None
    streams = [video, audio_stream] if want_audio else [video]
    error: str | None = None
    errors_before, _ = av.logging.get_last_error()
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
        if encoder is not None:
            encoder.finish(scan.end_s)
    finally:
        scan.close()

    decoded_end_s = scan.end_s
    probed_s = _probe_duration(container, video, origin_s)
    # The header's duration, unless decoding says otherwise (a truncated file still claims it all).
    trust_probe = error is None and probed_s is not None and abs(probed_s - decoded_end_s) <= DURATION_SLACK_S
    duration_s = probed_s if trust_probe else decoded_end_s
    errors_after, last = av.logging.get_last_error()
    if error is None and not trust_probe and probed_s is not None and decoded_end_s < probed_s:
        # Short of the header and ffmpeg complained on the way ("partial file", "File ended
        # prematurely"): the file is damaged, not merely described loosely.
        if errors_after > errors_before and last:
            error = _scrub(f"[{last[1]}] {last[2].strip()}", aliases, source)
    if error is not None:
        of = f"of {probed_s:.2f} s (the header's duration)" if probed_s is not None else "(the header has no duration)"
        error = f"decoding stopped at {decoded_end_s:.2f} s {of}: {error}"
    clips = clips_from_boundaries(boundaries, decoded_end_s, config.scenes.max_clip_s)
    for clip, signals in zip(clips, scan.signals.per_clip(clips)):
        clip.motion, clip.brightness = signals.motion, signals.brightness
        clip.sharpness, clip.frozen_fraction = signals.sharpness, signals.frozen_fraction
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
        cosmo_video=read_cosmo_video(cosmo_video, clips, video_config.clip_fps, encoder.frames) if encoder else None,
        frames_decoded=scan.frames_decoded,
        frames_sampled=scan.frames_sampled,
        candidates_encoded=scan.candidates.encoded,
        decode_error=error,
        keyframe_shortfall=wanted_keyframes(len(clips), config.keyframes) - len(frames),
        motion=scan.signals.video_motion(),
    )


class _VideoScan:
    """Looks at each decoded frame once: feeds frames at detect_fps to the detectors, keeps keyframe
    candidates, and turns the decoder's skipping of unreferenced frames off where it leaves too few."""

    def __init__(
        self,
        config: BuildConfig,
        codec: av.VideoCodecContext,
        fps: float,
        origin_s: float,
        cosmo_video: CosmoVideoEncoder | None,
    ):
        self.cosmo_video = cosmo_video
        self._codec = codec
        self.scenes = detector_process(config.scenes)
        self.candidates = CandidatePool(config.keyframes)
        self._config = config
        self._origin_s = origin_s
        self._frame_s = 1.0 / fps
        # TransNetV2 gets every frame, 48x27 RGB (what its own predict_video gives it: ffmpeg's
        # bicubic scaling); the other detectors frames at detect_fps, detect_width wide, BGR.
        self._every_frame = config.scenes.detector == TRANSNETV2
        self._detect = RateSampler(config.scenes.detect_fps)
        self._detect_reformatter = VideoReformatter()
        # The spike detector gets a tiny grey copy of every decoded frame, to place a cut on its frame:
        # those since the last sample. (Grey: half the conversion of BGR, and cuts and motion differ
        # as clearly there, stages/cuts.py.)
        self._every_tiny = config.scenes.detector == SPIKE
        self._decoded: list[tuple[float, np.ndarray]] = []
        self._tiny_reformatter = VideoReformatter()
        # Curation's picture signals, from the detectors' frames (TransNetV2's are too small: for it
        # frames of the same size and rate are made for the signals alone).
        self.signals = FrameSignals()
        self._signal_sampler = RateSampler(config.scenes.detect_fps) if self._every_frame else None
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
        if self._every_frame:
            self.frames_sampled += 1
            small = self._detect_reformatter.reformat(
                frame, width=TRANSNET_WIDTH, height=TRANSNET_HEIGHT, format="rgb24", interpolation="BICUBIC", threads=1
            ).to_ndarray()
            self.scenes.push(t_s, small)
            if self._signal_sampler.take(t_s):
                self.signals.add(t_s, self._detect_frame(frame))
        else:
            if self._every_tiny:
                self._decoded.append((t_s, self._tiny_frame(frame)))
            if self._detect.take(t_s):
                self.frames_sampled += 1
                small = self._detect_frame(frame)
                self.scenes.push(t_s, small, self._decoded if self._every_tiny else None)
                self.signals.add(t_s, small)
                self._decoded = []
        self.candidates.offer(t_s, frame, self.rotation)
        if self.cosmo_video is not None:
            self.cosmo_video.offer(t_s, frame)

    def _tiny_frame(self, frame: av.VideoFrame):
        width, height = fit_width(frame.width, frame.height, CUT_ANALYSIS_WIDTH)
        return self._tiny_reformatter.reformat(
            frame, width=width, height=height, format="gray", interpolation=SCALING, threads=1
        ).to_ndarray()

    def _detect_frame(self, frame: av.VideoFrame):
        width, height = fit_width(frame.width, frame.height, self._config.scenes.detect_width)
        return self._detect_reformatter.reformat(
            frame, width=width, height=height, format="bgr24", interpolation=SCALING, threads=1
        ).to_ndarray()

    def close(self) -> None:
        self.scenes.close()
        if self.cosmo_video is not None:
            self.cosmo_video.close()

    def _time(self, frame: av.VideoFrame) -> float:
        """Seconds from the container's start; frames without a timestamp follow the previous one."""
        t_s = frame.time - self._origin_s if frame.time is not None else self._last_t + self._frame_s
        t_s = max(t_s, self._last_t + 1e-6, 0.0)
        self._last_t = t_s
        return t_s


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
