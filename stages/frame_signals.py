"""Per-clip picture signals from the small frames the decode pass already makes for scene detection.

Each frame taken at scenes.detect_fps, scenes.detect_width wide (the detectors' own frames; with
TransNetV2, which reads 48x27 frames, the pass makes these at the same rate for this alone) is turned to
grey once and measured: mean brightness, variance of the Laplacian (sharpness: a blurred or flat picture
has few edges) and the mean absolute difference to the frame before (motion). A few floats per frame are
kept and summed per clip once the boundaries are known; a frame pair across a boundary belongs to no
clip. All on 0..255 grey levels at detect_width, so thresholds hold across source resolutions.

Frozen: a pair of frames whose mean difference is below FROZEN_DIFFERENCE. Measured at 128 px on
generated x264 (crf 23) footage: a still slide differs by 0.00-0.05 between samples, a slow gradient
by 0.3-1, the moving lavfi sources by 3-40.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cosmo_data.schemas.records import Clip

FROZEN_DIFFERENCE = 0.1


@dataclass(frozen=True)
class ClipSignals:
    motion: float | None  # mean absolute grey difference of consecutive frames; None with fewer than 2
    brightness: float | None
    sharpness: float | None
    frozen_fraction: float | None


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian: edges; a blurred (by focus or by motion) or flat picture has few."""
    _, deviation = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))  # half the time of numpy's var()
    return float(deviation[0, 0]) ** 2


class FrameSignals:
    """Feed small BGR frames in time order with add(); per_clip() sums them over each clip."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self._brightness: list[float] = []
        self._sharpness: list[float] = []
        self._difference: list[float] = []  # to the frame before; nan for the first
        self._previous: np.ndarray | None = None

    def add(self, t_s: float, frame_bgr: np.ndarray) -> None:
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        self._times.append(t_s)
        self._brightness.append(float(grey.mean()))
        self._sharpness.append(sharpness(grey))
        if self._previous is None or self._previous.shape != grey.shape:
            self._difference.append(float("nan"))
        else:
            self._difference.append(float(cv2.absdiff(grey, self._previous).mean()))
        self._previous = grey

    def per_clip(self, clips: list[Clip]) -> list[ClipSignals]:
        times = np.asarray(self._times)
        brightness, sharpness = np.asarray(self._brightness), np.asarray(self._sharpness)
        difference = np.asarray(self._difference)
        signals = []
        for k, clip in enumerate(clips):
            last = k == len(clips) - 1
            inside = (times >= clip.start_s) & ((times <= clip.end_s) if last else (times < clip.end_s))
            # A difference belongs to the clip when both of its frames do: not the clip's first frame.
            pairs = difference[inside][1:]
            pairs = pairs[~np.isnan(pairs)]
            signals.append(
                ClipSignals(
                    motion=_rounded(pairs.mean()) if pairs.size else None,
                    brightness=_rounded(brightness[inside].mean()) if inside.any() else None,
                    sharpness=_rounded(sharpness[inside].mean()) if inside.any() else None,
                    frozen_fraction=_rounded((pairs < FROZEN_DIFFERENCE).mean()) if pairs.size else None,
                )
            )
        return signals

    def video_motion(self) -> float | None:
        difference = np.asarray(self._difference)
        difference = difference[~np.isnan(difference)]
        return _rounded(difference.mean()) if difference.size else None


def _rounded(value: float) -> float:
    return round(float(value), 4)
