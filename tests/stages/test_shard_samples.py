import base64
import copy
import errno
import io
import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from loaders import cosmo_interleaved_video, openflamingo_mmc4
from PIL import Image

from cosmo_data.models.gpt2_tokens import count_tokens
from cosmo_data.pipeline.writer import tar_end
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.corpus_layout import COSMO_MAX_TOKENS
from cosmo_data.schemas.records import (
    DECODE_FAILED,
    DISK_FULL,
    FILTERED,
    RETRYABLE,
    STORAGE_FAILED,
    Clip,
    Frame,
    Segment,
    Sentence,
    VideoRecord,
)
from cosmo_data.stages import shard_samples
from cosmo_data.stages.assign import AssignStage, assign_mmc4
from cosmo_data.stages.cosmo_video import CosmoVideoEncoder, read_cosmo_video
from cosmo_data.stages.document import DocumentStage
from cosmo_data.stages.shard_samples import SAMPLE_WRITERS, ShardSamplesStage, clip_sentences, cosmo_sample
from cosmo_data.storage import StorageError

# Clip colours and lengths: boundaries between whole seconds, where COSMO's whole-second clip times
# cannot fall on them.
CLIPS = [("red", 2.3), ("lime", 2.9), ("blue", 1.8)]
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


def colour_video(folder: Path, clip_fps: float = 4.0) -> tuple[list[Clip], object]:
    """The cosmo video of shots of solid colour at 25 fps (CLIPS), made by the decode pass's own encoder."""
    source = folder / "colours.mp4"
    inputs = [f"color=c={colour}:s=64x48:r=25:d={seconds}" for colour, seconds in CLIPS]
    graph = "".join(f"[{k}:v]" for k in range(len(CLIPS))) + f"concat=n={len(CLIPS)}:v=1:a=0"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for source_graph in inputs:
        command += ["-f", "lavfi", "-i", source_graph]
    subprocess.run(
        [*command, "-filter_complex", graph, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(source)], check=True
    )
    clips, start = [], 0.0
    for k, (_, seconds) in enumerate(CLIPS):
        clips.append(Clip(k, round(start, 3), round(start + seconds, 3), "start" if k == 0 else "cut"))
        start += seconds
    encoder = CosmoVideoEncoder(folder / "cosmo.mp4", clip_fps, 256)
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            encoder.offer(frame.time, frame)
    encoder.finish(clips[-1].end_s)
    return clips, read_cosmo_video(folder / "cosmo.mp4", clips, clip_fps, encoder.frames)


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


def cooking_video(folder: Path) -> VideoRecord:
    record = VideoRecord("cook_1", "https://www.youtube.com/watch?v=cook_1", 0, duration_s=7.0)
    record.clips, record.cosmo_video = colour_video(folder)
    for clip, (colour, _) in zip(record.clips, CLIPS):
        middle = (clip.start_s + clip.end_s) / 2
        record.frames.append(
            Frame(clip.clip_idx, clip.clip_idx, middle, 160, 120, keyframe_jpeg(clip.clip_idx), f"a {colour} scene")
        )
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
    records = finish([cooking_video(folder), talk_video(), failed])
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


def test_cosmo_samples_name_each_clip_by_the_whole_seconds_inside_it(shards):
    samples = list(wds.WebDataset(shards["paths"]["cosmo"], shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["cook_1"]  # the talk video has no cosmo video
    meta = samples[0]["json"]
    clips = json.loads(meta["clips"])  # COSMO json-decodes this string a second time
    # Red [0, 2.3), lime [2.3, 5.2), blue [5.2, 7.0): whole seconds that stay inside each.
    assert [c["clip"] for c in clips] == ["0:00:00 - 0:00:02", "0:00:03 - 0:00:05", "0:00:06 - 0:00:07"]
    assert [c["caption"] for c in clips] == [
        "We start here. a red scene",
        "Then we move on. a lime scene",
        "Done now. a blue scene",
    ]
    assert meta["video_speed"] == 5
    assert [c["clip_idx"] for c in meta["source_clips"]] == [0, 1, 2]


def test_cosmo_mp4_has_a_constant_frame_rate_five_times_faster(shards, tmp_path):
    [sample] = list(wds.WebDataset(shards["paths"]["cosmo"], shardshuffle=False))
    video = tmp_path / "cosmo.mp4"
    video.write_bytes(sample["mp4"])
    with av.open(str(video)) as container:
        assert [s.type for s in container.streams] == ["video"]  # COSMO reads frames only
        packets = [p for p in container.demux(video=0) if p.pts is not None]
    times = sorted(float(p.pts * p.time_base) for p in packets)
    # 4 frames per second of the source, shown 5x faster, every frame as long: 7 s -> 28 frames, + 1.
    assert len(times) == 29
    assert np.allclose(np.diff(times), 1 / 20) and {float(p.duration * p.time_base) for p in packets} == {1 / 20}


def test_cosmo_loader_takes_only_each_clips_own_frames(shards):
    [example] = list(cosmo_interleaved_video([shards["paths"]["cosmo"]], num_frames=3))
    assert example.times_s == [(0.0, 0.4), (0.6, 1.0), (1.2, 1.4)]
    assert example.text == (
        "<s><visual>We start here. a red scene<|endofchunk|><visual>Then we move on. a lime scene"
        "<|endofchunk|><visual>Done now. a blue scene<|endofchunk|></s>"
    )
    for (colour, _), frames, possible in zip(CLIPS, example.frames, example.possible_frames):
        assert frames.shape == (3, 256, 256, 3)
        # Every frame the loader could take for the clip, not only the ones it drew this time.
        dominant = {int(np.argmax(frame[128, 128])) for frame in possible}
        assert dominant == {DOMINANT_CHANNEL[colour]}, (colour, dominant)


def test_cosmo_captions_fit_three_clips_in_cosmos_token_budget(tmp_path):
    record = cooking_video(tmp_path)
    words = "whisk the eggs with a fork until the yolks and whites are completely blended together".split()
    record.transcript = [
        Segment(k, 2.4 + 0.15 * k, 2.5 + 0.15 * k, " ".join(words[k % 5 :] + words[: k % 5]) + ".", -0.2, 0.01)
        for k in range(12)
    ]
    [record] = finish([record])
    meta = json.loads(cosmo_sample(record)["json"])
    captions = [c["caption"] for c in json.loads(meta["clips"])]
    # COSMO's text for three clips, its <visual> and <|endofchunk|> one token each, in OPT's BPE.
    text = "<s>" + "".join(f"<visual>{caption}<|endofchunk|>" for caption in captions) + "</s>"
    tokens = count_tokens(text.replace("<visual>", "").replace("<|endofchunk|>", "")) + 2 * len(captions) + 1
    assert len(captions) == 3 and tokens <= COSMO_MAX_TOKENS
    # The lime clip had more to say than fits: whole sentences, in order, and the rest left out.
    lime_sentences = [s.text for s in record.document.sentences if 2.3 <= (s.start_s + s.end_s) / 2 < 5.2]
    assert captions[1] == " ".join(lime_sentences[: captions[1].count(".")])
    assert captions[1].count(".") < len(lime_sentences)


def test_records_without_what_a_format_needs_give_no_sample(shards):
    failed = shards["records"][2]
    assert all(SAMPLE_WRITERS[fmt](failed) is None for fmt in ("native", "mmc4", "cosmo"))


def test_clip_sentences_go_by_sentence_midpoint():
    clips = [Clip(0, 0.0, 2.0), Clip(1, 2.0, 4.0)]
    sentences = [
        Sentence("a", 0.0, 1.0, "asr"),
        Sentence("b", 1.0, 3.5, "asr"),
        Sentence("c", 4.0, 4.0, "caption"),
        Sentence("d", 9.0, 9.0, "caption"),
    ]
    assert clip_sentences(sentences, clips) == [["a"], ["b", "c"]]


def test_the_last_stage_stages_every_layouts_tar_members_and_lightens_the_record(tmp_path):
    [record, talk] = finish([cooking_video(tmp_path), talk_video()])
    expected = {fmt: SAMPLE_WRITERS[fmt](record) for fmt in ("native", "mmc4", "cosmo")}
    stage = ShardSamplesStage(BuildConfig())
    stage.setup()
    staging = tmp_path / "parts" / "000000"
    record.staging = talk.staging = str(staging)
    again = copy.deepcopy(record)
    [record, talk] = stage.process([record, talk])
    # One object for the video, named by its source index and its bytes' digest.
    [part] = staging.iterdir()
    assert record.shard_part.path == str(part) and part.name.startswith("000000000-") and part.suffix == ".part"
    data = part.read_bytes()
    # Each layout's span of it, as a tar of its own, reads back as the cooking video's sample.
    for fmt, sample in expected.items():
        offset, length = record.shard_part.spans[fmt]
        tar = tmp_path / f"{fmt}.tar"
        tar.write_bytes(data[offset : offset + length] + tar_end(length))
        [read] = list(wds.WebDataset(str(tar), shardshuffle=False))
        assert {k: v for k, v in read.items() if k not in ("__url__", "__local_path__")} == sample
    # What the driver gets: table data and where the part is; no pictures, no video, no sample bytes.
    assert all(frame.jpeg == b"" for frame in record.frames) and record.cosmo_video is None
    # The same samples made again (a retried task) are the same object, written again whole.
    [retried] = stage.process([again])
    assert retried.shard_part == record.shard_part and list(staging.iterdir()) == [part]
    # The talk video has no cosmo video: in no layout, filtered with the reason, nothing staged.
    assert talk.status == FILTERED and talk.error == "document has nothing to write in the cosmo format"
    assert talk.shard_part is None
    # Like every curation filter, it keeps its document for the tables (fail() used to drop it).
    assert talk.filter_reason == "output_empty_sample" and talk.document is not None


@pytest.mark.parametrize(
    "error, status",
    [
        (StorageError("cannot write s3://b/x: slow down: Please reduce your request rate."), STORAGE_FAILED),
        (OSError(errno.EIO, "Input/output error"), STORAGE_FAILED),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), DISK_FULL),
        (OSError(errno.ENOSPC, "No space left on device"), DISK_FULL),
    ],
)
def test_storage_failing_while_staging_is_a_retryable_failure(tmp_path, monkeypatch, error, status):
    """After all of a video's work, storage that fails for the moment must not lose it for good:
    --retry-failed (RETRYABLE) builds its group again."""
    [record] = finish([talk_video()])
    record.staging = str(tmp_path / "parts")

    def failing_write(path, data):
        raise error

    monkeypatch.setattr(shard_samples, "write_atomic", failing_write)
    stage = ShardSamplesStage(BuildConfig(output={"formats": ["native", "mmc4"]}))
    [record] = stage.process([record])
    assert record.status == status and status in RETRYABLE, record.error
    assert str(tmp_path) in record.error


def test_samples_never_carry_the_credentials_of_their_source(tmp_path):
    [record] = finish([cooking_video(tmp_path)])
    record.source = "https://user:hunter2@example.com/v.mp4?X-Amz-Signature=f00dcafe&X-Amz-Credential=AKIAEXAMPLE"
    for fmt in ("native", "mmc4", "cosmo"):
        text = SAMPLE_WRITERS[fmt](record)["json"].decode()
        assert "example.com/v.mp4" in text
        assert not any(secret in text for secret in ("hunter2", "f00dcafe", "AKIAEXAMPLE")), (fmt, text)
