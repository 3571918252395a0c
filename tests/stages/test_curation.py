"""Curation on generated footage: the decode pass's picture signals and each rule dropping exactly the
items built to fail it (black shots, static slides with and without speech, silence)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline.generated_media import file_arg, run_ffmpeg
from cosmo_data.schemas.config import DocumentRulesConfig, VideoRulesConfig, load_config
from cosmo_data.schemas.records import FILTERED, OK, Clip, CosmoVideo, Document, Frame, Sentence, VideoRecord
from cosmo_data.stages import rules
from cosmo_data.stages.curation import DOCUMENT, PICTURE, CurationStage, audio_dbfs
from cosmo_data.stages.decode import decode_video
from cosmo_data.stages.shard_samples import SAMPLE_WRITERS, cosmo_sample

SIZE = "320x240"
MOVING = f"testsrc2=size={SIZE}:rate=25"
SLIDE = f"color=c=0x204080:size={SIZE}:rate=25,drawtext=text='Step 1':fontsize=40:fontcolor=white:x=60:y=90"
BLACK = f"color=c=black:size={SIZE}:rate=25"
TONE = "sine=frequency=440:sample_rate=16000,volume=0.3"
SILENCE = "anullsrc=r=16000:cl=mono"


def tiny_config(**overrides):
    return load_config(TINY_CONFIG, {"narration.enabled": False, **overrides})  # the real LLM: CPU-s a clip


def speech_wav(directory: Path, text: str) -> Path:
    wav = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "--", text], check=True, capture_output=True)
    return wav


def make_video(path: Path, pictures: list[tuple[str, float]], audio: str | Path | None) -> Path:
    """Shots of lavfi pictures (source, seconds) joined by hard cuts, with a lavfi or file sound track."""
    inputs, labels = [], []
    for k, (source, seconds) in enumerate(pictures):
        inputs += ["-f", "lavfi", "-t", f"{seconds}", "-i", source]
        labels.append(f"[{k}:v]")
    graph = f"{''.join(labels)}concat=n={len(pictures)}:v=1:a=0[v]"
    maps = ["-map", "[v]"]
    duration = sum(seconds for _, seconds in pictures)
    if isinstance(audio, Path):
        inputs += ["-i", file_arg(audio)]
        graph += f";[{len(pictures)}:a]apad,atrim=duration={duration}[a]"
        maps += ["-map", "[a]"]
    elif audio is not None:
        inputs += ["-f", "lavfi", "-t", f"{duration}", "-i", audio]
        maps += ["-map", f"{len(pictures)}:a"]
    run_ffmpeg(
        [*inputs, "-filter_complex", graph, *maps, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        + (["-c:a", "aac"] if audio is not None else [])
        + [file_arg(path)]
    )
    return path


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("curation")
    speech = speech_wav(directory, "Open the settings page. Then press save.")
    return {
        "moving": make_video(directory / "moving.mp4", [(MOVING, 3.0)], TONE),
        "black": make_video(directory / "black.mp4", [(BLACK, 3.0)], TONE),
        "black_then_moving": make_video(directory / "half.mp4", [(BLACK, 2.0), (MOVING, 2.0)], TONE),
        "slide_silent": make_video(directory / "slide_silent.mp4", [(SLIDE, 3.0)], SILENCE),
        "slide_mute": make_video(directory / "slide_mute.mp4", [(SLIDE, 3.0)], None),
        "slide_speech": make_video(directory / "slide_speech.mp4", [(SLIDE, 4.0)], speech),
    }


def decoded(path: Path, config) -> VideoRecord:
    record = VideoRecord(path.stem, str(path), 0)
    decode_video(path, record, config)
    return record


def test_picture_signals_and_rules_drop_exactly_the_footage_built_to_fail(footage):
    config = tiny_config()  # ships clip.min_brightness 10 and video.min_motion_when_silent 0.5
    records = {name: decoded(path, config) for name, path in footage.items()}

    # The signals, measured in the decode pass on the scene-detection frames.
    black, slide, moving = records["black"].clips[0], records["slide_silent"].clips[0], records["moving"].clips[0]
    assert black.brightness == 0.0 and black.frozen_fraction == 1.0 and black.sharpness == 0.0
    assert slide.motion < 0.05 and slide.frozen_fraction == 1.0 and slide.brightness > 40 and slide.sharpness > 100
    assert moving.motion > 2 and moving.frozen_fraction == 0.0
    assert records["slide_silent"].motion < 0.05 < 2 < records["moving"].motion

    CurationStage(config, PICTURE).process(list(records.values()))
    outcome = {name: (r.status, r.filter_reason) for name, r in records.items()}
    assert outcome == {
        "moving": (OK, None),
        "black": (FILTERED, "clip_min_brightness"),
        "black_then_moving": (OK, None),
        "slide_silent": (FILTERED, "video_min_motion_when_silent"),
        "slide_mute": (FILTERED, "video_min_motion_when_silent"),
        "slide_speech": (OK, None),  # static, but it speaks: how-to slides stay
    }
    assert records["slide_silent"].audio_dbfs < -50 < records["slide_speech"].audio_dbfs
    assert records["slide_mute"].audio_dbfs is None and records["slide_mute"].has_audio is False
    # Half black: the black clips (the fade detector cuts the black in two) and their keyframes leave the
    # video, which goes on with its moving shot.
    half = records["black_then_moving"]
    assert half.filtered_clips and all(c.brightness == 0.0 and c.end_s <= 2.0 for c in half.filtered_clips)
    assert [(c.start_s, c.end_s) for c in half.clips] == [(2.0, 4.0)]
    assert {f.clip_idx for f in half.filtered_frames} == {c.clip_idx for c in half.filtered_clips}
    assert {f.clip_idx for f in half.frames} == {half.clips[0].clip_idx}
    assert all(f.filter_reason == "clip_min_brightness" and f.jpeg == b"" for f in half.filtered_frames)
    assert half.counters["dropped_clip_min_brightness"] == len(half.filtered_clips)
    assert records["black"].counters["dropped_clip_min_brightness"] == 1 and not records["black"].frames


def test_the_frame_size_rule_and_rules_off():
    config = tiny_config(**{"curation.frame.min_side_px": 150, "curation.clip.min_brightness": None})
    record = VideoRecord("v", "v.mp4", 0)
    record.clips = [Clip(0, 0.0, 2.0, "start", brightness=0.0), Clip(1, 2.0, 4.0, brightness=100.0)]
    record.frames = [Frame(0, 0, 1.0, 224, 168, b"x"), Frame(1, 1, 3.0, 160, 120, b"y")]
    record.has_audio = False
    CurationStage(config, PICTURE).process([record])
    assert record.ok  # the black clip stays with the brightness rule off
    assert [f.frame_idx for f in record.filtered_frames] == [1]
    assert record.filtered_frames[0].filter_reason == "frame_min_side_px"
    assert record.counters == {"dropped_frame_min_side_px": 1}


def test_speech_rules():
    video = VideoRulesConfig(require_text=True, languages=["en"], max_no_speech_prob=0.5, min_words_per_s=0.5)
    fine = dict(language="en", language_probability=0.9, no_speech_prob=0.1, avg_logprob=-0.4, words_per_s=2.0)

    def verdict(**changes):
        return rules.speech_failure(video, captions=False, **{**fine, **changes})

    assert verdict() is None
    assert verdict(words_per_s=0.0, language=None) == "video_require_text"
    assert rules.speech_failure(video, captions=True, **{**fine, "words_per_s": 0.0}) == "video_min_words_per_s"
    assert verdict(language="de") == "video_languages"
    assert verdict(no_speech_prob=0.8) == "video_max_no_speech_prob"
    assert verdict(words_per_s=0.2) == "video_min_words_per_s"
    assert verdict(avg_logprob=None, language_probability=None) is None  # unknown signals fail nothing


def test_document_rule_aggregates_frames_by_mean_or_quantile_never_all_must_pass():
    similarities = [0.05, 0.30, 0.32, 0.35]  # one weak image of four
    assert (
        rules.document_failure(DocumentRulesConfig(min_matched_similarity=0.2), matched_similarities=similarities)
        is None
    )
    low_quantile = DocumentRulesConfig(min_matched_similarity=0.2, aggregate="quantile", quantile=0.1)
    assert rules.document_failure(low_quantile, matched_similarities=similarities) == "document_min_matched_similarity"

    config = tiny_config(**{"curation.document.min_matched_similarity": 0.2})
    record = VideoRecord("v", "v.mp4", 0)
    record.frames = [Frame(0, 0, 0.5, 224, 168, b"x")]
    record.document = Document("v", [Sentence("a", 0, 1, "asr")], [0], [[0.1]], [0], [0.1])
    CurationStage(config, DOCUMENT).process([record])
    assert (record.status, record.filter_reason) == (FILTERED, "document_min_matched_similarity")
    assert record.document is not None  # its row stays, with the status


def test_nsfw_keyframes_leave_the_document_and_image_scores_aggregate_per_document():
    config = tiny_config(**{"curation.frame.max_nsfw": 0.1, "curation.document.min_aesthetic": 4.5})

    def scored(video_id: str, aesthetics: list[float], nsfw: list[float]) -> VideoRecord:
        record = VideoRecord(video_id, f"{video_id}.mp4", 0)
        record.frames = [
            Frame(0, k, float(k), 224, 168, b"x", aesthetic=a, nsfw=n) for k, (a, n) in enumerate(zip(aesthetics, nsfw))
        ]
        sentences = [Sentence(f"s{k}", k, k + 1, "asr") for k in range(len(nsfw))]
        n = len(nsfw)
        similarity = [[0.3 + 0.01 * k] * n for k in range(n)]
        record.document = Document(video_id, sentences, list(range(n)), similarity, list(range(n)), [0.3] * n)
        return record

    one_nsfw = scored("a", [5.0, 6.0, 3.0], [0.01, 0.9, 0.02])  # mean aesthetic of the images left: 4.0
    kept = scored("b", [5.0, 1.0, 6.0, 6.0], [0.01, 0.02, 0.03, 0.04])  # one ugly image of four: mean 4.5
    all_nsfw = scored("c", [5.0, 5.0], [0.5, 0.95])
    missing_scores = scored("d", [None, None], [None, None])  # CLIP never saw them: no rule fails
    CurationStage(config, DOCUMENT).process([one_nsfw, kept, all_nsfw, missing_scores])

    assert [f.frame_idx for f in one_nsfw.filtered_frames] == [1]
    assert one_nsfw.filtered_frames[0].filter_reason == "frame_max_nsfw"
    assert one_nsfw.document.image_frames == [0, 1] and [f.frame_idx for f in one_nsfw.frames] == [0, 2]
    assert one_nsfw.document.similarity == [[0.3] * 3, [0.32] * 3]  # the NSFW image's row left with it
    assert (one_nsfw.status, one_nsfw.filter_reason) == (FILTERED, "document_min_aesthetic")
    assert one_nsfw.counters == {"dropped_frame_max_nsfw": 1, "dropped_document_min_aesthetic": 1}
    assert kept.ok and kept.filtered_frames == []
    assert (all_nsfw.status, all_nsfw.filter_reason) == (FILTERED, "frame_max_nsfw")
    assert all_nsfw.counters == {"dropped_frame_max_nsfw": 2} and all_nsfw.document.image_frames == []
    assert missing_scores.ok


def test_an_nsfw_keyframe_takes_its_clip_out_of_the_cosmo_layout_and_its_caption_out_of_every_text():
    """The review's trigger: the keyframe of clip 1 is flagged; its clip (footage COSMO's loader would
    sample) and its caption must leave the samples, not only the keyframe's image."""
    config = tiny_config(**{"curation.frame.max_nsfw": 0.1})
    record = VideoRecord("v", "v.mp4", 0, duration_s=10.0)
    record.clips = [Clip(0, 0.0, 5.0, "start"), Clip(1, 5.0, 10.0)]
    record.frames = [
        Frame(0, 0, 2.5, 224, 168, b"x", "a kitchen", nsfw=0.01),
        Frame(0, 1, 4.0, 224, 168, b"y", nsfw=0.02),
        Frame(1, 2, 7.5, 224, 168, b"z", "explicit scene", nsfw=0.95),
    ]
    sentences = [
        Sentence("We chop onions.", 0.0, 4.0, "asr"),
        Sentence("a kitchen", 2.5, 2.5, "caption"),
        Sentence("Then we stir.", 6.0, 9.0, "asr"),
        Sentence("explicit scene", 7.5, 7.5, "caption"),
    ]
    similarity = [[0.2, 0.3, 0.1, 0.1], [0.25, 0.2, 0.1, 0.3], [0.1, 0.1, 0.2, 0.35]]
    # The second image was matched to the flagged keyframe's caption.
    record.document = Document("v", sentences, [0, 1, 2], similarity, [1, 3, 3], [0.3, 0.3, 0.35], "mmc4", 9)
    record.cosmo_video = CosmoVideo(b"mp4", 20.0, 40, {0: (0, 5), 1: (5, 10)})
    [record] = CurationStage(config, DOCUMENT).process([record])

    assert record.ok and record.counters == {"dropped_frame_max_nsfw": 1}
    assert [c.clip_idx for c in record.clips] == [0] and record.filtered_clips[0].filter_reason == "frame_max_nsfw"
    cosmo = json.loads(cosmo_sample(record)["json"])
    assert [entry["clip"] for entry in json.loads(cosmo["clips"])] == ["0:00:00 - 0:00:05"]
    for fmt in ("native", "mmc4"):
        text = json.loads(SAMPLE_WRITERS[fmt](record)["json"])["text_list"]
        assert text == ["We chop onions.", "a kitchen", "Then we stir."], fmt
    # The matrix lost the caption's column; the image matched to it went to its best sentence left.
    assert record.document.similarity == [[0.2, 0.3, 0.1], [0.25, 0.2, 0.1]]
    assert (record.document.matched_text_index, record.document.matched_sim) == ([1, 0], [0.3, 0.25])
    assert record.document.n_tokens == 8


def test_audio_level():
    assert audio_dbfs(None) is None
    assert audio_dbfs(bytes(3200)) == -120.0
    full = (32767).to_bytes(2, "little", signed=True) * 1600
    assert audio_dbfs(full) == pytest.approx(0.0, abs=0.01)


@pytest.mark.slow
def test_a_build_drops_what_the_rules_say_before_the_models_and_keeps_every_row(footage, tmp_path):
    from cosmo_data.corpus.filter import filter_corpus
    from cosmo_data.corpus.query import connect
    from cosmo_data.corpus.stats import compute_stats
    from cosmo_data.corpus.validate import validate
    from cosmo_data.pipeline.build import build

    names = ["moving", "black", "black_then_moving", "slide_silent", "slide_speech"]
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(f"{footage[name]}\n" for name in names))
    out = tmp_path / "out"
    build([sources], out, tiny_config(**{"output.videos_per_shard": 2}))

    with connect(out) as db:
        videos = {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT video_id, status, filter_reason, map_keys(timings), words_per_s, no_speech_prob, "
                "avg_logprob, audio_dbfs FROM videos"
            ).fetchall()
        }
        stem = {footage[name].stem: name for name in names}
        by_name = {stem[next(s for s in stem if video_id.startswith(s))]: row for video_id, row in videos.items()}
        clips = db.execute("SELECT status, filter_reason, brightness FROM clips ORDER BY ALL").fetchall()
        documents = db.execute("SELECT count(*) FROM documents WHERE status = 'ok'").fetchone()[0]
    assert {name: row[:2] for name, row in by_name.items()} == {
        "moving": (OK, None),
        "black": (FILTERED, "clip_min_brightness"),
        "black_then_moving": (OK, None),
        "slide_silent": (FILTERED, "video_min_motion_when_silent"),
        "slide_speech": (OK, None),
    }
    # What the cheap rules dropped never reached a model; its rows (and signals) are kept.
    for name in ("black", "slide_silent"):
        assert not {"asr", "caption", "clip_score"} & set(by_name[name][2])
    assert "asr" in by_name["slide_speech"][2] and by_name["slide_speech"][3] is not None
    assert 0 <= by_name["slide_speech"][4] <= 1 and by_name["slide_speech"][5] is not None
    assert ("filtered", "clip_min_brightness", 0.0) in clips and documents == 3
    with connect(out) as db:
        kept, aesthetic, nsfw = db.execute(
            "SELECT count(*), count(f.aesthetic), count(f.nsfw) FROM frames f JOIN videos v USING (video_id) "
            "WHERE v.status = 'ok' AND f.status = 'ok'"
        ).fetchone()
    assert kept > 0 and aesthetic == nsfw == kept  # every keyframe CLIP saw has both scores in the table
    funnel = compute_stats(out)["funnel"]
    assert funnel["steps"]["clip_min_brightness"]["videos"] == 1
    assert funnel["steps"]["video_min_motion_when_silent"]["videos"] == 1
    assert validate(out).problems == []

    # A stricter brightness rule, from the stored scores: the slide (brightness ~64) goes too.
    summary = filter_corpus(out, tiny_config(**{"curation.clip.min_brightness": 80}).curation)
    assert summary.dropped["clip_min_brightness"]["videos"] == 1
    assert sum(summary.rewrite.samples.values()) == 3 * 2  # moving and black_then_moving, three layouts
    assert validate(out).problems == []


@pytest.mark.slow  # TransNetV2's process and model start: ~30 s on 2 cores
def test_with_transnetv2_the_signals_come_from_frames_made_for_them(footage):
    # TransNetV2 reads 48x27 frames; the signals get detect_width frames at detect_fps all the same.
    config = tiny_config(**{"scenes.detector": "transnetv2"})
    spike = decoded(footage["black_then_moving"], tiny_config())
    learned = decoded(footage["black_then_moving"], config)
    assert learned.clips[0].brightness == 0.0 and learned.clips[-1].brightness > 100
    assert learned.motion == pytest.approx(spike.motion, rel=0.05)
