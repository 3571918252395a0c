"""Scene boundaries: the gradual detector on synthetic frames, the wiring, thinning and clip building,
and boundary F1 against generated footage with known cuts, dissolves and fades."""

from __future__ import annotations

import random
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from scenedetect.common import FrameTimecode

from cosmo_data.pipeline.generated_media import (
    CUT,
    DISSOLVE,
    FADE,
    FADEBLACK,
    make_sample_video,
    score_boundaries,
)
from cosmo_data.schemas.config import BuildConfig, ScenesConfig
from cosmo_data.stages.decode import decode_pass
from cosmo_data.stages.scenes import (
    DetectorProcess,
    GradualTransitionDetector,
    SceneBoundaryDetector,
    clips_from_boundaries,
    thin_boundaries,
)

FPS = 12.0
SIZE = (128, 96)


def texture(seed: int) -> np.ndarray:
    """A smooth random colour texture twice as wide as a frame, to pan across; each seed has its own
    brightness range, so that shots differ in their histograms too."""
    rng = np.random.default_rng(seed)
    low = int(rng.integers(0, 128))
    noise = rng.integers(low, low + 128, (SIZE[1] // 16, SIZE[0] // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (2 * SIZE[0], SIZE[1]), interpolation=cv2.INTER_CUBIC)


def panning(seed: int, pixels_per_s: float) -> Callable[[float], np.ndarray]:
    image = texture(seed)
    return lambda t: np.ascontiguousarray(image[:, int(t * pixels_per_s) % SIZE[0] :][:, : SIZE[0]])


def video(picture: Callable[[float], np.ndarray], duration_s: float = 6.0) -> list[tuple[float, np.ndarray]]:
    return [(i / FPS, picture(i / FPS)) for i in range(int(duration_s * FPS))]


def dissolve(a, b, start_s: float, length_s: float = 1.0):
    def picture(t: float) -> np.ndarray:
        alpha = min(1.0, max(0.0, (t - start_s) / length_s))
        return cv2.addWeighted(a(t), 1 - alpha, b(t), alpha, 0)

    return picture


def fade_through_black(a, b, middle_s: float, half_s: float = 0.5):
    def picture(t: float) -> np.ndarray:
        level = min(1.0, abs(t - middle_s) / half_s)
        return ((a(t) if t < middle_s else b(t)) * level).astype(np.uint8)

    return picture


def cut(a, b, at_s: float):
    return lambda t: a(t) if t < at_s else b(t)


def run_gradual(frames: list[tuple[float, np.ndarray]]) -> list[float]:
    detector = GradualTransitionDetector()
    found = []
    for t, frame in frames:
        found += detector.process_frame(FrameTimecode(t, fps=FPS), frame)
    found += detector.post_process(FrameTimecode(frames[-1][0], fps=FPS))
    return [tc.seconds for tc in found]


def run_boundaries(frames: list[tuple[float, np.ndarray]], config: ScenesConfig) -> list[tuple[float, str]]:
    detector = SceneBoundaryDetector(config)
    for t, frame in frames:
        detector.push(t, frame)
    return detector.finish(frames[-1][0] + 1 / FPS)


def test_dissolve_between_moving_shots_is_found_at_its_middle():
    a, b = panning(1, 12), panning(2, -10)
    found = run_gradual(video(dissolve(a, b, start_s=2.5)))
    assert len(found) == 1 and found[0] == pytest.approx(3.0, abs=0.15)


def test_fade_through_black_is_found_at_the_black_frame():
    found = run_gradual(video(fade_through_black(panning(3, 20), panning(4, 20), middle_s=3.0)))
    assert len(found) == 1 and found[0] == pytest.approx(3.0, abs=0.1)


def test_motion_and_hard_cuts_are_not_gradual_transitions():
    assert run_gradual(video(panning(5, 30))) == []  # a fast pan changes the picture a lot, but not as a blend
    assert run_gradual(video(cut(panning(6, 20), panning(7, 20), at_s=3.0))) == []


@pytest.mark.parametrize("detector", ["content", "adaptive", "histogram", "hash"])
def test_every_hard_cut_detector_finds_the_cut(detector):
    frames = video(cut(panning(8, 10), panning(9, 10), at_s=3.0))
    found = run_boundaries(frames, ScenesConfig(detector=detector))
    assert [kind for _, kind in found] == ["cut"]
    assert found[0][0] == pytest.approx(3.0, abs=1 / FPS + 1e-6)


def test_threshold_replaces_the_detector_default():
    frames = video(cut(panning(8, 10), panning(9, 10), at_s=3.0))
    assert run_boundaries(frames, ScenesConfig(threshold=255.0)) == []


def test_gradual_detection_can_be_switched_off():
    frames = video(dissolve(panning(1, 12), panning(2, -10), start_s=2.5))
    assert [kind for _, kind in run_boundaries(frames, ScenesConfig())] == ["gradual"]
    assert run_boundaries(frames, ScenesConfig(gradual=False)) == []


def test_detector_process_finds_what_the_detector_finds():
    frames = video(cut(dissolve(panning(1, 12), panning(2, -10), start_s=1.5), panning(9, 10), at_s=4.5))
    config = ScenesConfig()
    beside = DetectorProcess(config)
    try:
        for t, frame in frames:
            beside.push(t, frame)
        found = beside.finish(frames[-1][0] + 1 / FPS)
    finally:
        beside.close()
    assert [kind for _, kind in found] == ["gradual", "cut"]
    assert found == run_boundaries(frames, config)


def test_detector_process_reports_the_detectors_error():
    beside = DetectorProcess(ScenesConfig())
    try:
        with pytest.raises(RuntimeError, match="scene detection failed: .*Error"):
            for step in range(50):  # the child stops reading at the bad frame; its error comes back
                beside.push(step / FPS, np.zeros(7, np.uint8))
            beside.finish(1.0)
    finally:
        beside.close()


def test_detector_process_that_dies_is_named():
    beside = DetectorProcess(ScenesConfig())
    try:
        beside._process.kill()
        with pytest.raises(RuntimeError, match=r"scene detection process died \(exit code -9\)"):
            beside.finish(1.0)
    finally:
        beside.close()


def test_thin_boundaries_keeps_the_most_trusted_and_spaces_them():
    ranked = [(5.2, "gradual"), (0.4, "cut"), (5.0, "cut"), (8.0, "cut"), (9.6, "cut"), (6.3, "cut")]
    assert thin_boundaries(ranked, duration_s=10.0, min_clip_s=1.0) == [(5.2, "gradual"), (6.3, "cut"), (8.0, "cut")]


def test_clips_cover_the_video_and_long_ones_are_split_evenly():
    clips = clips_from_boundaries([(4.0, "cut"), (70.0, "gradual")], duration_s=75.0, max_clip_s=30.0)
    assert [(c.clip_idx, c.start_s, c.end_s, c.boundary) for c in clips] == [
        (0, 0.0, 4.0, "start"),
        (1, 4.0, 26.0, "cut"),
        (2, 26.0, 48.0, "split"),
        (3, 48.0, 70.0, "split"),
        (4, 70.0, 75.0, "gradual"),
    ]
    assert [(c.start_s, c.end_s) for c in clips_from_boundaries([], 0.04, 30.0)] == [(0.0, 0.04)]


def footage(seed: int) -> tuple[list[float], list[str]]:
    """Eight shots of 2.5-4 s; two of every five transitions are hard cuts."""
    rng = random.Random(seed)
    transitions = [rng.choice([CUT, CUT, DISSOLVE, FADE, FADEBLACK]) for _ in range(7)]
    return [round(rng.uniform(2.5, 4.0), 2) for _ in range(8)], transitions


@pytest.mark.slow
def test_boundary_f1_on_generated_footage(tmp_path):
    """Generated 320x240 footage with moving content; cuts within 0.25 s, gradual ones within 0.6 s."""
    config = BuildConfig()
    total = None
    kinds = set()
    for seed in range(4):
        segments, transitions = footage(seed)
        kinds.update(transitions)
        path = tmp_path / f"footage_{seed}.mp4"
        truth = make_sample_video(path, segments=segments, transitions=transitions, seed=seed, audio=False)
        clips = decode_pass(path, config, str(path)).clips
        score = score_boundaries(truth.boundaries, [(c.start_s, c.boundary) for c in clips[1:]])
        print(
            f"{path.name}: {score.true_positives}/{len(truth.boundaries)} found, "
            f"{score.false_positives} false, F1 {score.f1:.3f}"
        )
        total = score if total is None else total + score
    print(
        f"all: precision {total.precision:.3f} recall {total.recall:.3f} F1 {total.f1:.3f} "
        f"kind right {total.kinds_right}/{total.true_positives}"
    )
    assert kinds == {CUT, DISSOLVE, FADE, FADEBLACK}
    assert total.f1 >= 0.95
    assert total.kinds_right >= 0.9 * total.true_positives
