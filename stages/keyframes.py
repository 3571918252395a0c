"""Keyframe candidates kept during the decode pass, and the keyframes picked from them per clip.

Candidates are converted straight from the decoder's YUV to the keyframe size at a low rate and kept as
JPEG; the pool is bounded, so memory stays flat for long and 4K videos. Keyframes are picked per clip
once the boundaries are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from cosmo_data.schemas.config import KeyframesConfig
from cosmo_data.schemas.records import Clip, Frame
from cosmo_data.stages.frame_sampling import SCALING, RateSampler, fit_longest
from cosmo_data.stages.scenes import GRADUAL

# Keyframes keep this far from a hard edge of their clip (a cut or a split); from a gradual edge they
# keep half the transition window, where the two shots are blended.
EDGE_MARGIN_S = 0.1


@dataclass
class Candidate:
    t_s: float
    width: int
    height: int
    jpeg: bytes


class CandidatePool:
    """Keyframe candidates as JPEG at keyframe size; bounded by dropping every other one when full."""

    def __init__(self, config: KeyframesConfig):
        self.config = config
        self.pool: list[Candidate] = []
        self.encoded = 0
        self._sampler = RateSampler(config.candidate_fps)
        self._reformatter = VideoReformatter()

    def offer(self, t_s: float, frame: av.VideoFrame, rotation: int) -> None:
        if not self._sampler.take(t_s):
            return
        width, height = fit_longest(frame.width, frame.height, self.config.size)
        image = self._reformatter.reformat(
            frame, width=width, height=height, format="bgr24", interpolation=SCALING, threads=1
        ).to_ndarray()
        if rotation:
            image = np.ascontiguousarray(np.rot90(image, rotation // 90))
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            return
        self.encoded += 1
        self.pool.append(Candidate(t_s, image.shape[1], image.shape[0], jpeg.tobytes()))
        if len(self.pool) > self.config.max_candidates:
            self.pool = self.pool[::2]
            self._sampler.interval_s *= 2

    def pick(self, clips: list[Clip], transition_s: float) -> list[Frame]:
        """per_clip frames per clip, evenly spaced away from the clip's edges, max_per_video in all."""
        chosen: list[tuple[int, Candidate]] = []
        used: set[int] = set()
        slots = slots_per_clip(len(clips), self.config.per_clip, self.config.max_per_video)
        for clip_number, (clip, count) in enumerate(zip(clips, slots, strict=True)):
            if count == 0:
                continue
            next_boundary = clips[clip_number + 1].boundary if clip_number + 1 < len(clips) else "end"
            for target in keyframe_targets(clip, next_boundary, count, transition_s):
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


def slots_per_clip(n_clips: int, per_clip: int, max_per_video: int) -> list[int]:
    """How many keyframes each clip gets: per_clip each, or the budget spread evenly over the clips."""
    if n_clips * per_clip <= max_per_video:
        return [per_clip] * n_clips
    slots = [0] * n_clips
    # Evenly spaced clip positions, one keyframe per position; positions wrap when the budget allows
    # more than one keyframe per clip.
    for k in range(max_per_video):
        slots[int((k + 0.5) * n_clips / max_per_video) % n_clips] += 1
    return slots


def keyframe_targets(clip: Clip, next_boundary: str, count: int, window_s: float) -> list[float]:
    def margin(kind: str) -> float:
        return window_s / 2 if kind == GRADUAL else EDGE_MARGIN_S

    start, end = clip.start_s + margin(clip.boundary), clip.end_s - margin(next_boundary)
    if end <= start:  # a clip shorter than its margins: aim at its middle
        start = end = (clip.start_s + clip.end_s) / 2
    return [start + (k + 0.5) * (end - start) / count for k in range(count)]
