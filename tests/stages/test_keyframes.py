"""Keyframe candidates and picking: the budget is used on long videos of short shots, a short shot's only
candidate survives the pool's thinning, and what the pool cannot give is counted."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from cosmo_data.pipeline.generated_media import file_arg, run_ffmpeg
from cosmo_data.schemas.config import BuildConfig, KeyframesConfig
from cosmo_data.schemas.records import Clip, VideoRecord
from cosmo_data.stages.decode import decode_video
from cosmo_data.stages.keyframes import CandidatePool

SHOT_S = 3.0


def make_short_shots(path: Path, minutes: float, shot_s: float = SHOT_S) -> Path:
    """Flat-coloured shots of shot_s seconds, hard cuts between them; 64x48 at 4 fps, quick to make."""
    shot = f"floor(T/{shot_s})"
    colours = f"lum='mod({shot}*97\\,200)+28':cb='mod({shot}*53\\,200)+28':cr='mod({shot}*31\\,200)+28'"
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"nullsrc=s=64x48:r=4:d={minutes * 60},format=yuv420p,geq={colours}",
            *("-c:v", "libx264", "-preset", "ultrafast", "-g", "40", "-pix_fmt", "yuv420p"),
            file_arg(path),
        ]
    )
    return path


@pytest.fixture(scope="module")
def forty_minutes(tmp_path_factory) -> Path:
    return make_short_shots(tmp_path_factory.mktemp("keyframes") / "short_shots.mp4", minutes=40)


def decode(path: Path, **keyframes) -> VideoRecord:
    record = VideoRecord(video_id="v", source="shots.mp4", source_index=0)
    decode_video(path, record, BuildConfig(keyframes=KeyframesConfig(**keyframes)))
    return record


@pytest.mark.parametrize("budget", [32, 64])
def test_long_video_of_short_shots_gets_its_whole_budget(forty_minutes, budget):
    """800 three-second shots: the pool holds a few hundred candidates, enough for the budget."""
    record = decode(forty_minutes, max_per_video=budget)
    assert len(record.clips) > 700
    assert len(record.frames) == min(budget, len(record.clips))
    assert "dropped_keyframe_shortfall" not in record.counters
    clips = {clip.clip_idx: clip for clip in record.clips}
    picked = [frame.clip_idx for frame in record.frames]
    assert len(set(picked)) == len(picked), "one keyframe per clip while clips outnumber the budget"
    for frame in record.frames:
        assert clips[frame.clip_idx].start_s <= frame.t_s < clips[frame.clip_idx].end_s
    # Still spread over the whole video: no stretch of clips twice the even spacing without a keyframe.
    edges = [-1, *picked, len(record.clips)]
    assert max(b - a for a, b in zip(edges, edges[1:])) <= 2 * len(record.clips) / budget


def test_what_the_pool_cannot_give_is_counted(forty_minutes):
    record = decode(forty_minutes, max_per_video=64, max_candidates=40)
    assert 20 <= len(record.frames) <= 40  # the pool never holds more than max_candidates
    assert record.counters["dropped_keyframe_shortfall"] == 64 - len(record.frames)


def frame_of(colour: tuple[int, int, int]) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour, np.uint8), format="rgb24")


def test_a_short_shots_only_candidate_survives_thinning():
    """At 2 candidates per s, a shot of half a second has one candidate; thinning keeps it, not its grey
    neighbour, so the shot still gets its keyframe."""
    pool = CandidatePool(KeyframesConfig(candidate_fps=2, max_candidates=16))
    grey, red = frame_of((128, 128, 128)), frame_of((220, 30, 30))
    for step in range(40):  # one frame every 0.25 s for 10 s
        t_s = step * 0.25
        pool.offer(t_s, red if 5.4 <= t_s < 5.9 else grey, 0)
    assert len(pool.pool) <= 16 and 5.5 in [c.t_s for c in pool.pool]
    clips = [Clip(0, 0.0, 5.4, "start"), Clip(1, 5.4, 5.9, "cut"), Clip(2, 5.9, 10.0, "cut")]
    frames = pool.pick(clips, transition_s=1.0)
    assert [f.clip_idx for f in frames] == [0, 1, 2] and frames[1].t_s == 5.5


def test_slots_of_clips_without_candidates_go_to_the_nearest_clips_with_some():
    pool = CandidatePool(KeyframesConfig(per_clip=2, max_per_video=6, candidate_fps=100, max_candidates=100))
    # Ten 1 s clips; candidates only in clips 0, 1, 2 and 7 (three each).
    for clip in (0, 1, 2, 7):
        for offset in (0.2, 0.5, 0.8):
            pool.offer(clip + offset, frame_of((clip * 20, 90, 90)), 0)
    clips = [Clip(n, float(n), n + 1.0, "start" if n == 0 else "cut") for n in range(10)]
    frames = pool.pick(clips, transition_s=1.0)
    per_clip = {n: sum(f.clip_idx == n for f in frames) for n in range(10)}
    # 6 slots over 10 clips land on clips 0, 2, 4, 5, 7, 9; those of 4, 5 and 9 move to the nearest clips
    # with a candidate to spare, first those without a keyframe (1), then up to per_clip.
    assert len(frames) == 6
    assert all(per_clip[n] <= 2 for n in per_clip) and per_clip[1] >= 1
    assert {n for n, count in per_clip.items() if count} == {0, 1, 2, 7}
    assert [f.frame_idx for f in frames] == list(range(6)) and [f.t_s for f in frames] == sorted(f.t_s for f in frames)
