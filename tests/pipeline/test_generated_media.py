"""Generated media: the files are what the ground truth says (checked with ffprobe and decoded pixels/audio)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from odd_media import make_audio_only, make_rotated_copy, make_single_frame_video, make_vfr_video, truncate_copy

from cosmo_data.pipeline.demo_media import DEMO_SCRIPTS
from cosmo_data.pipeline.generated_media import (
    CUT,
    DISSOLVE,
    FADE,
    FADEBLACK,
    GroundTruth,
    TruthBoundary,
    ground_truth_path,
    make_sample_video,
    score_boundaries,
)


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-count_frames", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def gray_frames(path: Path, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-vf",
            f"scale={size[0]}:{size[1]}",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size[1], size[0]).astype(np.float32)


def pcm(path: Path, rate: int = 16000) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.int16).astype(np.float32)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> GroundTruth:
    path = tmp_path_factory.mktemp("samples") / "shots.mp4"
    return make_sample_video(
        path,
        segments=[2.0, 2.5, 2.5, 2.0],
        transitions=[CUT, DISSOLVE, FADE],
        size=(160, 120),
        fps=20,
        speech=["Hello there.", "Cut the bread."],
    )


def test_video_matches_its_ground_truth(shots):
    info = probe(Path(shots.path))
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 160, 120)
    assert audio["codec_name"] == "aac"
    # 9 s of shots minus the dissolve's overlap; the fade takes its second from the two shots' ends.
    assert shots.duration_s == pytest.approx(8.0)
    assert float(info["format"]["duration"]) == pytest.approx(8.0, abs=0.05)
    assert int(video["nb_read_frames"]) == 160
    assert [(b.t_s, b.kind, b.transition) for b in shots.boundaries] == [
        (2.0, "cut", CUT),
        (4.0, "gradual", DISSOLVE),
        (6.0, "gradual", FADE),
    ]
    assert GroundTruth.load(Path(shots.path)) == shots
    assert json.loads(ground_truth_path(Path(shots.path)).read_text())["duration_s"] == 8.0


def test_pictures_change_where_the_ground_truth_says(shots):
    fps = 20
    frames = gray_frames(Path(shots.path))
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))  # change[i]: frame i -> i + 1
    cut = 2 * fps
    assert change[cut - 1] > 4 * np.median(change[: cut - 1])  # the hard cut is one big step
    # The dissolve (3.5-4.5 s) blends: its middle frame sits between the frames at its two ends.
    start, middle, end = frames[round(3.5 * fps) - 1], frames[4 * fps], frames[round(4.5 * fps)]
    assert np.abs(middle - (start + end) / 2).mean() < 0.5 * np.abs(end - start).mean()
    # The fade goes through black at 6.0 s and is bright half a second either side.
    brightness = frames.mean(axis=(1, 2))
    assert brightness[6 * fps - 1] < 20
    assert brightness[round(5.4 * fps)] > 40 and brightness[round(6.6 * fps)] > 40


def test_speech_is_where_the_ground_truth_says(shots):
    audio = pcm(Path(shots.path))
    assert [s.text for s in shots.speech] == ["Hello there.", "Cut the bread."]
    first, second = shots.speech
    assert first.start_s == 0.5 and second.start_s == pytest.approx(first.end_s + 0.8, abs=0.002)

    def rms(start_s: float, end_s: float) -> float:
        return float(np.sqrt(np.mean(audio[int(start_s * 16000) : int(end_s * 16000)] ** 2)))

    silence = rms(0.0, 0.45)
    assert silence < 50
    for sentence in shots.speech:
        assert rms(sentence.start_s, sentence.end_s) > 20 * silence + 200
    assert rms(second.end_s + 0.2, shots.duration_s) < 50


def test_fadeblack_dips_to_black_and_tone_without_speech(tmp_path):
    truth = make_sample_video(tmp_path / "fb.mkv", segments=[2.0, 2.0], transitions=[FADEBLACK], size=(64, 48))
    assert truth.duration_s == pytest.approx(3.0) and truth.boundaries[0].t_s == pytest.approx(1.5)
    brightness = gray_frames(tmp_path / "fb.mkv").mean(axis=(1, 2))
    assert brightness[round(1.2 * 25) : round(1.8 * 25)].min() < 15
    tone = pcm(tmp_path / "fb.mkv")
    assert np.sqrt(np.mean(tone[:8000] ** 2)) > 300 and np.sqrt(np.mean(tone[-8000:] ** 2)) > 300  # a tone, not silence
    assert probe(tmp_path / "fb.mkv")["format"]["format_name"] == "matroska,webm"


def test_webm_container(tmp_path):
    make_sample_video(tmp_path / "v.webm", segments=[1.0], transitions=[], size=(64, 48))
    codecs = sorted(s["codec_name"] for s in probe(tmp_path / "v.webm")["streams"])
    assert codecs == ["opus", "vp8"]


def test_generation_is_deterministic(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        make_sample_video(tmp_path / name, segments=[1.0, 1.0], transitions=[CUT], size=(64, 48), audio=False, seed=3)
    assert np.array_equal(gray_frames(tmp_path / "a.mp4"), gray_frames(tmp_path / "b.mp4"))


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one transition between"):
        make_sample_video(tmp_path / "x.mp4", segments=[2.0, 2.0], transitions=[])
    with pytest.raises(ValueError, match="unknown transitions"):
        make_sample_video(tmp_path / "x.mp4", segments=[2.0, 2.0], transitions=["wipe"])
    with pytest.raises(ValueError, match="too short"):
        make_sample_video(tmp_path / "x.mp4", segments=[1.0, 2.0], transitions=[DISSOLVE])
    with pytest.raises(ValueError, match="does not fit"):
        make_sample_video(tmp_path / "x.mp4", segments=[1.0], transitions=[], speech=["A rather long sentence."])


def test_odd_media(tmp_path):
    audio_only = probe(make_audio_only(tmp_path / "tone.m4a", duration_s=1.0))
    assert [s["codec_type"] for s in audio_only["streams"]] == ["audio"]

    single = probe(make_single_frame_video(tmp_path / "one.mp4", size=(32, 32)))
    assert single["streams"][0]["nb_read_frames"] == "1"

    make_sample_video(tmp_path / "base.mp4", segments=[1.0], transitions=[], size=(64, 48), audio=False)
    rotated = probe(make_rotated_copy(tmp_path / "base.mp4", tmp_path / "rot.mp4", 90))
    side_data = rotated["streams"][0]["side_data_list"]
    assert any(d.get("side_data_type") == "Display Matrix" and abs(d["rotation"]) == 90 for d in side_data)

    vfr = make_vfr_video(tmp_path / "vfr.mp4", duration_s=3.0)
    times = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "default=nw=1:nk=1",
            str(vfr),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    gaps = np.round(np.diff([float(t) for t in times]), 3)
    assert set(gaps) >= {0.033, 0.1}  # 30 fps first, then 10 fps

    truncated = truncate_copy(tmp_path / "base.mp4", tmp_path / "cut.mp4", 0.5)
    assert truncated.stat().st_size == (tmp_path / "base.mp4").stat().st_size // 2


def test_score_boundaries_matches_one_to_one_within_tolerance():
    truth = [TruthBoundary(2.0, "cut", CUT), TruthBoundary(5.0, "gradual", DISSOLVE), TruthBoundary(9.0, "cut", CUT)]
    found = [(2.2, "cut"), (2.1, "cut"), (5.55, "cut"), (9.3, "cut"), (12.0, "gradual")]
    score = score_boundaries(truth, found)
    # 2.1 matches the cut (closest), 2.2 is a duplicate, 5.55 is within the gradual tolerance but of
    # the wrong kind, 9.3 is too far for a cut, 12.0 matches nothing.
    assert (score.true_positives, score.false_positives, score.false_negatives, score.kinds_right) == (2, 3, 1, 1)
    assert score.precision == pytest.approx(0.4) and score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    assert (score + score).true_positives == 4


def test_demo_videos(demo_videos):
    assert [p.name for p in demo_videos] == [d["name"] for d in DEMO_SCRIPTS]
    for path in demo_videos:
        truth = GroundTruth.load(path)
        assert 15 <= truth.duration_s <= 25 and (truth.width, truth.height) == (320, 240)
        assert truth.has_audio and len(truth.speech) >= 3 and truth.speech[-1].end_s <= truth.duration_s
        assert {b.kind for b in truth.boundaries} == {"cut", "gradual"}
        assert float(probe(path)["format"]["duration"]) == pytest.approx(truth.duration_s, abs=0.05)


def test_demo_corpus_transcribes_the_demo_speech_in_real_words(demo_corpus, demo_videos):
    """The demo's transcripts come from real Whisper tiny.en: the words read, timed where they were read."""
    import duckdb

    from cosmo_data.stages.speech_eval import word_errors

    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{demo_corpus}/transcripts/*.parquet')")
    con.execute(f"CREATE VIEW v AS SELECT * FROM read_parquet('{demo_corpus}/videos/*.parquet')")
    for path in demo_videos:
        truth = GroundTruth.load(path)
        segments = con.execute(
            "SELECT t.start_s, t.end_s, t.text FROM t JOIN v USING (video_id) WHERE v.source = ? ORDER BY seg_idx",
            [str(path)],
        ).fetchall()
        heard = " ".join(text for _, _, text in segments)
        errors = word_errors([" ".join(s.text for s in truth.speech)], [heard])
        # Measured: 0-13% per video (espeak-ng's voice is harder for tiny.en than LibriVox's reader).
        assert errors.rate <= 0.3, heard
        assert abs(segments[0][0] - truth.speech[0].start_s) <= 1.0, segments
        assert segments[-1][1] <= truth.duration_s
