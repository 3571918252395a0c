"""Keyframe candidates kept during the decode pass, and the keyframes picked from them per clip.

Candidates are converted straight from the decoder's YUV to the keyframe size at a low rate and kept as
JPEG; the pool is bounded, so memory stays flat for long and 4K videos. Clips are not known until the
pass ends, so a full pool is thinned evenly in time (one candidate of every neighbouring pair stays),
keeping of each pair the one that looks least like its neighbours: a short shot's only candidate
outlives a long shot's many. Keyframes are picked per clip once the boundaries are known; a slot whose
clip has no candidate goes to the nearest clip that has one to spare, so the budget is used wherever
the pool allows, and what it does not allow is counted (keyframe_shortfall).
"""

from __future__ import annotations

from bisect import bisect_left
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
# Candidates are compared by a thumbnail of this many pixels a side (colour), when the pool is thinned.
THUMB_SIZE = 8


@dataclass
class Candidate:
    t_s: float
    width: int
    height: int
    jpeg: bytes
    thumb: np.ndarray  # THUMB_SIZE x THUMB_SIZE x 3 int16, to tell shots apart when thinning


class CandidatePool:
    """Keyframe candidates as JPEG at keyframe size; bounded by keeping one of every pair when full."""

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
        thumb = cv2.resize(image, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.int16)
        self.pool.append(Candidate(t_s, image.shape[1], image.shape[0], jpeg.tobytes(), thumb))
        if len(self.pool) > self.config.max_candidates:
            self.pool = thin_pool(self.pool)
            self._sampler.interval_s *= 2

    def pick(self, clips: list[Clip], transition_s: float) -> list[Frame]:
        """per_clip frames per clip, evenly spaced away from the clip's edges, max_per_video in all.

        Fewer only where the pool has too few candidates: a slot that finds none in its clip goes to
        the nearest clip with one to spare (one without a keyframe first), never past per_clip.
        """
        per_clip = self.config.per_clip
        slots = slots_per_clip(len(clips), per_clip, self.config.max_per_video)
        times = [c.t_s for c in self.pool]  # in time order, as they came
        inside = [range(bisect_left(times, clip.start_s), bisect_left(times, clip.end_s)) for clip in clips]
        chosen: list[list[int]] = [[] for _ in clips]
        unfilled: list[int] = []  # clip numbers whose slots found no candidate, once per slot
        for number, (clip, count) in enumerate(zip(clips, slots, strict=True)):
            if count == 0:
                continue
            targets = keyframe_targets(clip, _next_boundary(clips, number), count, transition_s)
            for target in targets:
                index = self._nearest(target, inside[number], chosen[number])
                if index is None:
                    unfilled.append(number)
                else:
                    chosen[number].append(index)
        for number in unfilled:
            taker = _nearest_taker(number, inside, chosen, per_clip)
            if taker is None:
                break  # no clip has a candidate to spare: the rest is the shortfall
            chosen[taker].append(self._spare(clips, taker, inside[taker], chosen[taker], transition_s))
        # Candidate indices are in time order.
        picked = sorted((index, clips[number].clip_idx) for number, indices in enumerate(chosen) for index in indices)
        frames = []
        for n, (index, clip_idx) in enumerate(picked):
            c = self.pool[index]
            frames.append(
                Frame(clip_idx=clip_idx, frame_idx=n, t_s=round(c.t_s, 3), width=c.width, height=c.height, jpeg=c.jpeg)
            )
        return frames

    def _nearest(self, target_s: float, inside: range, used: list[int]) -> int | None:
        free = [i for i in inside if i not in used]
        return min(free, key=lambda i: abs(self.pool[i].t_s - target_s)) if free else None

    def _spare(self, clips: list[Clip], number: int, inside: range, used: list[int], transition_s: float) -> int:
        """The candidate a clip takes for a slot given to it: its middle one, or the one furthest from those it has."""
        if not used:
            [middle] = keyframe_targets(clips[number], _next_boundary(clips, number), 1, transition_s)
            return self._nearest(middle, inside, used)
        free = [i for i in inside if i not in used]
        return max(free, key=lambda i: min(abs(self.pool[i].t_s - self.pool[j].t_s) for j in used))


def thin_pool(pool: list[Candidate]) -> list[Candidate]:
    """One candidate of every pair (0, 1), (2, 3), ...: the one less like its neighbours (the first on a tie).

    Evenly thinned in time, as dropping every other one would, but a shot seen by one candidate of a
    pair keeps it while the shot around it is seen by others.
    """
    kept: list[Candidate] = []
    for first in range(0, len(pool), 2):
        pair = pool[first : first + 2]
        if len(pair) == 1:
            kept.append(pair[0])
            continue
        following = pool[first + 2] if first + 2 < len(pool) else None
        neighbours = [c for c in (kept[-1] if kept else None, following) if c is not None]
        novelty = [min((_distance(c, n) for n in neighbours), default=0.0) for c in pair]
        kept.append(pair[1] if novelty[1] > novelty[0] else pair[0])
    return kept


def _distance(a: Candidate, b: Candidate) -> float:
    return float(np.abs(a.thumb - b.thumb).mean())


def _next_boundary(clips: list[Clip], number: int) -> str:
    return clips[number + 1].boundary if number + 1 < len(clips) else "end"


def _nearest_taker(number: int, inside: list[range], chosen: list[list[int]], per_clip: int) -> int | None:
    """The clip nearest to `number` that has a candidate to spare: first one without a keyframe, then any
    below per_clip."""
    for limit in (1, per_clip):
        for distance in range(1, len(inside)):
            for other in (number - distance, number + distance):
                if 0 <= other < len(inside) and len(chosen[other]) < min(limit, len(inside[other])):
                    return other
    return None


def wanted_keyframes(n_clips: int, config: KeyframesConfig) -> int:
    """How many keyframes a video of n_clips clips should get: what slots_per_clip hands out."""
    return min(n_clips * config.per_clip, config.max_per_video)


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
