"""Shot boundaries from small frames fed one at a time: hard cuts, fades and dissolves.

Hard cuts come from the PySceneDetect detector chosen in ScenesConfig. Gradual transitions come from
PySceneDetect's ThresholdDetector (fades through black) and from GradualTransitionDetector below,
which compares each frame with the one a window earlier (dissolves, and fades that never reach full
black). Boundaries are then thinned to at least min_clip_s apart and turned into clips no longer than
max_clip_s.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cv2
import numpy as np
from scenedetect import (
    AdaptiveDetector,
    ContentDetector,
    HashDetector,
    HistogramDetector,
    SceneDetector,
    ThresholdDetector,
)
from scenedetect.common import FrameTimecode

from cosmo_data.schemas.config import ScenesConfig
from cosmo_data.schemas.records import Clip

CUT = "cut"
GRADUAL = "gradual"

# The gradual detector works on frames this wide: small enough that texture and small motion average
# out, large enough to tell a blend of two shots from a moving one.
ANALYSIS_WIDTH = 32
# A change made of one big step is a cut, not a gradual transition.
MAX_STEP_FRACTION = 0.5
# A transition takes at most this many windows; a longer run of "gradual" change is a slow camera move.
MAX_EVENT_WINDOWS = 4.0
# A dissolve changes the picture more than the motion of the shots on either side of it. Motion over a
# window is at most twice the motion over the half window (triangle inequality), so the largest
# window change must exceed twice the half-window change just before and just after it by this
# factor. Half windows keep the comparison clear of a neighbouring transition.
MIN_PROMINENCE = 1.2
# A fade through black: the darkest frame is at most this fraction of the brightness at both ends.
DARK_DIP_FRACTION = 0.35


@dataclass
class _Window:
    start_s: float  # time of the earlier frame
    end_s: float  # time of the later frame
    change: float  # mean absolute BGR difference between the two, 0..255
    gradual: bool  # large change, made in small steps, middle frame a blend of the ends
    half_change: float  # the same difference over the second half of the window only

    @property
    def middle_s(self) -> float:
        return (self.start_s + self.end_s) / 2


@dataclass
class _Sample:
    t_s: float
    image: np.ndarray  # ANALYSIS_WIDTH wide, float32 BGR
    brightness: float
    step: float  # change from the previous sample


class GradualTransitionDetector(SceneDetector):
    """Dissolves and fades, from the change between each frame and the one `window_s` earlier.

    A window is gradual when that change is large, made in small steps (else it holds a cut) and the
    middle frame is a blend of the two ends (a least-squares fit middle ~ a*first + b*last + c leaves
    little; a blend of two shifted images is a ghost, so motion leaves much more). A run of gradual
    windows is one transition. It is a fade when the frames dip to black, placed at the darkest one;
    else it is a dissolve if its largest change stands out from the windows just before and after it
    (steady motion does not), placed at the middle of that window - for a dissolve as long as the
    window, exactly its middle.
    """

    def __init__(
        self,
        window_s: float = 1.0,
        threshold: float = 30.0,
        blend_tolerance: float = 0.3,
        min_scene_len: float = 1.0,
    ):
        super().__init__()
        self._window_s = window_s
        self._threshold = threshold
        self._blend_tolerance = blend_tolerance
        self._min_scene_len = min_scene_len
        self._samples: deque[_Sample] = deque()
        self._brightness: deque[tuple[float, float]] = deque()
        self._windows: deque[_Window] = deque()
        self._event: list[_Window] = []
        self._quiet_windows = 0
        # Dissolve peaks waiting for the window after them, to judge their prominence.
        self._pending: list[_Window] = []
        self._last_boundary_s = -math.inf

    def process_frame(self, timecode: FrameTimecode, frame_img: np.ndarray) -> list[FrameTimecode]:
        t_s = timecode.seconds
        self._add_sample(t_s, frame_img)
        window = self._measure()
        if window is None:
            return []
        self._windows.append(window)
        history_s = (MAX_EVENT_WINDOWS + 3) * self._window_s
        while self._windows[0].end_s < t_s - history_s:
            self._windows.popleft()
        while self._brightness[0][0] < t_s - history_s:
            self._brightness.popleft()
        found = self._track(window)
        found += self._judge_pending(final=False)
        return self._emit(found, timecode)

    def post_process(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        found = self._close_event() if self._event else []
        return self._emit(found + self._judge_pending(final=True), timecode)

    def _add_sample(self, t_s: float, frame_img: np.ndarray) -> None:
        image = analysis_image(frame_img).astype(np.float32)
        previous = self._samples[-1] if self._samples else None
        step = _mean_abs_difference(image, previous.image) if previous is not None else 0.0
        brightness = sum(cv2.mean(image)[:3]) / 3
        self._samples.append(_Sample(t_s, image, brightness, step))
        self._brightness.append((t_s, brightness))
        # Keep one window of samples (plus one) to compare against.
        while len(self._samples) > 2 and self._samples[1].t_s <= t_s - self._window_s:
            self._samples.popleft()

    def _measure(self) -> _Window | None:
        """Compare the newest sample with the one a window earlier; None until a window has passed."""
        newest, oldest = self._samples[-1], self._samples[0]
        if len(self._samples) < 3 or newest.t_s - oldest.t_s < 0.75 * self._window_s:
            return None
        middle = min(self._samples, key=lambda s: abs(s.t_s - (oldest.t_s + newest.t_s) / 2))
        change = _mean_abs_difference(newest.image, oldest.image)
        half_change = _mean_abs_difference(newest.image, middle.image)
        steps = [s.step for s in list(self._samples)[1:]]
        gradual = False
        if change >= self._threshold and max(steps) <= MAX_STEP_FRACTION * change:
            gradual = _blend_residual(oldest.image, middle.image, newest.image) <= self._blend_tolerance * change
        return _Window(oldest.t_s, newest.t_s, change, gradual, half_change)

    def _track(self, window: _Window) -> list[float]:
        if window.gradual:
            self._event.append(window)
            self._quiet_windows = 0
            if self._event[-1].end_s - self._event[0].end_s > MAX_EVENT_WINDOWS * self._window_s:
                self._event = []  # a slow continuous change, not a transition
            return []
        if not self._event:
            return []
        # A couple of quiet windows inside a transition (noise, motion) do not end it.
        self._quiet_windows += 1
        return self._close_event() if self._quiet_windows > 2 else []

    def _close_event(self) -> list[float]:
        event, self._event, self._quiet_windows = self._event, [], 0
        start_s, end_s = event[0].start_s, event[-1].end_s
        span = [(t, b) for t, b in self._brightness if start_s <= t <= end_s]
        darkest_t, darkest = min(span, key=lambda item: item[1])
        if darkest < DARK_DIP_FRACTION * min(span[0][1], span[-1][1]):
            return [darkest_t]
        # Windows ending up to half a window before the first gradual one still belong to the change.
        nearby = [w for w in self._windows if event[0].end_s - self._window_s / 2 <= w.end_s <= end_s]
        self._pending.append(max(nearby or event, key=lambda w: w.change))
        return []

    def _judge_pending(self, *, final: bool) -> list[float]:
        """Dissolve peaks whose following window has arrived (or all, at the end), if prominent."""
        if not self._pending:
            return []
        newest_end = self._windows[-1].end_s
        ready = [p for p in self._pending if final or newest_end >= p.end_s + self._window_s * 0.45]
        self._pending = [p for p in self._pending if p not in ready]
        return [peak.middle_s for peak in ready if self._is_dissolve(peak)]

    def _is_dissolve(self, peak: _Window) -> bool:
        """Compare the peak change with the motion in the half windows just before and after it."""
        around = [
            min(self._windows, key=lambda w: abs(w.end_s - at)).half_change
            for at in (peak.start_s, peak.end_s + self._window_s / 2)
            if any(abs(w.end_s - at) <= self._window_s / 4 for w in self._windows)
        ] or [0.0]
        return peak.change >= MIN_PROMINENCE * 2 * max(around)

    def _emit(self, boundaries: list[float], timecode: FrameTimecode) -> list[FrameTimecode]:
        emitted = []
        for boundary_s in sorted(boundaries):
            if boundary_s - self._last_boundary_s >= self._min_scene_len:
                self._last_boundary_s = boundary_s
                emitted.append(FrameTimecode(max(0.0, boundary_s), fps=timecode))
        return emitted


def analysis_image(frame_bgr: np.ndarray) -> np.ndarray:
    """The frame ANALYSIS_WIDTH wide (area average); frames already that wide are used as they are."""
    if frame_bgr.shape[1] == ANALYSIS_WIDTH:
        return frame_bgr
    height = max(1, round(frame_bgr.shape[0] * ANALYSIS_WIDTH / frame_bgr.shape[1]))
    return cv2.resize(frame_bgr, (ANALYSIS_WIDTH, height), interpolation=cv2.INTER_AREA)


def _mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    # One C call: on frames this small numpy's abs(a - b).mean() costs four times as much.
    return cv2.norm(first, second, cv2.NORM_L1) / first.size


def _blend_residual(first: np.ndarray, middle: np.ndarray, last: np.ndarray) -> float:
    """Mean absolute error of the best fit middle ~ a*first + b*last + c."""
    design = np.stack([first.ravel(), last.ravel(), np.ones(first.size, np.float32)], axis=1)
    target = middle.ravel()
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.abs(target - design @ coefficients).mean())


def hard_cut_detector(config: ScenesConfig) -> SceneDetector:
    """The configured PySceneDetect detector; config.threshold replaces its default threshold."""
    min_len = config.min_clip_s
    threshold = {} if config.threshold is None else {"threshold": config.threshold}
    if config.detector == "content":
        return ContentDetector(min_scene_len=min_len, **threshold)
    if config.detector == "adaptive":
        adaptive = {} if config.threshold is None else {"adaptive_threshold": config.threshold}
        return AdaptiveDetector(min_scene_len=min_len, **adaptive)
    if config.detector == "histogram":
        return HistogramDetector(min_scene_len=min_len, **threshold)
    return HashDetector(min_scene_len=min_len, **threshold)


class SceneBoundaryDetector:
    """Feed small BGR frames in time order with push(); finish() returns [(t_s, kind)] sorted by time."""

    def __init__(self, config: ScenesConfig):
        self._config = config
        # (detector, kind it reports), most precise first: on conflicts the earlier one wins.
        self._detectors: list[tuple[SceneDetector, str]] = []
        if config.gradual:
            if config.fade_threshold > 0:
                fades = ThresholdDetector(threshold=config.fade_threshold, min_scene_len=config.min_clip_s)
                self._detectors.append((fades, GRADUAL))
            gradual = GradualTransitionDetector(
                window_s=config.gradual_window_s,
                threshold=config.gradual_threshold,
                blend_tolerance=config.gradual_blend_tolerance,
                min_scene_len=config.min_clip_s,
            )
            self._detectors.append((gradual, GRADUAL))
        self._detectors.append((hard_cut_detector(config), CUT))
        self._found: list[list[float]] = [[] for _ in self._detectors]
        self._last: FrameTimecode | None = None

    def push(self, t_s: float, frame_bgr: np.ndarray) -> None:
        timecode = FrameTimecode(max(0.0, float(t_s)), fps=self._config.detect_fps)
        self._last = timecode
        # The fade and dissolve detectors look at mean levels and coarse structure: they share one
        # small copy of the frame (an area average keeps the mean brightness the fade detector uses).
        small = analysis_image(frame_bgr) if self._config.gradual else frame_bgr
        for found, (detector, kind) in zip(self._found, self._detectors, strict=True):
            image = small if kind == GRADUAL else frame_bgr
            found.extend(tc.seconds for tc in detector.process_frame(timecode, image))

    def finish(self, duration_s: float) -> list[tuple[float, str]]:
        """Boundaries at least min_clip_s apart (and from both ends), sorted by time."""
        if self._last is not None:
            for found, (detector, _) in zip(self._found, self._detectors, strict=True):
                found.extend(tc.seconds for tc in detector.post_process(self._last))
        ranked = [(t, kind) for found, (_, kind) in zip(self._found, self._detectors, strict=True) for t in found]
        return thin_boundaries(ranked, duration_s, self._config.min_clip_s)


class DetectorProcess:
    """A SceneBoundaryDetector in a process of its own, fed through a pipe as frames come.

    The detectors are Python work per frame. In the decoding process they would run between the
    decoder's frames (a thread would not help: it would hold the GIL that each decoded frame needs),
    so here they run beside it on another core. Same push()/finish() as SceneBoundaryDetector; close()
    always. The process is forked before decoding starts, so it inherits no decoder threads.
    """

    def __init__(self, config: ScenesConfig):
        context = multiprocessing.get_context("fork")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_detect_in_child, args=(config, child_end), daemon=True, name="cosmo-scenes"
        )
        self._process.start()
        child_end.close()

    def push(self, t_s: float, frame_bgr: np.ndarray) -> None:
        self._call(lambda: self._connection.send((t_s, frame_bgr)))

    def finish(self, duration_s: float) -> list[tuple[float, str]]:
        self._call(lambda: self._connection.send(float(duration_s)))
        outcome, value = self._call(self._connection.recv)
        if outcome == "error":
            raise RuntimeError(f"scene detection failed: {value}")
        return value

    def close(self) -> None:
        self._connection.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _call(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise RuntimeError(self._why_gone()) from None

    def _why_gone(self) -> str:
        """The child's own error if it sent one before it stopped listening, else how it ended."""
        try:
            if self._connection.poll():
                outcome, value = self._connection.recv()
                if outcome == "error":
                    return f"scene detection failed: {value}"
        except (EOFError, OSError):
            pass
        self._process.join(timeout=5)
        return f"scene detection process died (exit code {self._process.exitcode})"


def _detect_in_child(config: ScenesConfig, connection: Connection) -> None:
    """Frames arrive as (t_s, image); a bare number is the duration and asks for the boundaries."""
    detector = SceneBoundaryDetector(config)
    try:
        while not isinstance(message := connection.recv(), float):
            detector.push(*message)
        connection.send(("ok", detector.finish(message)))
    except EOFError:  # the decoding process stopped early; nobody waits for an answer
        return
    except Exception as exc:  # errors are data: the decoding process raises them with this text
        connection.send(("error", f"{type(exc).__name__}: {exc}"))


def thin_boundaries(ranked: list[tuple[float, str]], duration_s: float, min_clip_s: float) -> list[tuple[float, str]]:
    """Keep boundaries in the given order of trust, dropping any closer than min_clip_s to one already
    kept or to either end of the video; returns them sorted by time."""
    kept: list[tuple[float, str]] = []
    for t_s, kind in ranked:
        if t_s < min_clip_s or t_s > duration_s - min_clip_s:
            continue
        if all(abs(t_s - other) >= min_clip_s for other, _ in kept):
            kept.append((t_s, kind))
    return sorted(kept)


def clips_from_boundaries(boundaries: list[tuple[float, str]], duration_s: float, max_clip_s: float) -> list[Clip]:
    """Contiguous clips covering [0, duration_s]; clips longer than max_clip_s are split evenly."""
    edges = [(0.0, "start"), *boundaries, (duration_s, "end")]
    clips: list[Clip] = []
    for (start_s, kind), (end_s, _) in zip(edges, edges[1:], strict=False):
        parts = max(1, math.ceil((end_s - start_s) / max_clip_s - 1e-9))
        length = (end_s - start_s) / parts
        for part in range(parts):
            clips.append(
                Clip(
                    clip_idx=len(clips),
                    start_s=round(start_s + part * length, 3),
                    end_s=round(start_s + (part + 1) * length, 3) if part < parts - 1 else round(end_s, 3),
                    boundary=kind if part == 0 else "split",
                )
            )
    return clips
