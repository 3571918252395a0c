"""Shot boundaries from small frames fed one at a time: hard cuts, fades and dissolves.

Hard cuts come from the PySceneDetect detector chosen in ScenesConfig. Gradual transitions come from
PySceneDetect's ThresholdDetector (fades through black) and from GradualTransitionDetector below,
which compares each frame with the one a window earlier (dissolves, and fades that never reach full
black; stages/gradual.py). With detector "transnetv2" the learned model (stages/transnet.py) finds both
kinds instead. Boundaries are then thinned to at least min_clip_s apart and turned into clips no longer than
max_clip_s.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import deque
from collections.abc import Callable
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
from cosmo_data.stages.cuts import DETECTOR as SPIKE
from cosmo_data.stages.cuts import SpikeCutDetector
from cosmo_data.stages.gradual import GradualTransitionDetector, analysis_image

__all__ = ["GradualTransitionDetector", "SceneBoundaryDetector", "DetectorProcess", "detector_process"]

CUT = "cut"
GRADUAL = "gradual"
TRANSNETV2 = "transnetv2"
# A cut and a gradual transition this close both stay (a clip of at least this long between them).
MIXED_MIN_GAP_S = 0.5


def hard_cut_detector(config: ScenesConfig) -> SceneDetector:
    """The configured PySceneDetect detector; config.threshold replaces its default threshold."""
    min_len = config.min_clip_s
    threshold = {} if config.threshold is None else {"threshold": config.threshold}
    if config.detector == SPIKE:
        return SpikeCutDetector(ratio=config.cut_ratio, **threshold)
    if config.detector == "content":
        return ContentDetector(min_scene_len=min_len, **threshold)
    if config.detector == "adaptive":
        adaptive = {} if config.threshold is None else {"adaptive_threshold": config.threshold}
        return AdaptiveDetector(min_scene_len=min_len, **adaptive)
    if config.detector == "histogram":
        return HistogramDetector(min_scene_len=min_len, **threshold)
    return HashDetector(min_scene_len=min_len, **threshold)


class SceneBoundaryDetector:
    """Feed small BGR frames in time order with push(); finish() returns the boundaries as
    [(t_s, kind, detector, score)] sorted by time: kind "cut" or "gradual", detector the one that found
    it ("content", "adaptive", "histogram", "hash", "fade" or "gradual"), score its measure there."""

    def __init__(self, config: ScenesConfig):
        self._config = config
        # (detector, kind it reports, its name), most precise first: on conflicts the earlier one wins.
        self._detectors: list[tuple[SceneDetector, str, str]] = []
        if config.gradual:
            if config.fade_threshold > 0:
                fades = ThresholdDetector(threshold=config.fade_threshold, min_scene_len=config.min_clip_s)
                self._detectors.append((fades, GRADUAL, "fade"))
            gradual = GradualTransitionDetector(
                window_s=config.gradual_window_s,
                threshold=config.gradual_threshold,
                blend_tolerance=config.gradual_blend_tolerance,
                min_scene_len=config.min_clip_s,
            )
            self._detectors.append((gradual, GRADUAL, GRADUAL))
        self._detectors.append((hard_cut_detector(config), CUT, config.detector))
        self._found: list[list[tuple[float, float | None]]] = [[] for _ in self._detectors]
        # Recent frame scores of each detector that keeps one, to report the score where it cut.
        self._scores: list[deque[tuple[float, float]]] = [deque(maxlen=64) for _ in self._detectors]
        self._last: FrameTimecode | None = None

    def push(self, t_s: float, frame_bgr: np.ndarray, decoded: list[tuple[float, np.ndarray]] = ()) -> None:
        """A sampled frame; `decoded` lists small copies (cuts.ANALYSIS_WIDTH wide) of the frames decoded
        since the last sample, this one's included: the spike detector places cuts on their frame."""
        timecode = FrameTimecode(max(0.0, float(t_s)), fps=self._config.detect_fps)
        self._last = timecode
        for detector, _, _ in self._detectors:
            if isinstance(detector, SpikeCutDetector):
                for decoded_s, small in decoded:
                    detector.add_decoded(max(0.0, float(decoded_s)), small)
        # The fade and dissolve detectors look at mean levels and coarse structure: they share one
        # small copy of the frame (an area average keeps the mean brightness the fade detector uses).
        small = analysis_image(frame_bgr) if self._config.gradual else frame_bgr
        for index, (detector, kind, name) in enumerate(self._detectors):
            image = small if kind == GRADUAL else frame_bgr
            emitted = detector.process_frame(timecode, image)
            score = sum(cv2.mean(image)[:3]) / 3 if name == "fade" else _frame_score(detector)
            if score is not None:
                self._scores[index].append((timecode.seconds, score))
            self._found[index].extend((tc.seconds, self._score_at(index, detector, tc.seconds)) for tc in emitted)

    def finish(self, duration_s: float) -> list[tuple[float, str, str, float | None]]:
        """Boundaries at least min_clip_s apart (and from both ends), sorted by time."""
        if self._last is not None:
            for index, (detector, _, _) in enumerate(self._detectors):
                emitted = detector.post_process(self._last)
                self._found[index].extend((tc.seconds, self._score_at(index, detector, tc.seconds)) for tc in emitted)
        ranked = [
            (t, kind, name, score)
            for found, (_, kind, name) in zip(self._found, self._detectors, strict=True)
            for t, score in found
        ]
        return thin_boundaries(ranked, duration_s, self._config.min_clip_s)

    def _score_at(self, index: int, detector: SceneDetector, t_s: float) -> float | None:
        if isinstance(detector, (GradualTransitionDetector, SpikeCutDetector)):
            return detector.scores.get(round(t_s, 6))
        # The fade detector places its boundary inside the dark run: the nearest frame's brightness.
        near = min(self._scores[index], key=lambda item: abs(item[0] - t_s), default=None)
        return round(near[1], 3) if near is not None and abs(near[0] - t_s) < 0.5 else None


def _frame_score(detector: SceneDetector) -> float | None:
    """The hard-cut detectors' score of the frame just processed (content, histogram, hash keep one)."""
    score = getattr(detector, "_frame_score", None)
    return float(score) if isinstance(score, (int, float)) else None


class DetectorProcess:
    """A SceneBoundaryDetector (or TransNetDetector) in a process of its own, fed through a pipe as
    frames come.

    The detectors are Python work per frame. In the decoding process they would run between the
    decoder's frames (a thread would not help: it would hold the GIL that each decoded frame needs),
    so here they run beside it on another core. Same push()/finish() as SceneBoundaryDetector; close()
    always. The process is forked before decoding starts, so it inherits no decoder threads. With
    keep=True (TransNetV2, spawned: see detector_process) it outlives one video: begin() starts the next.
    """

    def __init__(self, config: ScenesConfig, keep: bool = False):
        # TransNetV2 runs torch, which hangs in a child forked from a process whose torch thread pool
        # ran (libgomp): its process is spawned, once per worker (keep). The others fork, per video.
        context = multiprocessing.get_context("spawn" if config.detector == TRANSNETV2 else "fork")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_detect_in_child, args=(config, child_end, keep), daemon=True, name="cosmo-scenes"
        )
        self._process.start()
        child_end.close()
        self.keep = keep
        self.busy = False

    def begin(self) -> DetectorProcess:
        """Forget any earlier video (one that stopped half way included) and take this one."""
        self.busy = True
        self._call(lambda: self._connection.send(RESET))
        return self

    def alive(self) -> bool:
        return self._process.is_alive() and not self._connection.closed

    def push(self, t_s: float, frame: np.ndarray, decoded: list[tuple[float, np.ndarray]] | None = None) -> None:
        message = (t_s, frame) if decoded is None else (t_s, frame, decoded)
        self._call(lambda: self._connection.send(message))

    def finish(self, duration_s: float) -> list[tuple[float, str, str, float | None]]:
        self._call(lambda: self._connection.send(float(duration_s)))
        outcome, value = self._call(self._connection.recv)
        if outcome == "error":
            raise RuntimeError(f"scene detection failed: {value}")
        return value

    def close(self) -> None:
        self.busy = False
        if self.keep and self.alive():
            return
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


RESET = "reset"
# TransNetV2 processes kept for the next video, by config: the model loads once per worker process.
_kept: dict[str, DetectorProcess] = {}


def detector_process(config: ScenesConfig) -> DetectorProcess:
    """The detector process for one video: a fresh one, or for TransNetV2 the process kept from the
    last video (its model already loaded; one starts when there is none or it is in use or gone)."""
    if config.detector != TRANSNETV2:
        return DetectorProcess(config)
    key = config.model_dump_json()
    kept = _kept.get(key)
    if kept is None or not kept.alive():
        kept = _kept[key] = DetectorProcess(config, keep=True)
    elif kept.busy:
        return DetectorProcess(config).begin()
    return kept.begin()


def _detect_in_child(config: ScenesConfig, connection: Connection, keep: bool) -> None:
    """Frames arrive as (t_s, image[, decoded]); a bare number is the duration and asks for the boundaries; RESET
    starts a new video. A kept process's loop ends when the parent closes the pipe; a forked one ends
    with its video, since it holds a copy of the parent's end and would never see the pipe close."""
    detector: Any = None
    try:
        while True:
            message = connection.recv()
            if isinstance(message, float):
                connection.send(("ok", _boundaries(detector, config, message) if detector is not None else []))
                if not keep:
                    return
                detector = None
            elif message == RESET:
                detector = None
            else:
                detector = detector or _new_detector(config)
                detector.push(*message)
    except EOFError:  # the decoding process stopped (or was done); nobody waits for an answer
        return
    except Exception as exc:  # errors are data: the decoding process raises them with this text
        connection.send(("error", f"{type(exc).__name__}: {exc}"))


def _boundaries(detector: Any, config: ScenesConfig, duration_s: float) -> list[tuple]:
    found = detector.finish(duration_s)
    if config.detector == TRANSNETV2:
        # min_clip_s holds for TransNetV2 too (SceneBoundaryDetector thins its own): most confident first.
        found = thin_boundaries(sorted(found, key=lambda boundary: -boundary[3]), duration_s, config.min_clip_s)
    return found


def _new_detector(config: ScenesConfig) -> Any:
    if config.detector == TRANSNETV2:
        from cosmo_data.stages.transnet import TransNetDetector

        return TransNetDetector(config)  # the model itself is loaded once per process
    return SceneBoundaryDetector(config)


def thin_boundaries(ranked: list[tuple], duration_s: float, min_clip_s: float) -> list[tuple]:
    """Keep boundaries (t_s, kind, ...) in the given order of trust, dropping any closer than
    min_clip_s to one already kept or to either end of the video (a cut and a gradual transition need
    only MIXED_MIN_GAP_S); returns them sorted by time."""
    mixed = min(min_clip_s, MIXED_MIN_GAP_S)
    kept: list[tuple] = []
    for boundary in ranked:
        t_s, kind = boundary[0], boundary[1]
        if t_s < min_clip_s or t_s > duration_s - min_clip_s:
            continue
        # A cut may follow a fade or dissolve sooner than min_clip_s (edits do that): both stay.
        if all(abs(t_s - other[0]) >= (min_clip_s if other[1] == kind else mixed) for other in kept):
            kept.append(boundary)
    return sorted(kept)


def clips_from_boundaries(boundaries: list[tuple], duration_s: float, max_clip_s: float) -> list[Clip]:
    """Contiguous clips covering [0, duration_s] from boundaries (t_s, kind[, detector, score]);
    clips longer than max_clip_s are split evenly."""
    edges = [(0.0, "start"), *boundaries, (duration_s, "end")]
    clips: list[Clip] = []
    for edge, (end_s, *_) in zip(edges, edges[1:], strict=False):
        start_s, kind, detector, score = (*edge, None, None)[:4]
        parts = max(1, math.ceil((end_s - start_s) / max_clip_s - 1e-9))
        length = (end_s - start_s) / parts
        for part in range(parts):
            first = part == 0
            clips.append(
                Clip(
                    clip_idx=len(clips),
                    start_s=round(start_s + part * length, 3),
                    end_s=round(start_s + (part + 1) * length, 3) if part < parts - 1 else round(end_s, 3),
                    boundary=kind if first else "split",
                    boundary_detector=detector if first else None,
                    boundary_score=score if first else None,
                )
            )
    return clips
