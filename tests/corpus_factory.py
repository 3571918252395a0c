"""Small real corpora for tests of the tools that read a build (stats, query, preview, validate).

Records are real VideoRecords with PIL-encoded JPEG keyframes, written by the build's own ShardSamplesStage
and CorpusWriter (Parquet parts with the schemas, webdataset tars, done markers,
sizes.json) in the output layout of a build, without running any stage: fast and deterministic.
"""

from __future__ import annotations

import copy
import io
import random
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
from PIL import Image, ImageDraw

from cosmo_data.pipeline.writer import STATE_DIR, CorpusWriter, atomic_write_json
from cosmo_data.schemas.config import BuildConfig, OutputConfig
from cosmo_data.schemas.records import (
    DECODE_FAILED,
    DOWNLOAD_FAILED,
    INVALID_SOURCE,
    Clip,
    CosmoVideo,
    Document,
    Frame,
    Segment,
    Sentence,
    VideoRecord,
)
from cosmo_data.stages.cosmo_video import CosmoVideoEncoder, read_cosmo_video
from cosmo_data.stages.shard_samples import SAMPLE_WRITERS, ShardSamplesStage

# How-to videos as a reader would meet them: per clip, the keyframe's caption and what was said.
THEMES: list[tuple[str, list[tuple[str, list[str]]]]] = [
    (
        "en",
        [
            (
                "a bowl of flour and eggs on a kitchen counter",
                [
                    "today we're making fluffy pancakes from scratch",
                    "you only need flour, eggs, milk & a pinch of salt",
                ],
            ),
            ("a person whisking batter in a glass bowl", ["whisk everything until there are no lumps left"]),
            (
                "a pancake cooking in a frying pan",
                ["pour a ladle of batter into a hot buttered pan", "flip it when bubbles form on the surface"],
            ),
        ],
    ),
    (
        "en",
        [
            (
                "a bicycle upside down on a garage floor",
                ["first flip the bike over so it rests on the seat and handlebars"],
            ),
            ("hands removing a tire with a plastic lever", ["use two tire levers to pop the tire off the rim"]),
            (
                "a person pumping air into a bicycle tire",
                ["inflate it to the pressure printed on the sidewall", "usually that's 40 to 60 psi"],
            ),
        ],
    ),
    (
        "en",
        [
            (
                "tomato seedlings in small pots on a windowsill",
                ["these seedlings are about six weeks old and ready to go outside"],
            ),
            ("a person digging a hole in a garden bed", ["dig deep enough to bury most of the stem"]),
            ("a watering can pouring water onto plants", ["water them in well and add mulch around the base"]),
            ("rows of tomato plants tied to wooden stakes", ["tie them loosely so the stems can still grow"]),
        ],
    ),
    (
        "es",
        [
            ("a hand holding a blue rope", ["primero haz un lazo con la cuerda"]),
            ("a knot being tightened on a metal ring", ["después pasa el extremo por dentro y aprieta bien"]),
        ],
    ),
]

FAILURES: list[tuple[str, str, str]] = [
    (
        "https://www.youtube.com/watch?v=aaaaaaaaaaa",
        DOWNLOAD_FAILED,
        "ERROR: [youtube] aaaaaaaaaaa: Video unavailable. This video is private",
    ),
    (
        "clips/<draft> & notes.mp4",
        DECODE_FAILED,
        "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d5c8] moov atom not found\n"
        "clips/<draft> & notes.mp4: Invalid data found when processing input",
    ),
    (
        "ftp://example.org/video.mp4",
        INVALID_SOURCE,
        "invalid source line 9: unsupported URL scheme 'ftp'; expected a YouTube id, an http(s) URL or a path",
    ),
]

CLIP_FPS = BuildConfig().video.clip_fps

# The timings keys a build records: the video stage's steps, then one per model stage.
STAGES = ("download", "decode", "video", "asr", "caption", "document", "clip_score", "assign")


def scene_jpeg(seed: int, width: int = 256, height: int = 144) -> bytes:
    """A small landscape-like picture (sky gradient, sun, hills, an object), distinct per seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    top = [rng.randint(40, 140) for _ in range(3)]
    bottom = [rng.randint(150, 250) for _ in range(3)]
    for y in range(height):
        mix = y / (height - 1)
        draw.line([(0, y), (width, y)], fill=tuple(int(a + (b - a) * mix) for a, b in zip(top, bottom)))
    sun_x, sun_r = rng.randint(20, width - 20), rng.randint(8, 18)
    draw.ellipse([sun_x - sun_r, 15, sun_x + sun_r, 15 + 2 * sun_r], fill=(250, 220, 90))
    ground = (rng.randint(30, 90), rng.randint(100, 170), rng.randint(30, 80))
    hills = [(0, height)] + [(x, int(height * rng.uniform(0.55, 0.75))) for x in range(0, width + 32, 32)]
    draw.polygon(hills + [(width, height)], fill=ground)
    left, top_y = rng.randint(10, width - 80), rng.randint(height // 2, height - 40)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    draw.rectangle([left, top_y, left + rng.randint(30, 70), top_y + 30], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def cosmo_video(seconds: float, clips: int) -> CosmoVideo:
    """The cosmo video of a made-up video of `clips` clips of this length (64x36), made once per shape."""
    with tempfile.TemporaryDirectory(prefix="corpus-factory-") as folder:
        source = Path(folder) / "source.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=s=64x36:r=10:d={seconds * clips}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(source),
            ],
            check=True,
        )
        encoder = CosmoVideoEncoder(Path(folder) / "cosmo.mp4", CLIP_FPS, 256)
        with av.open(str(source)) as container:
            for frame in container.decode(video=0):
                encoder.offer(frame.time, frame)
        encoder.finish(seconds * clips)
        layout = [Clip(k, k * seconds, (k + 1) * seconds) for k in range(clips)]
        return read_cosmo_video(Path(folder) / "cosmo.mp4", layout, CLIP_FPS, encoder.frames)


def ok_record(video_id: str, source_index: int, theme: int, *, clip_s: float = 6.0) -> VideoRecord:
    """A finished video: clips (with their mp4s), one keyframe per clip, transcript, and its document."""
    rng = random.Random(source_index * 7919 + theme)
    language, steps = THEMES[theme % len(THEMES)]
    record = VideoRecord(
        video_id=video_id,
        source=f"https://www.youtube.com/watch?v={video_id}",
        source_index=source_index,
        source_kind="youtube",
        locator=f"https://www.youtube.com/watch?v={video_id}",
        duration_s=clip_s * len(steps),
        fps=30.0,
        width=1280,
        height=720,
        rotation=0,
        has_audio=True,
        video_codec="h264",
        file_size=rng.randint(2_000_000, 9_000_000),
        language=language,
    )
    sentences: list[Sentence] = []
    sentence_clip: list[int] = []
    for clip_idx, (caption, spoken) in enumerate(steps):
        start, end = clip_idx * clip_s, (clip_idx + 1) * clip_s
        record.clips.append(Clip(clip_idx, start, end, "start" if clip_idx == 0 else "cut"))
        width, height = 256, 144
        record.frames.append(
            Frame(
                clip_idx,
                clip_idx,
                round((start + end) / 2, 3),
                width,
                height,
                scene_jpeg(source_index * 100 + clip_idx, width, height),
                caption,
            )
        )
        sentences.append(Sentence(caption, start, end, "caption"))
        sentence_clip.append(clip_idx)
        step = clip_s / len(spoken)
        for k, text in enumerate(spoken):
            seg_start, seg_end = round(start + k * step + 0.2, 3), round(start + (k + 1) * step - 0.1, 3)
            record.transcript.append(Segment(len(record.transcript), seg_start, seg_end, text, -0.3, 0.02))
            sentences.append(Sentence(text, seg_start, seg_end, "asr"))
            sentence_clip.append(clip_idx)
    order = sorted(range(len(sentences)), key=lambda i: (sentences[i].start_s, sentences[i].source))
    sentences = [sentences[i] for i in order]
    sentence_clip = [sentence_clip[i] for i in order]

    similarity = [
        [
            round(
                rng.uniform(0.05, 0.14)
                + (0.16 if sentence_clip[j] == frame.clip_idx else 0.0)
                + (0.06 if sentence_clip[j] == frame.clip_idx and sentences[j].source == "caption" else 0.0),
                4,
            )
            for j in range(len(sentences))
        ]
        for frame in record.frames
    ]
    matched = [max(range(len(row)), key=row.__getitem__) for row in similarity]
    record.cosmo_video = cosmo_video(clip_s, len(steps))
    record.document = Document(
        doc_id=video_id,
        sentences=sentences,
        image_frames=list(range(len(record.frames))),
        similarity=similarity,
        matched_text_index=matched,
        matched_sim=[row[j] for row, j in zip(similarity, matched)],
        assignment="mmc4",
        n_tokens=sum(len(s.text.split()) for s in sentences) * 4 // 3,
    )
    record.timings = {stage: round(rng.uniform(0.05, 3.0), 3) for stage in STAGES}
    record.count("short_clip", rng.randint(0, 2))
    record.count("low_similarity", rng.randint(0, 3))
    return record


def failed_record(video_id: str, source_index: int, source: str, status: str, error: str) -> VideoRecord:
    record = VideoRecord(video_id=video_id, source=source, source_index=source_index)
    record.timings = {"download": 0.4} if status != INVALID_SOURCE else {}
    record.fail(status, error)
    return record


def realistic_records(n_ok: int = 6, n_failed: int = 2) -> list[VideoRecord]:
    """n_ok finished videos cycling through THEMES, then n_failed failures cycling through FAILURES."""
    records = [ok_record(f"vid{i:03d}_{'abcdefgh'[i % 8]}", i, i) for i in range(n_ok)]
    for k in range(n_failed):
        source, status, error = FAILURES[k % len(FAILURES)]
        records.append(failed_record(f"bad{k:03d}", n_ok + k, source, status, error))
    return records


# ---- writing a build's output layout --------------------------------------------------------------


@dataclass
class Corpus:
    out: Path
    records: list[VideoRecord]
    formats: list[str]
    videos_per_group: int

    @property
    def ok_records(self) -> list[VideoRecord]:
        return [r for r in self.records if r.ok]


def write_corpus(
    out: Path, records: list[VideoRecord], *, videos_per_group: int = 3, formats: list[str] | None = None
) -> Corpus:
    """Write records as a finished build does: run.json, every group through the real CorpusWriter
    (Parquet parts, tars, done marker, sizes.json), then build.json."""
    out = Path(out)
    formats = list(SAMPLE_WRITERS) if formats is None else formats
    config = BuildConfig(output=OutputConfig(formats=formats, videos_per_shard=videos_per_group))
    atomic_write_json(
        out / STATE_DIR / "run.json",
        {
            "fingerprint": "corpus-factory",
            "sources": len(records),
            "seed": config.seed,
            "config": config.model_dump(mode="json"),
        },
    )
    writer = CorpusWriter(out, formats)
    groups: dict[int, list[VideoRecord]] = {}
    # The build's last stage makes the samples and takes the pictures off what it hands the writer; the
    # records returned keep their pictures and get what the stage recorded (timings, a filtered status).
    staged = copy.deepcopy(records)
    for record in staged:
        record.staging = writer.staging_for(record.source_index // videos_per_group)
    written = ShardSamplesStage(config).process(staged)
    for record, done in zip(records, written):
        record.status, record.error, record.timings = done.status, done.error, done.timings
    for record in written:
        groups.setdefault(record.source_index // videos_per_group, []).append(record)
    failures: dict[str, int] = {}
    for group, members in sorted(groups.items()):
        summary = writer.write_group(group, members)
        for status, n in summary.failures.items():
            failures[status] = failures.get(status, 0) + n
    atomic_write_json(
        out / "build.json",
        {
            "sources": len(records),
            "ok": sum(r.ok for r in records),
            "failures": failures,
            "groups_written": len(groups),
            "groups_resumed": 0,
            "wall_s": 1.0,
            "formats": formats,
            "seed": config.seed,
        },
    )
    return Corpus(out, records, formats, videos_per_group)


def build_corpus(
    out: Path, n_ok: int = 6, n_failed: int = 2, *, videos_per_group: int = 3, formats: list[str] | None = None
) -> Corpus:
    return write_corpus(out, realistic_records(n_ok, n_failed), videos_per_group=videos_per_group, formats=formats)
