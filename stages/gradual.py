"""Gradual transitions from small frames fed one at a time: dissolves, and fades that never reach full
black. Used by stages/scenes.py beside PySceneDetect's hard-cut and fade detectors."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import SceneDetector
from scenedetect.common import FrameTimecode

from cosmo_data.stages.cuts import shifted_difference

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
# Else a dissolve when a gradual window's middle frame has at most this fraction of the ends' mean
# spatial variance (real footage: dissolves 0.38-0.73, fast motion 0.81 and more), and a half-half
# blend of the ends would lose that much contrast too. That blend's variance is (va + vb + 2 cov) / 4:
# near half the ends' for two unrelated shots, near all of it for two frames of one shot (a bubble
# cloud or smoke washing out one shot dips the contrast, but no blend of its ends could: real footage,
# such dips 0.74 where the ends' blend would keep 0.89; dissolves' ends 0.69 at most).
MAX_VARIANCE_RATIO = 0.75
# A dip is below both ends by a margin: a middle within 10% of the lower end is contrast falling from
# one end to the other, not a blend's dip (generated footage: 0.97-1.0 there; dissolves 0.46-0.88).
MIN_DIP = 0.9
# A dissolve's change is a blend, which no shift of the picture undoes; a fast pan's is mostly a shift.
# So a contrast dip where the best small shift (MOTION_SHIFT pixels at ANALYSIS_WIDTH) removes more
# than this share of the sample-to-sample change is motion, not a dissolve (real footage: dissolves
# 0.00-0.17, a pan across a dull stretch of a bike race 0.33, other motion 0.37-0.51).
MAX_MOTION_SHARE = 0.25
MOTION_SHIFT = 2
# A fade through black: the darkest frame is at most this fraction of the brightness at both ends.
DARK_DIP_FRACTION = 0.35


@dataclass
class _Window:
    start_s: float  # time of the earlier frame
    end_s: float  # time of the later frame
    change: float  # mean absolute BGR difference between the two, 0..255
    gradual: bool  # large change, made in small steps, middle frame a blend of the ends
    half_change: float  # the same difference over the second half of the window only
    holds_cut: bool  # one step makes most of the change: a hard cut lies inside
    # Spatial variance of the middle frame over the mean of the ends': a blend of two unrelated
    # pictures has less contrast than either (0.5 at a dissolve's middle); motion keeps it near 1.
    variance_ratio: float = 1.0
    # Share of the sample-to-sample change inside the window that the best small shift removes.
    motion_share: float = 0.0

    @property
    def middle_s(self) -> float:
        return (self.start_s + self.end_s) / 2


@dataclass
class _Sample:
    t_s: float
    image: np.ndarray  # ANALYSIS_WIDTH wide, float32 BGR
    brightness: float
    step: float  # change from the previous sample
    grey: np.ndarray  # the grey picture less its mean
    variance: float  # spatial variance of the grey picture


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
        self._pending: list[tuple[_Window, _Window]] = []  # (largest change, deepest variance dip)
        self._last_boundary_s = -math.inf
        # Score of each boundary emitted, by its time: a fade's dip depth (1 - darkest / the ends'
        # brightness), a dissolve's prominence (its change over twice the motion beside it).
        self.scores: dict[float, float] = {}

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
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        grey -= cv2.mean(grey)[0]
        variance = float(np.vdot(grey, grey)) / grey.size
        self._samples.append(_Sample(t_s, image, brightness, step, grey, variance))
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
        samples = list(self._samples)
        steps = [s.step for s in samples[1:]]
        ends = (oldest.variance + newest.variance) / 2
        variance_ratio = middle.variance / ends if ends > 0 else 1.0
        if middle.variance >= MIN_DIP * min(oldest.variance, newest.variance):
            variance_ratio = 1.0  # not a dip: lower contrast on one side only (a blend dips below both)
        elif ends > 0:
            covariance = float(np.vdot(oldest.grey, newest.grey)) / oldest.grey.size
            if (oldest.variance + newest.variance + 2 * covariance) / 4 / ends > MAX_VARIANCE_RATIO:
                variance_ratio = 1.0  # no blend of these ends loses this much contrast: not a blend's dip
        gradual = False
        motion_share = 0.0
        holds_cut = max(steps) > MAX_STEP_FRACTION * change
        if change >= self._threshold and not holds_cut:
            # A blend of the ends; where motion spoils the fit, a loss of contrast still tells one.
            gradual = variance_ratio <= MAX_VARIANCE_RATIO or (
                _blend_residual(oldest.image, middle.image, newest.image) <= self._blend_tolerance * change
            )
            if variance_ratio <= MAX_VARIANCE_RATIO:  # only a dip is judged by it (the shifts cost)
                motion_share = _motion_share(samples)
        return _Window(oldest.t_s, newest.t_s, change, gradual, half_change, holds_cut, variance_ratio, motion_share)

    def _track(self, window: _Window) -> list[tuple[float, float]]:
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

    def _close_event(self) -> list[tuple[float, float]]:
        event, self._event, self._quiet_windows = self._event, [], 0
        start_s, end_s = event[0].start_s, event[-1].end_s
        span = [(t, b) for t, b in self._brightness if start_s <= t <= end_s]
        darkest_t, darkest = min(span, key=lambda item: item[1])
        ends = min(span[0][1], span[-1][1])
        if darkest < DARK_DIP_FRACTION * ends:
            return [(darkest_t, round(1 - darkest / max(ends, 1e-6), 3))]
        # Windows ending up to half a window before the first gradual one still belong to the change,
        # unless a hard cut lies inside them: their change is the cut's.
        nearby = [
            w for w in self._windows if event[0].end_s - self._window_s / 2 <= w.end_s <= end_s and not w.holds_cut
        ]
        candidates = nearby or event
        peak = max(candidates, key=lambda w: w.change)
        dip = min((w for w in candidates if w.gradual), key=lambda w: w.variance_ratio, default=peak)
        self._pending.append((peak, dip))
        return []

    def _judge_pending(self, *, final: bool) -> list[tuple[float, float]]:
        """Dissolve peaks whose following window has arrived (or all, at the end), if prominent."""
        if not self._pending:
            return []
        newest_end = self._windows[-1].end_s
        ready = [p for p in self._pending if final or newest_end >= p[0].end_s + self._window_s * 0.45]
        self._pending = [p for p in self._pending if p not in ready]
        found = []
        for peak, dip in ready:
            if (prominence := self._prominence(peak)) >= 1:
                found.append((peak.middle_s, prominence))
            elif dip.variance_ratio <= MAX_VARIANCE_RATIO and dip.motion_share <= MAX_MOTION_SHARE:
                # Fast motion on either side hides the change; the loss of contrast still shows it.
                found.append((dip.middle_s, round(dip.variance_ratio, 3)))
        return found

    def _prominence(self, peak: _Window) -> float:
        """Compare the peak change with the motion in the half windows just before and after it."""
        around = [
            min(self._windows, key=lambda w: abs(w.end_s - at)).half_change
            for at in (peak.start_s, peak.end_s + self._window_s / 2)
            if any(abs(w.end_s - at) <= self._window_s / 4 for w in self._windows)
        ] or [0.0]
        return round(peak.change / max(MIN_PROMINENCE * 2 * max(around), 1e-6), 3)

    def _emit(self, boundaries: list[tuple[float, float]], timecode: FrameTimecode) -> list[FrameTimecode]:
        emitted = []
        for boundary_s, score in sorted(boundaries):
            if boundary_s - self._last_boundary_s >= self._min_scene_len:
                self._last_boundary_s = boundary_s
                emitted.append(FrameTimecode(max(0.0, boundary_s), fps=timecode))
                self.scores[round(emitted[-1].seconds, 6)] = score
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


def _motion_share(samples: list[_Sample]) -> float:
    """Share of the sample-to-sample change that the best shift of up to MOTION_SHIFT pixels removes."""
    pairs = list(zip(samples, samples[1:]))
    shifted = sum(shifted_difference(a.image, b.image, MOTION_SHIFT) for a, b in pairs)
    return 1 - shifted / max(sum(b.step for _, b in pairs), 1e-6)


def _blend_residual(first: np.ndarray, middle: np.ndarray, last: np.ndarray) -> float:
    """Mean absolute error of the best fit middle ~ a*first + b*last + c."""
    design = np.stack([first.ravel(), last.ravel(), np.ones(first.size, np.float32)], axis=1)
    target = middle.ravel()
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.abs(target - design @ coefficients).mean())
