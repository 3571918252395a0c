"""The single decode pass on real generated media: probe values, clips, keyframes, audio, odd and broken
files, and the COSMO clip mp4s."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from odd_media import make_audio_only, make_rotated_copy, make_single_frame_video, make_vfr_video, truncate_copy

from cosmo_data.pipeline.generated_media import (
    CUT,
    DISSOLVE,
    FADE,
    GroundTruth,
    make_sample_video,
    run_ffmpeg,
    score_boundaries,
)
from cosmo_data.schemas.config import BuildConfig, KeyframesConfig
from cosmo_data.schemas.records import (
    DECODE_FAILED,
    NO_VIDEO_STREAM,
    TOO_LARGE,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.decode import decode_pass, decode_video

SOURCE = "https://example.com/watch/video.mp4"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("decode_media")
    make_sample_video(
        directory / "shots.mp4",
        segments=[2.5, 2.5, 2.5],
        transitions=[CUT, DISSOLVE],
        size=(320, 240),
        fps=25,
        speech=["Open the box.", "Take out the parts."],
    )
    make_sample_video(directory / "silent.mp4", segments=[2.0, 2.0], transitions=[CUT], size=(160, 120), audio=False)
    make_sample_video(directory / "shots.mkv", segments=[2.0, 2.0], transitions=[CUT], size=(160, 120))
    make_sample_video(directory / "shots.webm", segments=[2.0, 2.0], transitions=[FADE], size=(160, 120))
    make_sample_video(directory / "tiny.mp4", segments=[1.5, 1.5], transitions=[CUT], size=(16, 16))
    make_sample_video(
        directory / "uhd.mp4", segments=[1.0, 1.0], transitions=[CUT], size=(3840, 2160), fps=5, seed=5
    )  # seed 5: sources that render quickly at 4K
    make_rotated_copy(directory / "silent.mp4", directory / "rotated.mp4", 90)
    make_single_frame_video(directory / "one.mp4", size=(64, 48))
    make_vfr_video(directory / "vfr.mp4", duration_s=3.0)
    make_audio_only(directory / "tone.m4a", duration_s=1.0)
    truncate_copy(directory / "shots.mp4", directory / "half.mp4", 0.5)  # moov first: the start decodes
    truncate_copy(directory / "shots.mkv", directory / "half.mkv", 0.5)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(directory / "silent.mp4"),
            "-c",
            "copy",
            str(directory / "moov_at_end.mp4"),
        ],
        check=True,
    )  # no +faststart: the index is at the end
    truncate_copy(directory / "moov_at_end.mp4", directory / "no_index.mp4", 0.5)
    (directory / "page.mp4").write_text("<!doctype html><html><body>Sign in to continue</body></html>")
    (directory / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    return directory


def decode(path: Path, config: BuildConfig | None = None) -> VideoRecord:
    record = VideoRecord(video_id="v", source=SOURCE, source_index=0)
    decode_video(path, record, config or BuildConfig())
    return record


def probe_frames(path: Path) -> int:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def jpeg_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "keyframe is not a decodable JPEG"
    return image.shape[1], image.shape[0]


def test_probe_values(media):
    record = decode(media / "shots.mp4")
    # Three 2.52 s shots (whole frames), one dissolve overlapping them by a second.
    assert record.duration_s == GroundTruth.load(media / "shots.mp4").duration_s == pytest.approx(6.56)
    assert record.fps == 25.0
    assert (record.width, record.height, record.rotation) == (320, 240, 0)
    assert record.has_audio is True and record.video_codec == "h264"
    assert record.file_size == (media / "shots.mp4").stat().st_size
    assert record.ok and record.error is None


def test_clips_follow_the_shots(media):
    record = decode(media / "shots.mp4")
    truth = GroundTruth.load(media / "shots.mp4")
    score = score_boundaries(truth.boundaries, [(c.start_s, c.boundary) for c in record.clips[1:]])
    assert (score.true_positives, score.false_positives, score.kinds_right) == (2, 0, 2)
    assert record.clips[0].start_s == 0.0 and record.clips[-1].end_s == pytest.approx(record.duration_s, abs=0.05)
    assert all(a.end_s == b.start_s for a, b in zip(record.clips, record.clips[1:]))
    assert [c.boundary for c in record.clips] == ["start", "cut", "gradual"]


def test_keyframes_one_per_clip_inside_it(media):
    record = decode(media / "shots.mp4")
    assert len(record.frames) == len(record.clips) == 3
    assert [f.frame_idx for f in record.frames] == [0, 1, 2]
    assert [f.clip_idx for f in record.frames] == [0, 1, 2]
    for frame, clip in zip(record.frames, record.clips):
        assert clip.start_s + 0.1 <= frame.t_s <= clip.end_s - 0.1  # away from the transitions
        assert (frame.width, frame.height) == (320, 240)  # smaller than keyframes.size: never upscaled
        assert jpeg_size(frame.jpeg) == (frame.width, frame.height)


def test_keyframe_count_size_and_budget(media):
    config = BuildConfig(keyframes=KeyframesConfig(per_clip=3, size=128, max_per_video=4, jpeg_quality=50))
    record = decode(media / "shots.mp4", config)
    assert len(record.frames) == 4
    assert {f.clip_idx for f in record.frames} == {0, 1, 2}  # the budget is spread over every clip
    assert [f.t_s for f in record.frames] == sorted(f.t_s for f in record.frames)
    assert all(jpeg_size(f.jpeg) == (f.width, f.height) == (128, 96) for f in record.frames)
    many = decode(media / "shots.mp4", BuildConfig(keyframes=KeyframesConfig(per_clip=3)))
    assert len(many.frames) == 9 and len({f.t_s for f in many.frames}) == 9


def test_candidate_pool_stays_bounded(media):
    config = BuildConfig(keyframes=KeyframesConfig(candidate_fps=25, max_candidates=4))
    decoded = decode_pass(media / "shots.mp4", config, SOURCE)
    # Every frame would be a candidate; the full pool halves its rate each time instead.
    assert decoded.candidates_encoded < decoded.frames_decoded / 4
    assert len(decoded.frames) == len(decoded.clips)


def test_audio_is_16khz_mono_for_the_whole_video(media):
    record = decode(media / "shots.mp4")
    samples = np.frombuffer(record.audio_pcm, np.int16).astype(np.float32)
    assert len(samples) == pytest.approx(record.duration_s * 16000, rel=0.02)
    truth = GroundTruth.load(media / "shots.mp4")

    def rms(start_s: float, end_s: float) -> float:
        return float(np.sqrt(np.mean(samples[int(start_s * 16000) : int(end_s * 16000)] ** 2)))

    # Sample 0 is time 0: the speech is where the ground truth put it, silence before it.
    assert rms(0.0, 0.4) < 50
    assert all(rms(s.start_s, s.end_s) > 500 for s in truth.speech)

    assert decode(media / "shots.mp4", BuildConfig(video={"audio": False})).audio_pcm is None
    silent = decode(media / "silent.mp4")
    assert silent.has_audio is False and silent.audio_pcm is None and silent.ok


def test_decoded_once(media, monkeypatch):
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))
    decoded = decode_pass(media / "shots.mp4", BuildConfig(), SOURCE)
    assert len(opened) == 1
    assert decoded.frames_decoded == probe_frames(media / "shots.mp4") == 164
    # Detection sees frames at 8 per s of the 6.56 s (every 3rd frame, now and then the 4th),
    # keyframe candidates 2 per s; the other frames are decoded but never converted.
    assert decoded.frames_sampled == 53
    assert decoded.candidates_encoded == 14


def test_unreferenced_frames_are_not_decoded(tmp_path):
    """High-profile H.264 as uploads have it (B-frames, some of them references): the decoder drops the
    frames no other frame needs, and the scenes, keyframes and audio come out as from every frame."""
    path = tmp_path / "uploaded.mp4"
    truth = make_sample_video(
        path, segments=[3.0, 3.0, 3.0], transitions=[CUT, DISSOLVE], preset="medium", speech=["Cut the board."]
    )
    total = probe_frames(path)
    skipping = decode_pass(path, BuildConfig(), SOURCE)
    every = decode_pass(path, BuildConfig.model_validate({"video": {"skip_unreferenced_frames": False}}), SOURCE)
    assert every.frames_decoded == total
    assert skipping.frames_decoded < 0.75 * total
    assert skipping.frames_sampled == pytest.approx(truth.duration_s * BuildConfig().scenes.detect_fps, abs=1)
    for decoded in (skipping, every):
        score = score_boundaries(truth.boundaries, [(c.start_s, c.boundary) for c in decoded.clips[1:]])
        assert (score.true_positives, score.false_positives) == (2, 0)
    assert [c.boundary for c in skipping.clips] == [c.boundary for c in every.clips]
    assert len(skipping.frames) == len(every.clips)
    assert skipping.audio_pcm == every.audio_pcm
    assert skipping.duration_s == every.duration_s


def test_sparse_references_turn_the_skipping_off(tmp_path):
    """Three B-frames between references and none of them a reference: skipping would leave 6.25
    frames per s, fewer than detection's 8, so from the first such gap on every frame is decoded."""
    uploaded = tmp_path / "uploaded.mp4"
    make_sample_video(uploaded, segments=[2.0, 2.0], transitions=[CUT], audio=False)
    sparse = tmp_path / "sparse.mp4"
    run_ffmpeg(
        [
            "-i",
            str(uploaded),
            "-c:v",
            "libx264",
            "-x264-params",
            "bframes=3:b-adapt=0:b-pyramid=none",
            "-pix_fmt",
            "yuv420p",
            str(sparse),
        ]
    )
    decoded = decode_pass(sparse, BuildConfig(), SOURCE)
    total = probe_frames(sparse)
    # Gone: the B-frames before the first gap and those already in the decoder's threads then.
    assert total - 8 <= decoded.frames_decoded < total
    assert decoded.frames_sampled == pytest.approx(decoded.duration_s * BuildConfig().scenes.detect_fps, abs=1)


def test_no_video_stream(media):
    with pytest.raises(VideoFailure) as failure:
        decode(media / "tone.m4a")
    assert failure.value.status == NO_VIDEO_STREAM
    assert SOURCE in failure.value.message and "aac" in failure.value.message


@pytest.mark.parametrize(
    "name, ffmpeg_says",
    [
        ("page.mp4", "Invalid data found when processing input"),
        ("noise.mp4", "moov atom not found"),
        ("no_index.mp4", "moov atom not found"),
    ],
)
def test_broken_files_fail_with_ffmpegs_words_and_no_temp_path(media, name, ffmpeg_says):
    with pytest.raises(VideoFailure) as failure:
        decode(media / name)
    assert failure.value.status == DECODE_FAILED
    assert ffmpeg_says in failure.value.message
    assert SOURCE in failure.value.message
    assert str(media) not in failure.value.message and "/tmp" not in failure.value.message


@pytest.mark.parametrize(
    "name, header_s, ffmpeg_says",
    [
        # The header's duration: the video track's for mp4, the longest stream's for Matroska.
        ("half.mp4", 6.56, r"\[(h264|mov,mp4,m4a,3gp,3g2,mj2)\] .+"),
        ("half.mkv", 4.05, r"\[matroska,webm\] File ended prematurely"),
    ],
)
def test_truncated_file_keeps_what_decoded_and_says_so(media, name, header_s, ffmpeg_says):
    record = decode(media / name)
    assert record.ok
    assert 1.0 < record.duration_s < header_s - 0.5
    assert record.clips and record.clips[-1].end_s == pytest.approx(record.duration_s, abs=0.05)
    assert record.frames and all(f.t_s < record.duration_s for f in record.frames)
    # Kept, but not passed off as a clean video: where decoding stopped, of how long, and ffmpeg's words.
    stopped = re.escape(f"decoding stopped at {record.duration_s:.2f} s of {header_s:.2f} s (the header's duration): ")
    assert re.fullmatch(stopped + ffmpeg_says, record.error), record.error
    assert str(media) not in record.error
    assert record.counters["dropped_decode_truncated"] == 1


@pytest.mark.parametrize("name", ["shots.mp4", "shots.mkv", "shots.webm", "vfr.mp4", "rotated.mp4", "tiny.mp4"])
def test_whole_files_carry_no_decode_error(media, name):
    record = decode(media / name)
    assert record.ok and record.error is None and "dropped_decode_truncated" not in record.counters


def test_4k_is_decoded_into_small_outputs(media):
    record = decode(media / "uhd.mp4")
    assert (record.width, record.height) == (3840, 2160)
    assert [c.boundary for c in record.clips] == ["start", "cut"]
    assert all((f.width, f.height) == (384, 216) == jpeg_size(f.jpeg) for f in record.frames)
    assert len(record.frames) == 2


def test_video_beyond_the_decode_limit_is_refused(media):
    config = BuildConfig.model_validate({"video": {"max_decode_height": 1080}})
    with pytest.raises(VideoFailure) as failure:
        decode(media / "uhd.mp4", config)
    assert failure.value.status == TOO_LARGE
    assert "3840x2160" in failure.value.message and SOURCE in failure.value.message


def test_rotated_video_is_reported_and_keyframes_turned(media):
    upright = decode(media / "silent.mp4")
    rotated = decode(media / "rotated.mp4")
    assert (rotated.width, rotated.height, rotated.rotation) == (120, 160, 90)
    assert [c.start_s for c in rotated.clips] == [c.start_s for c in upright.clips]
    for turned, plain in zip(rotated.frames, upright.frames):
        assert (turned.width, turned.height) == (120, 160)
        turned_image = cv2.imdecode(np.frombuffer(turned.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
        plain_image = cv2.imdecode(np.frombuffer(plain.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
        # Shown the way a player shows it: the upright picture turned 90 degrees counter-clockwise.
        assert np.abs(turned_image - np.rot90(plain_image)).mean() < 3


def test_variable_frame_rate(media):
    decoded = decode_pass(media / "vfr.mp4", BuildConfig(), SOURCE)
    assert decoded.frames_decoded == probe_frames(media / "vfr.mp4")
    assert decoded.duration_s == pytest.approx(3.0, abs=0.1)
    assert len(decoded.clips) == 1 and decoded.clips[0].end_s == pytest.approx(decoded.duration_s, abs=0.05)
    assert len(decoded.frames) == 1 and 1.0 < decoded.frames[0].t_s < 2.0


@pytest.mark.parametrize("name, codec, kind", [("shots.mkv", "h264", "cut"), ("shots.webm", "vp8", "gradual")])
def test_mkv_and_webm(media, name, codec, kind):
    record = decode(media / name)
    assert record.video_codec == codec and record.has_audio and (record.width, record.height) == (160, 120)
    assert [c.boundary for c in record.clips] == ["start", kind]
    # Matroska keeps the audio encoder's priming in the timeline, so the video may start a frame late.
    assert record.clips[1].start_s == pytest.approx(2.0, abs=0.1)
    assert len(record.audio_pcm) / 2 == pytest.approx(record.duration_s * 16000, rel=0.03)


def test_single_frame_and_tiny_videos(media):
    one = decode(media / "one.mp4")
    assert len(one.clips) == 1 and len(one.frames) == 1 and (one.frames[0].width, one.frames[0].height) == (64, 48)
    tiny = decode(media / "tiny.mp4")
    assert (tiny.width, tiny.height) == (16, 16) and [c.boundary for c in tiny.clips] == ["start", "cut"]
    assert all(jpeg_size(f.jpeg) == (16, 16) for f in tiny.frames)
