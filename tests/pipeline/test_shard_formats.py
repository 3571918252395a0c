import base64
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from loaders import cosmo_interleaved_video, openflamingo_mmc4
from PIL import Image

from cosmo_data.pipeline.shard_formats import (
    SAMPLE_WRITERS,
    ShardFormatError,
    clip_captions,
    cosmo_sample,
)
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import DECODE_FAILED, Clip, Frame, Segment, VideoRecord
from cosmo_data.stages.assign import AssignStage, assign_mmc4
from cosmo_data.stages.document import DocumentStage

# Clip colours and lengths in whole seconds, so COSMO's whole-second clip times fall on clip boundaries.
CLIPS = [("red", 2), ("lime", 3), ("blue", 2)]
DOMINANT_CHANNEL = {"red": 0, "lime": 1, "blue": 2}


def keyframe_jpeg(seed: int) -> bytes:
    """A distinct, detailed 160x120 JPEG: OpenFlamingo's loader skips images of 10 KB or less."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    scene = Image.fromarray(colours).resize((160, 120), Image.Resampling.BICUBIC)
    grain = rng.integers(-40, 41, (120, 160, 3))
    pixels = np.clip(np.asarray(scene, dtype=np.int64) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    assert len(buffer.getvalue()) > 11_000
    return buffer.getvalue()


def clip_mp4(folder: Path, colour: str, seconds: int, audio: bool) -> bytes:
    path = folder / f"{colour}-{seconds}-{audio}.mp4"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    command += ["-f", "lavfi", "-i", f"color=c={colour}:s=64x48:r=25:d={seconds}"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-shortest"]
    command += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", str(path)]
    subprocess.run(command, check=True)
    return path.read_bytes()


def similarity_for(record: VideoRecord) -> list[list[float]]:
    """ClipScoreStage's output, made up: a frame is most similar to its own caption."""
    rng = np.random.default_rng(record.source_index)
    rows = []
    for frame in record.frames:
        row = rng.uniform(0.16, 0.22, len(record.document.sentences))
        for j, sentence in enumerate(record.document.sentences):
            if sentence.source == "caption" and sentence.text == frame.caption:
                row[j] = 0.35
        rows.append(row.tolist())
    return rows


def finish(records: list[VideoRecord]) -> list[VideoRecord]:
    """DocumentStage, the similarity matrix, AssignStage: what the writers get."""
    config = BuildConfig()
    records = DocumentStage(config).process(records)
    for record in records:
        if record.ok:
            record.document.similarity = similarity_for(record)
    return AssignStage(config).process(records)


def cooking_video(folder: Path, audio: bool) -> VideoRecord:
    record = VideoRecord("cook_1", "https://www.youtube.com/watch?v=cook_1", 0, duration_s=7.0)
    start = 0
    for k, (colour, seconds) in enumerate(CLIPS):
        record.clips.append(Clip(k, float(start), float(start + seconds), "start" if k == 0 else "cut"))
        record.frames.append(Frame(k, k, start + seconds / 2, 160, 120, keyframe_jpeg(k), f"a {colour} scene"))
        record.clip_videos[k] = clip_mp4(folder, colour, seconds, audio)
        start += seconds
    record.transcript = [
        Segment(0, 0.5, 4.5, " We start here. Then we move on.", -0.2, 0.01),
        Segment(1, 5.5, 6.5, " Done now.", -0.2, 0.01),
    ]
    return record


def talk_video() -> VideoRecord:
    """Three uncaptioned keyframes and one sentence: more images than sentences."""
    record = VideoRecord("talk_2", "/videos/talk_2.mp4", 1, duration_s=9.0)
    record.clips = [Clip(k, 3.0 * k, 3.0 * k + 3.0) for k in range(3)]
    record.frames = [Frame(k, k, 3.0 * k + 1.5, 160, 120, keyframe_jpeg(10 + k)) for k in range(3)]
    record.transcript = [Segment(0, 0.0, 9.0, "Hello everyone and welcome", -0.3, 0.02)]
    return record


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("shards")
    failed = VideoRecord("gone_3", "https://www.youtube.com/watch?v=gone_3", 2)
    failed.fail(DECODE_FAILED, "Invalid data found when processing input")
    records = finish([cooking_video(folder, audio=True), talk_video(), failed])
    assert [r.ok for r in records] == [True, True, False]
    paths = {}
    for fmt in ("mmc4", "cosmo"):
        paths[fmt] = str(folder / f"{fmt}-000000.tar")
        with wds.TarWriter(paths[fmt]) as sink:
            for record in records:
                sample = SAMPLE_WRITERS[fmt](record)
                if sample is not None:
                    sink.write(sample)
    return {"records": records, "paths": paths}


def test_mmc4_documents_reproduce_their_assignment_and_images(shards):
    records = {r.video_id: r for r in shards["records"]}
    samples = list(wds.WebDataset(shards["paths"]["mmc4"], shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["cook_1", "talk_2"]
    for sample in samples:
        info = sample["json"]
        record = records[sample["__key__"]]
        stored = [entry["matched_text_index"] for entry in info["image_info"]]
        assert assign_mmc4(np.array(info["similarity_matrix"]))[0] == stored
        assert np.array(info["similarity_matrix"]).shape == (len(info["image_info"]), len(info["text_list"]))
        for entry in info["image_info"]:
            frame = record.frames[int(entry["image_name"].removesuffix(".jpg"))]
            assert base64.b64decode(entry["image_base64"]) == frame.jpeg
    talk = samples[1]["json"]
    assert [e["matched_text_index"] for e in talk["image_info"]] == [0, 0, 0]


def test_openflamingo_reads_every_document_with_image_tokens_at_the_matched_sentences(shards):
    samples = {s["__key__"]: s["json"] for s in wds.WebDataset(shards["paths"]["mmc4"], shardshuffle=False).decode()}
    examples = list(openflamingo_mmc4([shards["paths"]["mmc4"]], sim_threshold=0.15))
    assert len(examples) == len(samples) == 2
    for example, info in zip(examples, samples.values()):
        n_images = len(info["image_info"])
        assert example.n_images == n_images == example.text.count("<image>")
        assert example.images.shape == (5, 3, 224, 224)
        assert all(example.images[k].abs().sum() > 0 for k in range(n_images))
        assert not example.images[n_images:].any()
        for entry in info["image_info"]:
            assert f"<image>{info['text_list'][entry['matched_text_index']]}" in example.text

    cooking = examples[0].text
    assert cooking == (
        "We start here.<image>a red scene Then we move on.<|endofchunk|><image>a lime scene Done now."
        "<|endofchunk|><image>a blue scene<|endofchunk|></s>"
    )
    # Later OpenFlamingo recomputes the pairs from similarity_matrix: the same text where images do not
    # outnumber sentences; with more images than sentences it keeps one per sentence.
    recomputed = list(openflamingo_mmc4([shards["paths"]["mmc4"]], sim_threshold=0.15, recompute_assignment=True))
    assert recomputed[0].text == cooking
    assert (recomputed[1].n_images, recomputed[1].text) == (1, "<image>Hello everyone and welcome<|endofchunk|></s>")


def test_cosmo_samples_join_the_clips_with_parseable_times(shards):
    samples = list(wds.WebDataset(shards["paths"]["cosmo"], shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["cook_1"]  # the talk video has no clip mp4s
    meta = samples[0]["json"]
    clips = json.loads(meta["clips"])  # COSMO json-decodes this string a second time
    assert [c["clip"] for c in clips] == ["0:00:00 - 0:00:02", "0:00:02 - 0:00:05", "0:00:05 - 0:00:07"]
    assert all(re.fullmatch(r"\d+:\d\d:\d\d - \d+:\d\d:\d\d", c["clip"]) for c in clips)
    assert [c["caption"] for c in clips] == [
        "We start here. a red scene",
        "Then we move on. a lime scene",
        "Done now. a blue scene",
    ]
    assert meta["video_speed"] == 5


def test_cosmo_mp4_decodes_and_is_five_times_faster(shards, tmp_path):
    [sample] = list(wds.WebDataset(shards["paths"]["cosmo"], shardshuffle=False))
    video = tmp_path / "joined.mp4"
    video.write_bytes(sample["mp4"])
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames",
            "-show_entries",
            "format=duration",
            "-of",
            "json",
            str(video),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(probe.stdout)
    assert [s["codec_type"] for s in report["streams"]] == ["video"]  # audio dropped: COSMO reads frames only
    assert int(report["streams"][0]["nb_read_frames"]) == 7 * 25
    assert float(report["format"]["duration"]) == pytest.approx(7 / 5, abs=0.05)


def test_cosmo_loader_finds_each_clip_where_its_time_says(shards):
    [example] = list(cosmo_interleaved_video([shards["paths"]["cosmo"]], num_frames=3))
    assert example.times_s == [(0.0, 0.4), (0.4, 1.0), (1.0, 1.4)]
    assert example.text == (
        "<s><visual>We start here. a red scene<|endofchunk|><visual>Then we move on. a lime scene"
        "<|endofchunk|><visual>Done now. a blue scene<|endofchunk|></s>"
    )
    for (colour, _), frames in zip(CLIPS, example.frames):
        assert frames.shape == (3, 256, 256, 3)
        dominant = [int(np.argmax(frame[128, 128])) for frame in frames]
        # Whole-second times may put the first sampled frame on the last frame of the previous clip.
        assert dominant[1:] == [DOMINANT_CHANNEL[colour]] * 2, (colour, dominant)


def test_records_without_what_a_format_needs_give_no_sample(shards):
    failed = shards["records"][2]
    assert all(SAMPLE_WRITERS[fmt](failed) is None for fmt in ("native", "mmc4", "cosmo"))


def test_clip_captions_go_by_sentence_midpoint():
    from cosmo_data.schemas.records import Sentence

    clips = [Clip(0, 0.0, 2.0), Clip(1, 2.0, 4.0)]
    sentences = [
        Sentence("a", 0.0, 1.0, "asr"),
        Sentence("b", 1.0, 3.5, "asr"),
        Sentence("c", 4.0, 4.0, "caption"),
        Sentence("d", 9.0, 9.0, "caption"),
    ]
    assert clip_captions(sentences, clips) == ["a", "b c"]


def test_unjoinable_clips_raise_with_the_source_named_not_temp_paths(tmp_path):
    record = finish([talk_video()])[0]
    record.clip_videos = {k: b"not an mp4 at all" for k in range(3)}
    with pytest.raises(ShardFormatError, match=r"cosmo: a clip mp4 of /videos/talk_2.mp4 does not open") as error:
        cosmo_sample(record)
    assert "/tmp" not in str(error.value)
